"""Warm start from an IP-Adapter-plus SD1.5 file: which tensors land where, and which files are refused."""
import pytest
import torch
from safetensors.torch import save_file

from flexip_core.config import SD15
from flexip_core.model import FlexIP
from flexip_train.init import load_ip_adapter_plus

# ComfyUI_IPAdapter_plus applies SD1.5's processors 1, 3, ..., 31 to the input blocks, then the
# output blocks, then the middle block.
IP_NUMBERS = dict(zip(
    [("input", i, 0) for i in (1, 2, 4, 5, 7, 8)] + [("output", i, 0) for i in range(3, 12)] + [("middle", 0, 0)],
    range(1, 32, 2)))


def ip_adapter_plus_sd15(path, context=768):
    """An IP-Adapter-plus SD1.5 file's tensor names and shapes (h94's layout), with random values."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32).half()

    sd = {"image_proj.latents": rand(1, 16, 768), "image_proj.proj_in.weight": rand(768, 1280),
          "image_proj.proj_in.bias": rand(768), "image_proj.proj_out.weight": rand(context, 768),
          "image_proj.proj_out.bias": rand(context), "image_proj.norm_out.weight": rand(context),
          "image_proj.norm_out.bias": rand(context)}
    for i in range(4):
        p = f"image_proj.layers.{i}."
        sd.update({p + "0.norm1.weight": rand(768), p + "0.norm1.bias": rand(768), p + "0.norm2.weight": rand(768),
                   p + "0.norm2.bias": rand(768), p + "0.to_q.weight": rand(768, 768), p + "0.to_kv.weight": rand(1536, 768),
                   p + "0.to_out.weight": rand(768, 768), p + "1.0.weight": rand(768), p + "1.0.bias": rand(768),
                   p + "1.1.weight": rand(3072, 768), p + "1.3.weight": rand(768, 3072)})
    inner = dict(SD15.layers)
    for key, n in IP_NUMBERS.items():
        sd[f"ip_adapter.{n}.to_k_ip.weight"] = rand(inner[key], context)
        sd[f"ip_adapter.{n}.to_v_ip.weight"] = rand(inner[key], context)
    save_file(sd, path)
    return {k: v.float() for k, v in sd.items()}


@pytest.fixture(scope="module")
def flexip():
    torch.manual_seed(0)
    return FlexIP(SD15)


def test_ip_adapter_plus_fills_resampler_l_and_the_p_projections(flexip, tmp_path):
    sd = ip_adapter_plus_sd15(tmp_path / "ip-adapter-plus_sd15.safetensors")
    untouched = {name: p.clone() for name, p in flexip.named_parameters()
                 if name.startswith(("personalization.", "preservation.clip_tokens", "preservation.resampler_clip",
                                     "preservation.resampler_latent.memory_in", "gate."))
                 or ".to_k_s." in name or ".to_v_s." in name}
    copied = load_ip_adapter_plus(flexip, tmp_path / "ip-adapter-plus_sd15.safetensors")
    resampler = flexip.preservation.resampler_latent
    assert torch.equal(flexip.preservation.latent_queries, sd["image_proj.latents"])
    for i, (attn, ff) in enumerate(resampler.blocks):
        p = f"image_proj.layers.{i}."
        assert torch.equal(attn.norm_memory.weight, sd[p + "0.norm1.weight"])  # norm1 normalises the image features
        assert torch.equal(attn.norm_queries.bias, sd[p + "0.norm2.bias"])  # norm2 the latents
        assert torch.equal(attn.to_kv.weight, sd[p + "0.to_kv.weight"]) and torch.equal(attn.to_q.weight, sd[p + "0.to_q.weight"])
        assert torch.equal(ff[1].weight, sd[p + "1.1.weight"]) and torch.equal(ff[3].weight, sd[p + "1.3.weight"])
    assert torch.equal(resampler.norm_out.weight, sd["image_proj.norm_out.weight"])
    for key, n in IP_NUMBERS.items():
        layer = flexip.projections[key]
        assert torch.equal(layer.to_k_p.weight, sd[f"ip_adapter.{n}.to_k_ip.weight"]), key
        assert torch.equal(layer.to_v_p.weight, sd[f"ip_adapter.{n}.to_v_ip.weight"]), key
    assert all(torch.equal(p, dict(flexip.named_parameters())[name]) for name, p in untouched.items())
    assert copied == 1 + 4 * 11 + 4 + 32  # queries, 4 blocks of 11 tensors, proj_out/norm_out, 16 x (K, V)


def test_other_files_are_refused(flexip, tmp_path):
    ip_adapter_plus_sd15(tmp_path / "sdxl.safetensors", context=2048)
    with pytest.raises(ValueError, match="shape"):
        load_ip_adapter_plus(flexip, tmp_path / "sdxl.safetensors")
    (tmp_path / "ip-adapter-plus_sd15.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match="never opened"):
        load_ip_adapter_plus(flexip, tmp_path / "ip-adapter-plus_sd15.bin")
    save_file({"image_proj.proj.weight": torch.zeros(3072, 1024), "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768)},
              tmp_path / "ip-adapter_sd15.safetensors")  # the plain (non-plus) IP-Adapter
    with pytest.raises(ValueError, match="not an IP-Adapter-plus"):
        load_ip_adapter_plus(flexip, tmp_path / "ip-adapter_sd15.safetensors")

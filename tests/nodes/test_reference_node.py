"""ReferenceEncoder refuses the wrong encoder, naming what it got and the file it needs (the
encoders are ComfyUI's own classes built from ComfyUI's own configs, on the meta device); its
image reaches P and S, and several references average as documented (full-shape random encoder
files, loaded by ComfyUI)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


def encoder(comfy, config_name):
    import comfy.clip_model
    import comfy.image_encoders.dino2
    import comfy.ops
    import torch
    root = Path(comfy.clip_model.__file__).parent
    path = root / config_name if (root / config_name).exists() else root / "image_encoders" / config_name
    config = json.loads(path.read_text())
    cls = comfy.image_encoders.dino2.Dinov2Model if config.get("model_type") == "dinov2" else comfy.clip_model.CLIPVisionModelProjection
    return SimpleNamespace(model=cls(config, torch.float16, "meta", comfy.ops.manual_cast))


@pytest.mark.parametrize("config_name, kind", [
    ("clip_vision_config_h.json", "CLIP ViT-H/14"),
    ("clip_vision_config_vitl.json", "CLIP ViT-L/14"),
    ("clip_vision_config_g.json", "CLIP ViT-bigG/14"),
    ("clip_vision_siglip_384.json", "SigLIP"),
    ("dino2_large.json", "DINOv2-L/14"),
    ("dino2_giant.json", "DINOv2-G/14"),
])
def test_encoder_kind_is_read_from_the_model(comfy, pack, config_name, kind):
    reference = pack.nodes.reference
    assert reference.describe(reference.encoder_kind(encoder(comfy, config_name))) == kind


@pytest.mark.parametrize("config_name", ["clip_vision_config_vitl.json", "clip_vision_config_g.json",
                                         "clip_vision_siglip_384.json"])
def test_wrong_clip_is_refused(comfy, pack, config_name):
    reference = pack.nodes.reference
    with pytest.raises(ValueError) as refusal:
        reference.check_encoder(encoder(comfy, config_name), "clip_vision", ("clip", 1280, 32),
                                reference.CLIP_FILE, "dino")
    message = str(refusal.value)
    assert message.startswith("ReferenceEncoder, input 'clip_vision': got ")
    assert "FlexIP needs CLIP ViT-H/14" in message and "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in message
    assert "swapped" not in message


def test_dino_in_the_clip_input_says_swapped(comfy, pack):
    reference = pack.nodes.reference
    with pytest.raises(ValueError, match="swapped"):
        reference.check_encoder(encoder(comfy, "dino2_large.json"), "clip_vision", ("clip", 1280, 32),
                                reference.CLIP_FILE, "dino")


def test_the_right_encoders_pass(comfy, pack):
    reference = pack.nodes.reference
    reference.check_encoder(encoder(comfy, "clip_vision_config_h.json"), "clip_vision", ("clip", 1280, 32),
                            reference.CLIP_FILE, "dino")
    reference.check_encoder(encoder(comfy, "dino2_large.json"), "dino", ("dinov2", 1024, 24),
                            reference.DINO_FILE, "clip_vision")


# --- The reference image reaches P and S; several references average as documented. These run the
# --- full-shape random CLIP ViT-H/14 and DINOv2-L files through ComfyUI's CLIPVisionLoader.

def images():
    """Two unlike non-square ComfyUI IMAGEs [1, H, W, 3] in [0, 1]: noise, and a red checkerboard.
    (The random encoders give near-identical features for two noise images, and the random
    personalization adapter is weakly sensitive to its [CLS] tokens: unlike images keep the
    differences far above float32 noise.)"""
    noise = torch.rand(1, 120, 96, 3, generator=torch.Generator().manual_seed(1))
    y, x = torch.meshgrid(torch.arange(120), torch.arange(96), indexing="ij")
    checker = ((y // 15 + x // 12) % 2).float()[None, :, :, None] * torch.tensor([0.9, 0.2, 0.1])
    return noise, checker


@pytest.fixture(scope="module")
def encoded(comfy, pack):
    """The ReferenceEncoder's output, and P and S from the adapter nodes, for image A, image B,
    a copy of A, and the batch [A, B] averaged: {name: (reference, P, S)}; and the FlexIP module."""
    import comfy.clip_vision

    import random_models
    from flexip_core.weights import load_flexip
    flexip = pack.nodes.managed.ManagedFlexIP(load_flexip(random_models.flexip_sd15()))
    clip_vision = comfy.clip_vision.load(str(random_models.clip_vit_h()))
    dino = comfy.clip_vision.load(str(random_models.dinov2_large()))
    prompt = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(9)), {}]]
    a, b = images()
    out = {}
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        for name, pixels in (("A", a), ("B", b), ("A again", a.clone()), ("A+B", torch.cat((a, b)))):
            (reference,) = pack.nodes.reference.ReferenceEncoder().encode(flexip, pixels, clip_vision, dino,
                                                                           "center", "average")
            (p,) = pack.nodes.adapters.PreservationAdapter().apply(flexip, reference)
            (s,) = pack.nodes.adapters.PersonalizationAdapter().apply(flexip, reference, prompt)
            out[name] = reference, p, s
    return out, flexip, prompt


def relative_gap(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def test_another_image_gives_other_p_and_s_and_the_same_image_the_same(encoded):
    from flexip_core import COND, UNCOND
    out, _, _ = encoded
    (ref_a, p_a, s_a), (ref_b, p_b, s_b), (ref_a2, p_a2, s_a2) = out["A"], out["B"], out["A again"]
    for what, x, y in (("CLIP embeds", ref_a.clip_embeds, ref_b.clip_embeds),
                       ("DINOv2 patches", ref_a.dino_patches, ref_b.dino_patches),
                       ("P", p_a[COND], p_b[COND]), ("S", s_a[COND], s_b[COND])):
        assert relative_gap(x, y) > 1e-3, f"images A and B give the same {what}: the image is ignored"
    for what, x, y in (("CLIP embeds", ref_a.clip_embeds, ref_a2.clip_embeds),
                       ("DINOv2 patches", ref_a.dino_patches, ref_a2.dino_patches),
                       ("P", p_a[COND], p_a2[COND]), ("S", s_a[COND], s_a2[COND])):
        assert torch.equal(x, y), f"the same image twice gives another {what}"
    # The uncond pass sees no image at all.
    assert torch.equal(p_a[UNCOND], p_b[UNCOND]) and torch.equal(s_a[UNCOND], s_b[UNCOND])


@torch.no_grad()
def test_average_of_two_references_is_p_and_s_of_their_mean_features(encoded):
    """combine=average: the mean of each reference's CLIP embeds and DINOv2 patches (each encoded
    alone) goes through the adapters, computed here in float64; not the mean of P or S, not the
    first reference."""
    import copy

    from flexip_core import COND
    out, flexip, prompt = encoded
    (ref_a, p_a, s_a), (ref_b, p_b, s_b), (ref_ab, p_ab, s_ab) = out["A"], out["B"], out["A+B"]
    # A batch encodes each image as it does alone (to float32 accuracy).
    for what, alone, batch in (("CLIP embeds", (ref_a.clip_embeds, ref_b.clip_embeds), ref_ab.clip_embeds),
                               ("DINOv2 patches", (ref_a.dino_patches, ref_b.dino_patches), ref_ab.dino_patches)):
        assert relative_gap(batch, torch.cat(alone)) < 1e-4, f"{what} of a batch differ from each image's"
    mean_clip = (ref_a.clip_embeds.double() + ref_b.clip_embeds.double()) / 2
    mean_dino = (ref_a.dino_patches.double() + ref_b.dino_patches.double()) / 2
    p_expected = copy.deepcopy(flexip.preservation).double()(mean_clip, mean_dino)
    s_expected = copy.deepcopy(flexip.personalization).double()(prompt[0][0].double(), mean_clip[None])
    assert relative_gap(p_ab[COND], p_expected) < 1e-4, "P of the average is not P of the mean features"
    assert relative_gap(s_ab[COND], s_expected) < 1e-4, "S of the average is not S of the mean [CLS]"
    # What a wrong average would give is far from that.
    for what, wrong, expected in (("mean of P", (p_a[COND] + p_b[COND]) / 2, p_expected),
                                  ("mean of S", (s_a[COND] + s_b[COND]) / 2, s_expected),
                                  ("P of A", p_a[COND], p_expected), ("S of A", s_a[COND], s_expected)):
        assert relative_gap(wrong, expected) > 1e-3, what

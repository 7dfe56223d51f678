"""The FlexIP module a run starts from: fresh (projections copied from the UNet's own to_k / to_v),
or warm-started from a FlexIP file or from an IP-Adapter-plus SD1.5 file; and the gate's mode.
"""
import math

import torch
from safetensors.torch import load_file

from flexip_core.model import FlexIP
from flexip_core.patch import cross_attentions
from flexip_core.weights import load_flexip

# IP-Adapter numbers SD1.5's 16 attn2 processors 1, 3, ..., 31 in diffusers' module order:
# the down blocks, then the up blocks, then the middle block (as ComfyUI_IPAdapter_plus applies them).
IP_ADAPTER_LAYERS = 16
IP_ADAPTER_BLOCK_ORDER = {"input": 0, "output": 1, "middle": 2}


def init_flexip(config, base, options):
    """A trainable FlexIP for `config` on base.device, as the run's [model] and [gate] options ask."""
    torch.manual_seed(options.run.seed)
    flexip = FlexIP(config)
    unet_layers = cross_attentions(base.model.model.diffusion_model)
    flexip.projections.init_from_unet({key: (unet_layers[key].to_k.weight, unet_layers[key].to_v.weight)
                                       for key in flexip.projections.keys})
    if options.model.init_from:
        flexip.load_state_dict(load_flexip(options.model.init_from).state_dict())
    if options.model.init_ip_adapter:
        load_ip_adapter_plus(flexip, options.model.init_ip_adapter)
    set_gate(flexip.gate, options.gate)
    return flexip.to(base.device).train()


def set_gate(gate, options):
    """Start alpha/beta at the configured values; 'fixed' keeps them there."""
    with torch.no_grad():
        gate.alpha_logit.fill_(math.log(options.alpha / (1 - options.alpha)))
        gate.beta_logit.fill_(math.log(options.beta / (1 - options.beta)))
    gate.requires_grad_(options.mode == "learned")


def load_ip_adapter_plus(flexip, path):
    """Copy what an IP-Adapter-plus SD1.5 file shares with FlexIP: its 16 learnable queries and
    perceiver blocks into Resampler_L (same width 768, 12 heads, depth 4; only the input projection
    differs: CLIP-H's 1280-d hidden states there, DINOv2's 1024-d patches here), its output
    projection, and its per-layer to_k_ip / to_v_ip into the P branch."""
    if not str(path).endswith(".safetensors"):
        raise ValueError(f"[model] init_ip_adapter: {path} is not a .safetensors file; pickled .bin files are "
                         "never opened (convert it to safetensors first)")
    sd = load_file(path)
    proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter."):]: v for k, v in sd.items() if k.startswith("ip_adapter.")}
    if "latents" not in proj or not ip:
        raise ValueError(f"[model] init_ip_adapter: {path} is not an IP-Adapter-plus file (no image_proj.latents "
                         "or ip_adapter.* tensors)")
    resampler = flexip.preservation.resampler_latent
    mapping = {"latent_queries": ("latents", flexip.preservation)}
    for i in range(len(resampler.blocks)):
        for ours, theirs in (("0.norm_memory", "0.norm1"), ("0.norm_queries", "0.norm2"), ("0.to_q", "0.to_q"),
                             ("0.to_kv", "0.to_kv"), ("0.to_out", "0.to_out"), ("1.0", "1.0"), ("1.1", "1.1"),
                             ("1.3", "1.3")):
            mapping[f"blocks.{i}.{ours}"] = (f"layers.{i}.{theirs}", resampler)
    mapping["proj_out"] = ("proj_out", resampler)
    mapping["norm_out"] = ("norm_out", resampler)
    targets = {}
    for ours, (theirs, module) in mapping.items():
        own = dict(module.named_parameters())
        names = [n for n in own if n == ours or n.startswith(ours + ".")]
        for name in names:
            source = theirs + name[len(ours):]
            if source not in proj:
                raise ValueError(f"[model] init_ip_adapter: {path} lacks image_proj.{source}")
            if proj[source].shape != own[name].shape:
                raise ValueError(f"[model] init_ip_adapter: image_proj.{source} has shape {tuple(proj[source].shape)}, "
                                 f"FlexIP's {name} needs {tuple(own[name].shape)} (an IP-Adapter-plus SD1.5 file?)")
            targets[own[name]] = proj[source]
    keys = sorted(flexip.projections.keys, key=lambda k: (IP_ADAPTER_BLOCK_ORDER[k[0]], k[1], k[2]))
    processors = sorted({int(k.split(".")[0]) for k in ip if k.endswith("to_k_ip.weight")})
    if len(processors) != IP_ADAPTER_LAYERS or len(keys) != IP_ADAPTER_LAYERS:
        raise ValueError(f"[model] init_ip_adapter: {path} has {len(processors)} to_k_ip layers, FlexIP "
                         f"{len(keys)}; it must be an SD1.5 IP-Adapter")
    for key, n in zip(keys, processors):
        layer = flexip.projections[key]
        for linear, name in ((layer.to_k_p, f"{n}.to_k_ip.weight"), (layer.to_v_p, f"{n}.to_v_ip.weight")):
            if ip[name].shape != linear.weight.shape:
                raise ValueError(f"[model] init_ip_adapter: ip_adapter.{name} has shape {tuple(ip[name].shape)}, "
                                 f"layer {key} needs {tuple(linear.weight.shape)}")
            targets[linear.weight] = ip[name]
    with torch.no_grad():
        for param, value in targets.items():
            param.copy_(value)
    return len(targets)

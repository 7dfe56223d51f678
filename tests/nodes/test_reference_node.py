"""ReferenceEncoder refuses the wrong encoder, naming what it got and the file it needs. The
encoders are ComfyUI's own classes built from ComfyUI's own configs, on the meta device."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest


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

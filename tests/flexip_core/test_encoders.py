"""The two feature routes agree on full-shape random CLIP ViT-H/14 and DINOv2-L files saved as
users have them (HF names, float16): ComfyUI's stock loader (the nodes' route) against
open_clip + transformers (the training route)."""
import pytest
import torch

import random_models
from flexip_core.config import SD15
from flexip_core.encoders import (comfy_clip_embeds, comfy_dino_patches, interpolate_position_embeddings,
                                  load_open_clip_vit_h, load_transformers_dinov2, open_clip_embeds,
                                  transformers_dino_patches)
from flexip_core.preprocess import preprocess_reference


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def references():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 300, 260, 3, generator=g)  # two different images, not square


def comfy_load(comfy, path):
    clip_vision = comfy.clip_vision.load(str(path))
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    return clip_vision


@torch.no_grad()
def test_clip_vit_h_routes_agree(comfy, references):
    path = random_models.clip_vit_h()
    pixels = preprocess_reference(references, SD15.clip)
    ours = comfy_clip_embeds(comfy_load(comfy, path).model, pixels, SD15.clip)
    theirs = open_clip_embeds(load_open_clip_vit_h(path), pixels, SD15.clip)
    assert ours.shape == theirs.shape == (2, 1024)
    assert torch.isfinite(ours).all()
    assert rel_err(ours, theirs) < 1e-4
    # Random weights must still tell two images apart, or this test proves nothing.
    assert rel_err(ours[0], ours[1]) > 1e-2


@torch.no_grad()
def test_dinov2_large_routes_agree(comfy, references):
    path = random_models.dinov2_large()
    pixels = preprocess_reference(references, SD15.dino)
    ours = comfy_dino_patches(comfy_load(comfy, path).model, pixels, SD15.dino)
    theirs = transformers_dino_patches(load_transformers_dinov2(path), pixels, SD15.dino)
    assert ours.shape == theirs.shape == (2, 256, 1024)
    assert torch.isfinite(ours).all()
    assert rel_err(ours, theirs) < 1e-4
    assert rel_err(ours[0], ours[1]) > 1e-2


@torch.no_grad()
def test_comfy_dino_route_is_comfys_own_forward_at_native_size(comfy):
    """At 518 px nothing is interpolated: our route must be ComfyUI's model forward exactly."""
    dino = comfy_load(comfy, random_models.dinov2_large()).model
    pixels = torch.randn(1, 3, 518, 518)
    spec = SD15.dino
    ours = comfy_dino_patches(dino, pixels, spec)
    assert torch.equal(ours, dino(pixel_values=pixels)[0][:, 1:])


def test_position_embeddings_interpolate_only_when_the_grid_changes():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    assert interpolate_position_embeddings(pos, 37) is pos
    small = interpolate_position_embeddings(pos, 16)
    assert small.shape == (1, 1 + 16 * 16, 8)
    assert torch.equal(small[:, 0], pos[:, 0])  # [CLS] position kept

"""Loading the evaluation encoders from local files: the layouts users have, and clear refusals."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from flexip_core.encoders import DINOV2_HUB_TO_TRANSFORMERS5, DINOV2_LARGE
from flexip_core.eval_encoders import dinov2_config, load_dinov2, load_open_clip
from tests.flexip_eval.tiny_models import TINY_CLIP_CONFIG, TINY_DINO, tiny_dinov2, tiny_open_clip


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_open_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_a_state_dict_file_with_a_registered_architecture_name(clip_folder, tmp_path):
    import open_clip
    config = tmp_path / "flexip-test-tiny.json"  # open_clip registers architectures by file name
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    weights = shutil.copy(clip_folder / "open_clip_model.safetensors", tmp_path / "weights.safetensors")
    by_name = load_open_clip(weights, model="flexip-test-tiny")
    by_folder = load_open_clip(clip_folder)
    image = [torch.rand(20, 20, 3, generator=torch.Generator().manual_seed(3))]
    # Same weights, but the built-in route uses CLIP's own mean/std, not the folder's preprocess_cfg.
    assert by_name.spec.mean != by_folder.spec.mean
    assert torch.allclose(by_name.texts(["a cat"]), by_folder.texts(["a cat"]))
    with pytest.raises(ValueError, match="say which open_clip architecture"):
        load_open_clip(weights)
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        load_open_clip(weights, model="ViT-Q-99")
    assert by_name.images(image).shape == (1, 768)


def test_refusals_name_the_file_and_the_fix(clip_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_open_clip(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_open_clip(tmp_path)
    hub = tmp_path / "hf-text"
    shutil.copytree(clip_folder, hub)
    config = json.loads((hub / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = "xlm-roberta-base"
    (hub / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="never downloads"):
        load_open_clip(hub)
    wrong = tmp_path / "wrong"
    shutil.copytree(clip_folder, wrong)
    state = load_file(wrong / "open_clip_model.safetensors")
    state["text_projection"] = state["text_projection"][:, :100].contiguous()
    del state["logit_scale"]
    save_file(state, wrong / "open_clip_model.safetensors")
    with pytest.raises(ValueError, match=r"does not match.*missing \['logit_scale'\]; wrong shape \['text_projection \(64, 100\)"):
        load_open_clip(wrong)
    two = tmp_path / "two"
    shutil.copytree(clip_folder, two)
    (two / "open_clip_model.safetensors").rename(two / "a.safetensors")
    shutil.copy(two / "a.safetensors", two / "b.safetensors")
    with pytest.raises(FileNotFoundError, match="exactly one .safetensors"):
        load_open_clip(two)


def test_dinov2_configuration_is_read_from_the_shapes():
    from transformers import Dinov2Config, Dinov2Model
    with torch.device("meta"):
        state = Dinov2Model(Dinov2Config(**DINOV2_LARGE)).state_dict()
    for hub, new in DINOV2_HUB_TO_TRANSFORMERS5:
        state = {k.replace(new, hub): v for k, v in state.items()}
    assert dinov2_config(state) == {**DINOV2_LARGE, "use_swiglu_ffn": False}
    tiny = dinov2_config(state, heads=8)
    assert tiny["num_attention_heads"] == 8


def test_dinov2_with_transformers5_names_is_refused(tmp_path):
    path = tiny_dinov2(tmp_path / "dino.safetensors")
    encoder = load_dinov2(path, heads=TINY_DINO["num_attention_heads"], resolution=32)
    assert encoder.spec.resolution == 32 and "width 128, 2 layers, patch 8" in encoder.name
    state = load_file(path)
    for hub, new in DINOV2_HUB_TO_TRANSFORMERS5:
        state = {k.replace(hub, new): v for k, v in state.items()}
    save_file(state, tmp_path / "renamed.safetensors")
    with pytest.raises(ValueError, match="transformers-5 tensor names"):
        load_dinov2(tmp_path / "renamed.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a hub-format DINOv2"):
        load_dinov2(tmp_path / "other.safetensors")


@pytest.mark.parametrize("patch, backbone", [(16, "dino-vits16"), (8, "dino-vits8")])
def test_dino_v1_embedding_is_transformers_own_cls_token(tmp_path, patch, backbone):
    """DINO v1 from a hub-format folder: the [CLS] of transformers' own ViTModel (the model as built,
    before saving) on the pixels of DINO's evaluation transform (torchvision's Resize(256, bicubic),
    CenterCrop(224), ImageNet normalisation), to float rounding."""
    import torchvision.transforms.v2 as T
    from safetensors import safe_open
    from transformers import ViTModel

    from flexip_core.eval_encoders import load_dino_v1
    from tests.flexip_eval.tiny_models import dino_v1_folder

    folder, built = dino_v1_folder(tmp_path / "dino", patch=patch)
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert "encoder.layer.0.attention.attention.query.weight" in f.keys()  # the hub's names
    encoder = load_dino_v1(folder, backbone)
    assert encoder.backbone == f"DINO ViT-S/{patch}"
    g = torch.Generator().manual_seed(5)
    images = [torch.rand(300, 260, 3, generator=g), torch.rand(230, 410, 3, generator=g)]
    # On PIL images (DINO's pipeline) bicubic's overshoot saturates at 0 and 255: clamped here likewise.
    geometry = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(224)])
    normalise = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.stack([normalise(geometry(image.permute(2, 0, 1)).clamp(0, 1)) for image in images])
    with torch.no_grad():
        theirs = built(pixel_values=pixels).last_hidden_state[:, 0]
        loaded_by_transformers = ViTModel.from_pretrained(folder, add_pooling_layer=False)(pixel_values=pixels)
    ours = encoder.images(images)
    assert ours.shape == (2, 384)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert torch.allclose(ours, loaded_by_transformers.last_hidden_state[:, 0], atol=1e-5, rtol=0)
    # the file as loaded is the model as built: random weights, so a missed tensor would show
    assert torch.equal(load_dino_v1(folder / "model.safetensors").images(images[:1]), ours[:1])


def test_dino_v1_refusals_name_the_file_and_the_fix(tmp_path):
    from flexip_core.eval_encoders import load_dino_v1
    from tests.flexip_eval.tiny_models import dino_v1_folder

    folder, _ = dino_v1_folder(tmp_path / "dino", patch=16)
    with pytest.raises(ValueError, match="holds DINO ViT-S/16, not dino-vits8"):
        load_dino_v1(folder, "dino-vits8")
    with pytest.raises(ValueError, match="unknown DINO v1 backbone"):
        load_dino_v1(folder, "dino-vitz16")
    no_config = shutil.copytree(folder, tmp_path / "no-config")
    (no_config / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_dino_v1(no_config)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(folder / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="never unpickled"):
        load_dino_v1(pickled)
    wrong = shutil.copytree(folder, tmp_path / "wrong")
    config = json.loads((wrong / "config.json").read_text())
    config["patch_size"] = 8
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json says width 384, patch 8; the weights are width 384, patch 16"):
        load_dino_v1(wrong)
    short = shutil.copytree(folder, tmp_path / "short")
    state = load_file(short / "model.safetensors")
    del state["encoder.layer.11.output.dense.weight"]
    save_file(state, short / "model.safetensors")
    with pytest.raises(ValueError, match="does not match its config.json"):
        load_dino_v1(short)

"""The LAION aesthetic head: the published tensor names load (safetensors and a tensor-only .pth),
and a score equals the product of the five linear maps applied by hand in float64 to the
L2-normalised embedding (the head has no activations; dropout is off at inference)."""
import pytest
import torch
from safetensors.torch import save_file

from flexip_core.aesthetic import AestheticHead, load_aesthetic_head
from tests.flexip_eval.tiny_models import tiny_aesthetic_head

PUBLISHED_NAMES = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


def by_hand(state, embedding):
    x = embedding.double() / embedding.double().norm()
    for i in (0, 2, 4, 6, 7):
        x = state[f"layers.{i}.weight"].double() @ x + state[f"layers.{i}.bias"].double()
    return x.item()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_score_is_the_linear_maps_by_hand_on_the_normalised_embedding(tmp_path, suffix):
    path = tiny_aesthetic_head(tmp_path / f"head{suffix}")
    head = load_aesthetic_head(path)
    assert sorted(head.state_dict()) == sorted(PUBLISHED_NAMES)
    state = head.state_dict()
    g = torch.Generator().manual_seed(5)
    embeds = torch.randn(3, 768, generator=g) * torch.tensor([[0.3], [2.0], [11.0]])
    with torch.no_grad():
        scores = head(embeds)
    assert scores.tolist() == pytest.approx([by_hand(state, e) for e in embeds], abs=1e-5)
    # Only the direction counts: the same embedding scaled scores the same.
    with torch.no_grad():
        assert head(embeds[:1] * 7.5).item() == pytest.approx(scores[0].item(), abs=1e-5)
    assert len(set(round(s, 4) for s in scores.tolist())) == 3


def test_wrong_files_are_refused_with_what_was_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_aesthetic_head(tmp_path / "absent.pth")
    state = AestheticHead().state_dict()
    state["layers.1.weight"] = state.pop("layers.2.weight")
    save_file(state, tmp_path / "renamed.safetensors")
    with pytest.raises(ValueError, match="not the LAION aesthetic head"):
        load_aesthetic_head(tmp_path / "renamed.safetensors")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_aesthetic_head(tmp_path / "list.pth")


def test_pickled_code_is_refused_before_anything_is_unpickled(tmp_path, payload, unpickling_calls):
    """A .pth whose unpickling would import code is named from its opcodes and never handed to
    torch.load (whose weights_only is unsafe before torch 2.6)."""
    obj, marker = payload
    torch.save({"layers.0.weight": obj}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="would import .*convert the head to safetensors"):
        load_aesthetic_head(tmp_path / "evil.pth")
    assert unpickling_calls == [] and not marker.exists()


def test_a_clip_of_another_width_is_refused():
    with pytest.raises(ValueError, match="768-d CLIP ViT-L/14"):
        AestheticHead()(torch.randn(2, 1024))

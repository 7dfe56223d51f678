"""The paper's metrics against hand computation: tiny random open_clip and DINOv2 models saved
to local files, loaded by eval_encoders, compared with the same models run by hand (pixels cut,
resized and normalised here, cosines and softmaxes written out in float64); mRank on a made-up table."""
import math

import pytest
import torch
import torch.nn.functional as F

from flexip_core.eval_encoders import load_dinov2, load_open_clip
from flexip_core.metrics import CLIP_IQA_PAIRS, clip_i, clip_iqa, clip_t, cosine, dino_i, mrank
from tests.flexip_eval.tiny_models import (TINY_CLIP_MEAN, TINY_CLIP_STD, TINY_DINO, tiny_dinov2,
                                           tiny_open_clip)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(40, 52, 3, generator=g), torch.rand(48, 36, 3, generator=g), torch.rand(32, 32, 3, generator=g)]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_open_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def encoder(clip_folder):
    return load_open_clip(clip_folder)


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    return tiny_dinov2(tmp_path_factory.mktemp("dino") / "tiny-dinov2.safetensors")


def by_hand_pixels(image, size, mean, std):
    """[H, W, 3] -> [1, 3, size, size]: central square, bicubic with antialiasing, normalised."""
    h, w = image.shape[:2]
    side = min(h, w)
    square = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    x = F.interpolate(square.permute(2, 0, 1)[None], size=(size, size), mode="bicubic", align_corners=False,
                      antialias=True).clamp(0, 1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def by_hand_cosine(a, b):
    a, b = a.double().tolist(), b.double().tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))


@pytest.fixture(scope="module")
def clip_by_hand(clip_folder):
    """The same tiny CLIP built straight from open_clip and its file, not through eval_encoders."""
    import open_clip
    from safetensors.torch import load_file
    model = open_clip.create_model(f"local-dir:{clip_folder}", load_weights=False, pretrained_text=False)
    model.load_state_dict(load_file(clip_folder / "open_clip_model.safetensors"))
    return model.eval()


@torch.no_grad()
def test_clip_i_and_clip_t_are_the_cosines_of_the_models_embeddings(encoder, clip_by_hand, images):
    import open_clip
    assert encoder.has_text and encoder.spec.resolution == 32 and encoder.spec.mean == TINY_CLIP_MEAN
    generated, reference = images[:2], images[2:]
    prompts = ["a red teapot on a beach", "a dog in the snow"]
    ours_i = clip_i(encoder.images(generated), encoder.images(reference))
    ours_t = clip_t(encoder.images(generated), encoder.texts(prompts))
    ref = clip_by_hand.encode_image(by_hand_pixels(images[2], 32, TINY_CLIP_MEAN, TINY_CLIP_STD))[0]
    texts = clip_by_hand.encode_text(open_clip.tokenize(prompts))
    for k, image in enumerate(generated):
        emb = clip_by_hand.encode_image(by_hand_pixels(image, 32, TINY_CLIP_MEAN, TINY_CLIP_STD))[0]
        assert ours_i[k].item() == pytest.approx(by_hand_cosine(emb, ref), abs=1e-5)
        assert ours_t[k].item() == pytest.approx(by_hand_cosine(emb, texts[k]), abs=1e-5)
    # Random weights must still tell images and prompts apart, or these checks prove little.
    assert abs(ours_i[0] - ours_i[1]) > 1e-3 and abs(ours_t[0] - ours_t[1]) > 1e-3


@torch.no_grad()
def test_clip_iqa_is_the_softmax_of_each_antonym_pair(encoder, clip_by_hand, images):
    import open_clip
    names = ["quality", "sharpness", "warm"]
    pairs = encoder.texts([p for n in names for p in CLIP_IQA_PAIRS[n]]).reshape(3, 2, -1)
    ours = clip_iqa(encoder.images(images[:2]), pairs)
    assert ours.shape == (2, 3)
    for k, image in enumerate(images[:2]):
        emb = clip_by_hand.encode_image(by_hand_pixels(image, 32, TINY_CLIP_MEAN, TINY_CLIP_STD))[0]
        for p, name in enumerate(names):
            good, bad = clip_by_hand.encode_text(open_clip.tokenize(list(CLIP_IQA_PAIRS[name])))
            margin = 100.0 * (by_hand_cosine(emb, good) - by_hand_cosine(emb, bad))
            assert ours[k, p].item() == pytest.approx(1.0 / (1.0 + math.exp(-margin)), abs=1e-4)
    assert len(set(ours.flatten().round(decimals=4).tolist())) == 6


def test_clip_iqa_temperature_and_pair_order():
    image = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    pairs = torch.tensor([[[0.6, 0.8], [0.8, 0.6]]], dtype=torch.float64)  # cosines 0.6 and 0.8
    assert clip_iqa(image, pairs).item() == pytest.approx(1 / (1 + math.exp(100 * 0.2)), rel=1e-12)
    assert clip_iqa(image, pairs, logit_scale=10.0).item() == pytest.approx(1 / (1 + math.exp(2.0)), rel=1e-12)
    assert clip_iqa(image, pairs.flip(1)).item() == pytest.approx(1 / (1 + math.exp(-100 * 0.2)), rel=1e-12)
    with pytest.raises(ValueError, match="pairs, 2, dim"):
        clip_iqa(image, pairs[:, :1])


@torch.no_grad()
def test_dino_i_is_the_cosine_of_the_cls_tokens(dino_file, images):
    from safetensors.torch import load_file
    from transformers import Dinov2Config, Dinov2Model

    from flexip_core.config import IMAGENET_MEAN, IMAGENET_STD
    from flexip_core.encoders import DINOV2_HUB_TO_TRANSFORMERS5
    encoder = load_dinov2(dino_file, resolution=32)
    ours = dino_i(encoder.images(images[:2]), encoder.images(images[2:]))
    model = Dinov2Model(Dinov2Config(**TINY_DINO)).eval()
    state = load_file(dino_file)
    for hub, new in DINOV2_HUB_TO_TRANSFORMERS5:
        state = {k.replace(hub, new): v for k, v in state.items()}
    model.load_state_dict(state)

    def cls(image):  # last_hidden_state is after the final layer norm
        return model(pixel_values=by_hand_pixels(image, 32, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state[0, 0]
    for k in range(2):
        assert ours[k].item() == pytest.approx(by_hand_cosine(cls(images[k]), cls(images[2])), abs=1e-5)
    assert abs(ours[0] - ours[1]) > 1e-3


def test_a_mask_paints_the_reference_background_grey(encoder, images):
    image = images[0]
    mask = torch.zeros(image.shape[:2])
    mask[10:30, 15:40] = 1.0
    painted = image.clone()
    painted[mask == 0] = 0.5
    assert torch.allclose(encoder.images([image], [mask]), encoder.images([painted]), atol=1e-6)
    assert not torch.allclose(encoder.images([image]), encoder.images([painted]), atol=1e-3)


def test_cosine_by_hand_and_width_check():
    a = torch.tensor([[0.2, -0.7, 1.3], [3.0, 0.5, -0.1]], dtype=torch.float64)
    b = torch.tensor([[0.9, 0.4, -0.3]], dtype=torch.float64)
    assert cosine(a, b).tolist() == pytest.approx([by_hand_cosine(a[0], b[0]), by_hand_cosine(a[1], b[0])], rel=1e-12)
    with pytest.raises(ValueError, match="different widths"):
        cosine(a, torch.ones(1, 4))


def test_mrank_on_a_made_up_table():
    table = {
        "A": {"clip_t": 0.28, "clip_i": 0.87, "dino_i": 0.70},
        "B": {"clip_t": 0.30, "clip_i": 0.80, "dino_i": 0.70},
        "C": {"clip_t": 0.21, "clip_i": 0.86, "dino_i": math.nan},
    }
    # clip_t: B 1, A 2, C 3; clip_i: A 1, C 2, B 3; dino_i: A and B tie for 1 and 2 (1.5 each), C unranked.
    assert mrank(table, ("clip_t", "clip_i", "dino_i", "aesthetic")) == pytest.approx(
        {"A": (2 + 1 + 1.5) / 3, "B": (1 + 3 + 1.5) / 3, "C": (3 + 2) / 2})
    assert math.isnan(mrank({"A": {}, "B": {"clip_t": 0.1}}, ("clip_t",))["A"])


def test_reference_and_prompt_scores_by_hand():
    """Each image against the mean over its references (2 here, shared by all images) and its prompt;
    the weighted sum with asymmetric weights; a weight on a metric that was not scored is refused."""
    from flexip_core.metrics import reference_and_prompt_scores, weighted_total
    g = torch.Generator().manual_seed(4)
    clip, dino, text = torch.randn(3, 6, generator=g), torch.randn(3, 5, generator=g), torch.randn(1, 6, generator=g)
    clip_refs, dino_refs = torch.randn(1, 2, 6, generator=g), torch.randn(1, 2, 5, generator=g)
    scores = reference_and_prompt_scores(clip, clip_refs, dino, dino_refs, clip, text)
    for b in range(3):
        assert scores["clip_i"][b].item() == pytest.approx(
            (by_hand_cosine(clip[b], clip_refs[0, 0]) + by_hand_cosine(clip[b], clip_refs[0, 1])) / 2, abs=1e-6)
        assert scores["dino_i"][b].item() == pytest.approx(
            (by_hand_cosine(dino[b], dino_refs[0, 0]) + by_hand_cosine(dino[b], dino_refs[0, 1])) / 2, abs=1e-6)
        assert scores["clip_t"][b].item() == pytest.approx(by_hand_cosine(clip[b], text[0]), abs=1e-6)
    total = weighted_total(scores, {"clip_i": 0.2, "dino_i": 1.0, "clip_t": 3.0})
    assert total.tolist() == pytest.approx([0.2 * scores["clip_i"][b].item() + scores["dino_i"][b].item()
                                            + 3.0 * scores["clip_t"][b].item() for b in range(3)], abs=1e-12)
    assert set(reference_and_prompt_scores(dino_images=dino, dino_references=dino_refs)) == {"dino_i"}
    with pytest.raises(ValueError, match="not scored: \\['clip_t'\\]"):
        weighted_total({"dino_i": scores["dino_i"]}, {"dino_i": 1.0, "clip_t": 0.5})
    with pytest.raises(ValueError, match="every weight is 0"):
        weighted_total(scores, {"clip_i": 0.0})

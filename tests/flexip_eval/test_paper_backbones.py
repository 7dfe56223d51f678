"""The paper's backbones (issue 17): a report scored with DINO v1 ViT-S/16 and CLIP ViT-B/32 (full
shapes, random weights, in the local formats users have) names them beside every metric, and its
numbers are those of open_clip's own model (create_model with pretrained=<the file>,
encode_image / encode_text) and of transformers' own ViTModel, on the same pixels."""
import numpy as np
import pytest
import torch
from PIL import Image

from flexip_core.eval_encoders import pixels
from flexip_core.metrics import cosine
from flexip_eval.cli import main
from flexip_eval.scoring import SCORES, load_image, read_scores
from flexip_eval.spec import load_spec
from tests.flexip_eval.helpers import BLEND_TEMPLATE, references, write_spec
from tests.flexip_eval.tiny_models import dino_v1_folder, open_clip_state_dict_file


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """One subject, two prompts, two controls, random images on disk; scored by `score` with the
    defaults: a CLIP state-dict file with no backbone named (ViT-B-32) and a DINO v1 folder."""
    folder = tmp_path_factory.mktemp("paper-backbones")
    clip_file = open_clip_state_dict_file(folder / "vit-b-32.safetensors", "ViT-B-32")
    dino, _ = dino_v1_folder(folder / "dino-vits16", patch=16)
    (reference,) = references(folder / "refs", 1, seed=3)
    spec_path = write_spec(folder, subjects=[("cup", reference, ["a red cup", "a cup in the rain"])],
                           methods={"m": {"workflow": str(BLEND_TEMPLATE), "params": {"size": 32}}},
                           controls=(0.2, 0.9), scoring={"clip": {"path": str(clip_file)}, "dino": {"path": str(dino)}},
                           note="random weights")
    spec, out = load_spec(spec_path), folder / "out"
    rng = np.random.RandomState(2)
    for job in spec.jobs():
        (out / job.image).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.rand(48, 40, 3) * 255).astype("uint8")).save(out / job.image)
    assert main(["score", str(spec_path), "--out", str(out), "--no-progress"]) == 0
    return spec, out, clip_file, dino


def test_the_report_names_the_backbone_of_every_metric(scored):
    spec, out, _, _ = scored
    report = (out / "report.md").read_text()
    (header,) = [line for line in report.splitlines() if line.startswith("| method | control |")]
    assert "| CLIP-T [CLIP ViT-B-32] | CLIP-I [CLIP ViT-B-32] | DINO-I [DINO ViT-S/16] |" in header
    assert "CLIP-IQA [CLIP ViT-B-32]" in header
    (smoothness,) = [line for line in report.splitlines() if line.startswith("| method | sweeps |")]
    assert "ρ(control, CLIP-I) [CLIP ViT-B-32]" in smoothness and "front area [CLIP ViT-B-32]" in smoothness
    assert "- DINO-I: DINO ViT-S/16 from dino-vits16/model.safetensors" in report


def test_the_numbers_are_open_clips_and_transformers_own(scored):
    import open_clip
    from transformers import ViTModel

    spec, out, clip_file, dino = scored
    clip = open_clip.create_model("ViT-B-32", pretrained=str(clip_file)).eval()  # open_clip's own loading
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    vit = ViTModel.from_pretrained(dino, add_pooling_layer=False).eval()
    from flexip_core.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, EncoderSpec
    clip_spec, dino_spec = EncoderSpec("image_embeds", 512, 224, CLIP_MEAN, CLIP_STD), \
        EncoderSpec("cls", 384, 224, IMAGENET_MEAN, IMAGENET_STD)
    reference = [load_image(spec.subjects[0].image)]
    with torch.no_grad():
        clip_ref = clip.encode_image(pixels(reference, clip_spec))
        dino_ref = vit(pixel_values=pixels(reference, dino_spec, resize=256)).last_hidden_state[:, 0]
        rows = read_scores(out / SCORES)
        assert len(rows) == 4
        for row in rows:
            image = [load_image(out / row["image"])]
            embeds = clip.encode_image(pixels(image, clip_spec))
            expected = {"clip_i": cosine(embeds, clip_ref), "clip_t": cosine(embeds, clip.encode_text(tokenizer([row["prompt"]]))),
                        "dino_i": cosine(vit(pixel_values=pixels(image, dino_spec, resize=256)).last_hidden_state[:, 0], dino_ref)}
            for metric, value in expected.items():
                assert row[metric] == pytest.approx(value.item(), abs=1e-5), metric

"""The training loop on a tiny real ComfyUI UNet (tiny_base): the loss goes down, resuming is exact,
two processes (gloo) match one, frozen parts stay frozen while every trainable tensor learns.
The full-shape SD1.5 checks are in test_train_sd15.py."""
import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.flexip_train.conftest import write_mask

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the tiny base and run helpers beside this file

from tiny_run import make_trainer, tiny_config, write_data, write_manifests  # noqa: E402


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("tiny_data"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def final_state(run_dir):
    (checkpoint,) = sorted((Path(run_dir) / "checkpoints").glob("step-*"))[-1:]
    return load_file(checkpoint / "model.safetensors"), load_file(checkpoint / "optimizer.safetensors")


def test_loss_goes_down(manifests, tmp_path):
    # 40 steps of 4 samples = 10 epochs of the 16 samples. Per-sample timesteps and noise vary from
    # step to step, so single losses are noisy: compare the means of the first and last 10 steps.
    # Measured: 1.287 -> 1.183 (-8%); the run is seeded and deterministic on the CPU.
    config = tiny_config(tmp_path, manifests, run={"max_steps": 40, "checkpoint_every": 40},
                         data={"batch_size": 4})
    make_trainer(config).train()
    values = losses(tmp_path)
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    assert len(values) == 40 and last < 0.95 * first, (first, last)
    assert (tmp_path / "metrics.png").stat().st_size > 0
    assert any((tmp_path / "tensorboard").iterdir())


def test_resume_gives_the_uninterrupted_run(manifests, tmp_path):
    # Bit-exact: the CPU kernels are deterministic, per-sample noise comes from (seed, epoch,
    # position), and the checkpoint restores module, AdamW, scheduler and data position exactly.
    # An epoch is 16 samples: batch 2 stops mid-epoch (step 3 of 8); batch 4 stops at the epoch's
    # end (step 4 of 4) and resumes into the next.
    for batch, stop, total in ((2, 3, 6), (4, 4, 6)):
        straight, interrupted = tmp_path / f"straight{batch}", tmp_path / f"interrupted{batch}"
        make_trainer(tiny_config(straight, manifests, run={"max_steps": total}, data={"batch_size": batch})).train()
        make_trainer(tiny_config(interrupted, manifests, run={"max_steps": stop}, data={"batch_size": batch})).train()
        resumed = make_trainer(tiny_config(interrupted, manifests, run={"max_steps": total}, data={"batch_size": batch}))
        assert resumed.train() == total
        for a, b in zip(final_state(straight), final_state(interrupted)):
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
        assert losses(straight)[stop:] == losses(interrupted)[stop:]


def test_two_processes_match_one(manifests, tmp_path):
    # Same global batch (1 x 4 against 2 x 2), same samples per step (interleaved shares), same
    # per-sample draws: DDP averages the two ranks' gradients, which equals the one-process mean
    # up to float summation order. The logged loss (the global batch's) agrees to 1e-6. The
    # parameters after 3 AdamW steps agree to 1e-4 of each tensor's largest value (measured 2e-5):
    # Adam's first steps divide each gradient element by its own magnitude, so summation-order
    # differences in tiny gradient elements become visible there.
    data = manifests[0].parent
    outputs, logged = {}, {}
    for processes, batch in ((1, 4), (2, 2)):
        out = tmp_path / f"p{processes}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                                 "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                                 str(HERE / "tiny_run.py"), str(data), str(out), "--batch", str(batch), "--steps", "3"],
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[processes] = load_file(out / "flexip-sd15.safetensors")
        logged[processes] = losses(out)
    assert logged[1] == pytest.approx(logged[2], rel=1e-6)
    one, two = outputs[1], outputs[2]
    assert one.keys() == two.keys()
    start = make_trainer(tiny_config(tmp_path / "fresh", manifests)).flexip.state_dict()
    moved = [k for k in one if not torch.equal(one[k], start[k].cpu())]
    assert len(moved) > 0.9 * len(one)  # the comparison is of trained tensors
    for k in one:
        scale = one[k].abs().max().clamp_min(1e-6)
        assert (one[k] - two[k]).abs().max() / scale < 1e-4, k


def test_frozen_parts_stay_frozen_and_every_trainable_tensor_learns(manifests, tmp_path):
    trainer = make_trainer(tiny_config(tmp_path, manifests, data={"batch_size": 4}))
    unet = trainer.base.model.model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    assert not any(p.requires_grad for p in unet.parameters())
    alpha, beta = trainer.flexip.gate.alpha.item(), trainer.flexip.gate.beta.item()

    (_, micro) = next(trainer.steps(None))
    (items, keys), = micro
    assert {item["is_variant"] for item in items} == {False, True}  # the 1:1 sampler: both kinds
    from flexip_train.loop import encode_items
    loss = trainer.loss(encode_items(trainer.base, items, None), keys)
    loss.backward()
    missing = [n for n, p in trainer.flexip.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(p.grad is None for p in unet.parameters())

    trainer.optimizer.zero_grad()
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert trainer.flexip.gate.alpha.item() != alpha and trainer.flexip.gate.beta.item() != beta


def loss_at_gammas(trainer, batch, timesteps, noise):
    """The epsilon loss of a batch at the given per-sample gammas, computed outside Trainer.loss
    (no dropout: the tests that use it turn dropout off). -> loss(gammas)."""
    from flexip_core.training import epsilon_loss, training_patches
    noisy, sigma = trainer.base.add_noise(batch.latents, timesteps, noise)

    def loss_at(gammas):
        kv, _ = trainer.conditioner(batch.clip, batch.dino, batch.text, batch.is_variant, gammas)
        x0 = trainer.base.denoise(noisy, sigma, batch.text, training_patches(kv, gammas, trainer.base.attention))
        return epsilon_loss(x0, batch.latents, sigma, trainer.base.v_prediction)
    return loss_at


def test_fixed_gate_stays_fixed(manifests, tmp_path):
    trainer = make_trainer(tiny_config(tmp_path, manifests, gate={"mode": "fixed", "alpha": 0.8, "beta": 0.7}))
    trainer.train()
    assert trainer.flexip.gate(torch.tensor([False, True])).tolist() == pytest.approx([0.8, 0.3])


def test_sampled_gate_trains_at_the_drawn_gammas(manifests, tmp_path):
    """Gate mode 'sampled': each sample's gamma is flexip_core.gate.sampled_gamma of its own last
    draw (the loss equals one computed with those gammas given explicitly, and differs from the
    learned gate's), the gate stays frozen, and the export records the mode."""
    from flexip_core.gate import sampled_gamma
    from flexip_train.loop import encode_items
    trainer = make_trainer(tiny_config(tmp_path, manifests, data={"batch_size": 4}, gate={"mode": "sampled"},
                                       dropout={"text": 0.0, "image": 0.0, "both": 0.0}))
    assert not any(p.requires_grad for p in trainer.flexip.gate.parameters())
    (_, micro) = next(trainer.steps(None))
    (items, keys), = micro
    batch = encode_items(trainer.base, items, None)
    _, timesteps, noise, (gamma_u, _) = trainer.draws(keys, batch.latents.shape[1:])
    gamma = sampled_gamma(gamma_u, batch.is_variant)
    assert 0 < gamma.min() and gamma.max() < 1 and not torch.equal(gamma, trainer.flexip.gate(batch.is_variant))
    loss_at = loss_at_gammas(trainer, batch, timesteps, noise)
    with torch.no_grad():
        assert trainer.loss(batch, keys).item() == loss_at(gamma).item()
        assert trainer.loss(batch, keys).item() != loss_at(trainer.flexip.gate(batch.is_variant)).item()
    trainer.train()
    facts = json.loads(safe_open(str(trainer.export(extra_facts={"variant": "x"})), "pt").metadata()["training"])
    assert facts["gate_mode"] == "sampled" and facts["variant"] == "x"


def test_a_samples_own_gamma_wins_over_the_gate_and_teaches_it_nothing(manifests, tmp_path):
    """Items with a manifest "gamma" train at it (the loss equals one computed with those gammas given
    explicitly); the others at the learned gate's; a batch whose every sample has its own gamma
    gives the gate no gradient."""
    from flexip_train.loop import encode_items
    trainer = make_trainer(tiny_config(tmp_path, manifests, data={"batch_size": 4},
                                       dropout={"text": 0.0, "image": 0.0, "both": 0.0}))
    (_, micro) = next(trainer.steps(None))
    (items, keys), = micro
    assert encode_items(trainer.base, items, None).gamma is None  # no sample has one
    own = [0.0, None, 0.7, None]
    items = [{**item, "gamma": g} if g is not None else item for item, g in zip(items, own)]
    batch = encode_items(trainer.base, items, None)
    assert torch.equal(torch.isnan(batch.gamma), torch.tensor([g is None for g in own]))
    _, timesteps, noise, _ = trainer.draws(keys, batch.latents.shape[1:])
    gate = trainer.flexip.gate(batch.is_variant)
    expected = torch.tensor([gate[i].item() if g is None else g for i, g in enumerate(own)])
    loss_at = loss_at_gammas(trainer, batch, timesteps, noise)
    with torch.no_grad():
        assert trainer.loss(batch, keys).item() == loss_at(expected).item()
        assert trainer.loss(batch, keys).item() != loss_at(gate).item()
    batch.gamma = torch.tensor([0.0, 1.0, 0.5, 0.2])
    trainer.loss(batch, keys).backward()
    assert all(p.grad is None or not p.grad.any() for p in trainer.flexip.gate.parameters())
    assert any(p.grad is not None and p.grad.any() for p in trainer.conditioner.parameters())


def test_image_samples_timestep_split_and_text_dropout(manifests, tmp_path):
    """loss.image_timesteps 0.5 and dropout.text_on_images 1: image samples train at half their drawn
    timestep (the low-noise half) with the empty prompt; variant samples keep their timestep and
    prompt. The loss equals one computed that way explicitly, and the export records both options."""
    from flexip_core.training import drop, epsilon_loss, training_patches
    from flexip_train.loop import encode_items
    trainer = make_trainer(tiny_config(tmp_path, manifests, data={"batch_size": 4}, loss={"image_timesteps": 0.5},
                                       dropout={"text": 0.0, "image": 0.0, "both": 0.0, "text_on_images": 1.0}))
    (_, micro) = next(trainer.steps(None))
    (items, keys), = micro
    batch = encode_items(trainer.base, items, None)
    assert batch.is_variant.any() and not batch.is_variant.all()
    _, timesteps, noise, _ = trainer.draws(keys, batch.latents.shape[1:])
    split = torch.where(batch.is_variant, timesteps, timesteps // 2)
    assert (split[~batch.is_variant] < trainer.base.timesteps // 2).all()
    text = drop(batch.text, ~batch.is_variant, trainer.base.empty_text(len(items)).to(batch.text))
    noisy, sigma = trainer.base.add_noise(batch.latents, split, noise)
    with torch.no_grad():
        kv, gamma = trainer.conditioner(batch.clip, batch.dino, text, batch.is_variant)
        x0 = trainer.base.denoise(noisy, sigma, text, training_patches(kv, gamma, trainer.base.attention))
        expected = epsilon_loss(x0, batch.latents, sigma, trainer.base.v_prediction)
        assert trainer.loss(batch, keys).item() == expected.item()
    trainer.train()
    facts = json.loads(safe_open(str(trainer.export()), "pt").metadata()["training"])
    assert facts["image_timesteps"] == 0.5 and facts["text_on_images"] == 1.0


def test_cfg_dropout_drops_what_the_uncond_pass_drops(manifests, tmp_path):
    """With every sample's text and image dropped, the loss no longer depends on the prompt or the
    reference (they became the empty prompt and zeroed features); with no dropout it does."""
    from flexip_train.loop import encode_items
    results = {}
    for name, dropout in (("all", {"text": 0.0, "image": 0.0, "both": 1.0}),
                          ("none", {"text": 0.0, "image": 0.0, "both": 0.0})):
        trainer = make_trainer(tiny_config(tmp_path / name, manifests, dropout=dropout, data={"batch_size": 4}))
        (_, ((items, keys),)) = next(trainer.steps(None))
        batch = encode_items(trainer.base, items, None)
        other = type(batch)(batch.latents, batch.text.roll(1, 0), batch.clip.roll(1, 0), batch.dino.roll(1, 0),
                            batch.is_variant)
        with torch.no_grad():
            results[name] = (trainer.loss(batch, keys).item(), trainer.loss(other, keys).item())
    assert results["all"][0] == results["all"][1]
    assert results["none"][0] != results["none"][1]


def test_feature_cache_skips_the_frozen_encoders_after_the_first_epoch(manifests, tmp_path):
    cache = tmp_path / "cache"
    trainer = make_trainer(tiny_config(tmp_path / "run", manifests, run={"max_steps": 8, "checkpoint_every": 8},
                                       data={"batch_size": 4, "feature_cache": str(cache)}))
    encoded = []
    reference = trainer.base.reference
    trainer.base.reference = lambda images, masks=None: (encoded.append(len(images)), reference(images, masks))[1]
    trainer.train()
    # 2 epochs of the 16 samples: the first encodes each once, the second reads them all back.
    assert sum(encoded) == 16 and trainer.cache.misses == 16 and trainer.cache.hits == 16
    assert len(list(cache.rglob("*.safetensors"))) == 16
    again = make_trainer(tiny_config(tmp_path / "again", manifests, data={"feature_cache": str(cache)}))
    assert again.cache.get(0) is not None  # a later run (a resumed one) takes the cache back
    with pytest.raises(ValueError, match="other data or settings"):
        make_trainer(tiny_config(tmp_path / "other", manifests, data={"resolution": 128, "feature_cache": str(cache)}))


def test_subject_weight_weighs_the_loss_masks_and_a_manifest_without_them_trains_as_before(manifests, tmp_path):
    """The same pictures with a loss mask (the left half) beside each: at subject_weight 1 the masks
    are not even read and the run is bit-identical to the one without them, as is a run at
    subject_weight 3 on manifests without masks. At 3, weights on the left half and on the right
    half sum to 2 everywhere (each sample's weights have mean 1), so the two losses sum to twice
    the unweighted one, while each differs from it."""
    from flexip_train.loop import encode_items
    folder = tmp_path / "masked"
    write_data(folder)
    for picture in list(folder.rglob("*.png")):
        with Image.open(picture) as image:
            write_mask(picture.with_name(picture.stem + ".loss.mask.png"), image.size)
    masked = write_manifests(folder)

    def run(name, data, weight):
        config = tiny_config(tmp_path / name, data, run={"max_steps": 3}, loss={"subject_weight": weight})
        trainer = make_trainer(config)
        trainer.train()
        return trainer, losses(tmp_path / name)

    _, plain = run("plain", manifests, 1.0)
    unmasked_weighted, weighted_plain = run("plain_weighted", manifests, 3.0)
    masked_unweighted, masked_plain = run("masked_unweighted", masked, 1.0)
    assert plain == weighted_plain == masked_plain
    assert not unmasked_weighted.dataset.loss_masks and not masked_unweighted.dataset.loss_masks

    trainer, weighted = run("masked_weighted", masked, 3.0)
    assert trainer.dataset.loss_masks and weighted != plain
    (_, ((items, keys),)) = next(trainer.steps(None))
    batch = encode_items(trainer.base, items, None)
    assert batch.loss_mask.shape == (2, 64, 64) and torch.equal(batch.loss_mask[:, :, :32], torch.ones(2, 64, 32))
    with torch.no_grad():
        left = trainer.loss(batch, keys).item()
        right = trainer.loss(dataclasses.replace(batch, loss_mask=batch.loss_mask.flip(-1)), keys).item()
        uniform = trainer.loss(dataclasses.replace(batch, loss_mask=None), keys).item()
    assert left + right == pytest.approx(2 * uniform, rel=1e-5) and abs(left - uniform) > 1e-3 * uniform
    with safe_open(str(trainer.export()), "pt") as exported:  # the tiny base's config is not a shipped one
        facts = json.loads(exported.metadata()["training"])
    assert facts["subject_weight"] == 3.0 and facts["loss_masks"] == 16

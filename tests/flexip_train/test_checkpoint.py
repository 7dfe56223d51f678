import dataclasses
import importlib.util
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from flexip_core import TINY, FlexIP
from flexip_train.checkpoint import (FORMAT_VERSION, CheckpointError, DamagedCheckpointError,
                                     latest_checkpoint, load_checkpoint, save_checkpoint)
from flexip_train.rng import capture_rng_state, restore_rng_state

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WRITER = HERE / "checkpoint_writer.py"


# --- A small FlexIP training setup whose every part can show a difference ---

def random_flexip(seed):
    """Every parameter random (norms and zero-initialised layers too), so a swap or a skip shows."""
    torch.manual_seed(seed)
    model = FlexIP(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def make_optimizer(model, amsgrad):
    # Two groups with different hyperparameters, asymmetric betas: a group swap or a lost float shows.
    gate = list(model.gate.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("gate.")]
    return torch.optim.AdamW([{"params": rest}, {"params": gate, "lr": 3e-3, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.8, 0.95), weight_decay=0.02, amsgrad=amsgrad)


def make_scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))


def batches(seed, count):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, TINY.clip.dim, generator=g), torch.randn(2, 5, TINY.dino.dim, generator=g),
             torch.randn(2, 3, TINY.text_dim, generator=g), torch.tensor([False, True])) for _ in range(count)]


def train(model, optimizer, scheduler, data):
    """Real FlexIP steps. The projections take no part, so their optimizer state stays missing."""
    for clip, dino, text, is_video in data:
        gamma = model.gate(is_video)
        p = model.preservation(clip, dino).square().mean((1, 2))
        s = model.personalization(text, clip).square().mean((1, 2))
        loss = (gamma * p + (1 - gamma) * s).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def assert_identical(a, b, where="state"):
    """Same structure, same Python types (tuple is not list), tensors bit-identical with dtype."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), f"{where}: values differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}.{i}")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def small_save(run_dir, step, keep_last=3, extra=None):
    model = nn.Linear(3, 2)
    return save_checkpoint(run_dir, step, model, None, None, {"step": step}, [], {}, extra, keep_last)


def names(run_dir):
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir())


# --- Exactness ---

@pytest.mark.parametrize("amsgrad", [False, True])
def test_round_trip_is_bit_exact_and_training_continues_identically(tmp_path, amsgrad):
    model = random_flexip(0)
    optimizer = make_optimizer(model, amsgrad)
    scheduler = make_scheduler(optimizer)
    train(model, optimizer, scheduler, batches(1, 3))
    missing = [n for n, p in model.named_parameters() if p not in optimizer.state]
    assert missing and all(n.startswith("projections.") for n in missing)  # state absent for some params
    data_state = {"epoch": 2, "sampler": {"order": (4, 0, 3), "position": 17},
                  "by_rank": {0: 17, 1: 18}, "generator": torch.Generator().manual_seed(9).get_state()}
    config = {"lr": 1e-4, "betas": (0.9, 0.999), "model": TINY.to_dict(), "cfg_dropout": 0.05}
    rng_states = [capture_rng_state(), capture_rng_state()]
    path = save_checkpoint(tmp_path, 3, model, optimizer, scheduler, data_state, rng_states, config,
                           extra={"note": "first run"})
    assert path == tmp_path / "checkpoints" / "step-00000003"

    fresh = random_flexip(1)
    fresh_optimizer = make_optimizer(fresh, amsgrad)
    fresh_scheduler = make_scheduler(fresh_optimizer)
    assert not torch.equal(fresh.gate.alpha_logit, model.gate.alpha_logit)
    resume = load_checkpoint(path, fresh, fresh_optimizer, fresh_scheduler)

    assert_identical(fresh.state_dict(), model.state_dict(), "model")
    assert_identical(fresh_optimizer.state_dict(), optimizer.state_dict(), "optimizer")
    assert_identical(fresh_scheduler.state_dict(), scheduler.state_dict(), "scheduler")
    assert fresh_optimizer.state_dict()["state"][0]["step"].dtype == torch.float32
    assert_identical((resume.step, resume.data_state, resume.rng_states, resume.config, resume.extra),
                     (3, data_state, rng_states, config, {"note": "first run"}), "resume")

    more = batches(2, 3)
    train(model, optimizer, scheduler, more)
    train(fresh, fresh_optimizer, fresh_scheduler, more)
    assert_identical(fresh.state_dict(), model.state_dict(), "model after 3 more steps")
    assert_identical(fresh_optimizer.state_dict(), optimizer.state_dict(), "optimizer after 3 more steps")
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_rng_states_restore_exactly_through_a_checkpoint(tmp_path):
    def draws():
        return (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(),
                np.random.randint(0, 1000, 4).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist())

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    # Leave a cached Gaussian in python and numpy: the float parts of their states must survive.
    random.gauss(0, 1)
    np.random.standard_normal()
    state = capture_rng_state()
    expected = draws()
    path = save_checkpoint(tmp_path, 1, nn.Linear(2, 2), None, None, {}, [state], {})

    random.seed(30)  # a new process starts from other states
    np.random.seed(40)
    torch.manual_seed(50)
    assert draws() != expected
    resume = load_checkpoint(path, nn.Linear(2, 2))
    restore_rng_state(resume.rng_states[0])
    assert draws() == expected


# --- The checkpoints folder ---

def test_keep_last_prunes_the_oldest_and_never_the_one_just_written(tmp_path):
    for step in range(1, 6):
        small_save(tmp_path / "a", step, keep_last=3)
    assert names(tmp_path / "a") == ["step-00000003", "step-00000004", "step-00000005"]

    with pytest.warns(UserWarning, match="later steps"):
        small_save(tmp_path / "a", 2, keep_last=3)
    assert names(tmp_path / "a") == ["step-00000002", "step-00000004", "step-00000005"]

    small_save(tmp_path / "a", 5, keep_last=3, extra={"saved": "again"})  # the same step replaced
    assert names(tmp_path / "a") == ["step-00000002", "step-00000004", "step-00000005"]
    assert load_checkpoint(tmp_path / "a/checkpoints/step-00000005", nn.Linear(3, 2)).extra == {"saved": "again"}

    for step in range(1, 5):
        small_save(tmp_path / "b", step, keep_last=None)
    assert len(names(tmp_path / "b")) == 4
    with pytest.raises(ValueError, match="keep_last"):
        small_save(tmp_path / "b", 9, keep_last=0)
    with pytest.raises(TypeError, match="one capture_rng_state\\(\\) per rank"):
        save_checkpoint(tmp_path / "b", 9, nn.Linear(3, 2), None, None, {}, capture_rng_state(), {})
    assert len(names(tmp_path / "b")) == 4


def test_leftovers_of_killed_writers_are_ignored_then_removed(tmp_path):
    for step in (1, 2):
        small_save(tmp_path, step)
    folder = tmp_path / "checkpoints"
    for leftover in (".step-00000009.tmp-4242", ".step-00000001.deleting-77"):
        (folder / leftover).mkdir()
        (folder / leftover / "model.safetensors").write_bytes(b"half a file")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path) == folder / "step-00000002"
    small_save(tmp_path, 3)
    assert names(tmp_path) == ["step-00000001", "step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path / "nothing here") is None


def _load_writer():
    spec = importlib.util.spec_from_file_location("checkpoint_writer", WRITER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kill_during_step_2(run_dir, megabytes):
    """Start the writer, SIGKILL it once step 2's model file is being written in the temporary
    folder. True if the kill landed mid-write (the temporary folder is there, step 2 is not)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(WRITER), str(run_dir), str(megabytes)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE)
    tmp = run_dir / "checkpoints" / f".step-00000002.tmp-{proc.pid}"
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if (tmp / "model.safetensors").exists():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None and not (tmp / "model.safetensors").exists():
            proc.kill()  # timed out: fail below rather than hang
        rc = proc.wait()
        stderr = proc.stderr.read().decode()
    assert (run_dir / "step1.sha256").exists(), f"the writer failed before step 2 (rc {rc}):\n{stderr}"
    landed = rc == -signal.SIGKILL and tmp.is_dir() and not (run_dir / "checkpoints" / "step-00000002").exists()
    return landed, tmp


def test_kill_9_during_a_write_leaves_the_previous_checkpoint_whole(tmp_path):
    writer = _load_writer()
    for megabytes in (32, 128, 512):  # a bigger state if the write beat the kill
        run_dir = tmp_path / f"run-{megabytes}"
        landed, tmp = _kill_during_step_2(run_dir, megabytes)
        if landed:
            break
    assert landed, "the writer finished step 2 before every kill"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        latest = latest_checkpoint(run_dir)
    assert latest == run_dir / "checkpoints" / "step-00000001"
    model = writer.big_model(megabytes)
    optimizer = writer.make_optimizer(model)
    resume = load_checkpoint(latest, model, optimizer)
    assert resume.step == 1 and resume.data_state == {"position": 1}
    assert writer.digest(model, optimizer) == (run_dir / "step1.sha256").read_text()

    save_checkpoint(run_dir, 2, model, optimizer, None, {"position": 2}, [capture_rng_state()], {})
    assert not tmp.exists()
    assert names(run_dir) == ["step-00000001", "step-00000002"]
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "step-00000002"


# --- Damage and validation ---

def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    for step in (1, 2, 3):
        small_save(tmp_path, step)
    folder = tmp_path / "checkpoints"
    model_file = folder / "step-00000003" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-5])
    with pytest.warns(UserWarning, match="model.safetensors has .* bytes"):
        assert latest_checkpoint(tmp_path) == folder / "step-00000002"
    with pytest.raises(DamagedCheckpointError, match="step-00000003: model.safetensors has .* bytes, .* truncated"):
        load_checkpoint(folder / "step-00000003", nn.Linear(3, 2))

    (folder / "step-00000002" / "meta.json").write_text('{"format": "flexip-tr')
    with pytest.warns(UserWarning) as caught:
        assert latest_checkpoint(tmp_path) == folder / "step-00000001"
    assert len(caught) == 2 and "meta.json is missing or unreadable" in str(caught[1].message)

    state = folder / "step-00000001" / "state.json"
    state.write_text("x" * state.stat().st_size)  # same size: only the parse can tell
    with pytest.raises(DamagedCheckpointError, match="state.json is damaged"):
        load_checkpoint(folder / "step-00000001", nn.Linear(3, 2))

    (folder / "step-00000001" / "optimizer.safetensors").write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="every checkpoint in it is damaged"):
        latest_checkpoint(tmp_path)


def test_a_newer_or_foreign_format_is_refused_not_skipped(tmp_path):
    for step in (1, 2):
        small_save(tmp_path, step)
    meta_file = tmp_path / "checkpoints" / "step-00000002" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    for attempt in (lambda: latest_checkpoint(tmp_path), lambda: load_checkpoint(meta_file.parent, nn.Linear(3, 2))):
        with pytest.raises(CheckpointError, match=f"newer flexip_train \\(checkpoint format {FORMAT_VERSION + 1}"):
            attempt()
    meta_file.write_text(json.dumps({**meta, "format": "accelerate"}))
    with pytest.raises(CheckpointError, match="does not describe a FlexIP training checkpoint"):
        latest_checkpoint(tmp_path)


def test_load_is_strict_and_names_the_file(tmp_path):
    model = random_flexip(0)
    optimizer = make_optimizer(model, amsgrad=False)
    path = save_checkpoint(tmp_path, 1, model, optimizer, None, {}, [], {})

    other = FlexIP(dataclasses.replace(TINY, num_latent_queries=5))
    with pytest.raises(CheckpointError, match=r"step-00000001/model.safetensors: it does not match the model:\n"
                                              r"  1 key\(s\) of another shape or dtype: preservation.latent_queries "
                                              r"\(file \(1, 4, 32\) torch.float32, model \(1, 5, 32\) torch.float32\)"):
        load_checkpoint(path, other)
    wrapped = nn.ModuleDict({"flexip": random_flexip(1)})  # e.g. a module that was not unwrapped
    n = len(model.state_dict())
    with pytest.raises(CheckpointError, match=rf"(?s){n} key\(s\) missing from the file: flexip.preservation.latent_"
                                              rf"queries, [^\n]*\n  {n} key\(s\) in the file but not in the model: "
                                              r"gate.alpha_logit, .*pass the unwrapped module"):
        load_checkpoint(path, wrapped)
    with pytest.raises(CheckpointError, match=rf"{n} key\(s\) of another shape or dtype: preservation.latent_queries "
                                              r"\(file \(1, 4, 32\) torch.float32, model \(1, 4, 32\) torch.float64\)"):
        load_checkpoint(path, random_flexip(1).double())
    with pytest.raises(CheckpointError, match="optimizer state is from AdamW, the given optimizer is a SGD"):
        load_checkpoint(path, random_flexip(1), torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = make_scheduler(make_optimizer(random_flexip(1), amsgrad=False))
    with pytest.raises(CheckpointError, match="saved without a scheduler"):
        load_checkpoint(path, random_flexip(1), scheduler=scheduler)


def test_values_that_would_need_pickle_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="data_state.sampler: a set cannot be stored without pickling"):
        save_checkpoint(tmp_path, 1, nn.Linear(2, 2), None, None, {"sampler": {1, 2}}, [], {})
    with pytest.raises(TypeError, match="config.scale: a tensor cannot go into meta.json"):
        save_checkpoint(tmp_path, 1, nn.Linear(2, 2), None, None, {}, [], {"scale": torch.ones(1)})
    assert not (tmp_path / "checkpoints").exists()


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for module, name in ((pickle, "dump"), (pickle, "dumps"), (pickle, "load"), (pickle, "loads"),
                         (torch, "save"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    model = random_flexip(0)
    optimizer = make_optimizer(model, amsgrad=True)
    scheduler = make_scheduler(optimizer)
    train(model, optimizer, scheduler, batches(1, 2))
    path = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {"epoch": 0}, [capture_rng_state()], {})
    fresh = random_flexip(1)
    fresh_optimizer = make_optimizer(fresh, amsgrad=True)
    load_checkpoint(path, fresh, fresh_optimizer, make_scheduler(fresh_optimizer))

    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "optimizer.safetensors",
                                                      "state.json"]
    for name in ("meta.json", "state.json"):
        json.loads((path / name).read_text())
    for name in ("model.safetensors", "optimizer.safetensors"):
        with safe_open(path / name, "pt") as f:
            assert len(list(f.keys())) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_round_trip_on_cuda_with_cuda_rng(tmp_path):
    model = random_flexip(0).cuda()
    optimizer = make_optimizer(model, amsgrad=False)
    scheduler = make_scheduler(optimizer)
    data = [tuple(t.cuda() for t in batch) for batch in batches(1, 2)]
    train(model, optimizer, scheduler, data)
    torch.cuda.manual_seed_all(7)
    state = capture_rng_state()
    expected = torch.rand(4, device="cuda").tolist()
    path = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {}, [state], {})

    fresh = random_flexip(1).cuda()
    fresh_optimizer = make_optimizer(fresh, amsgrad=False)
    resume = load_checkpoint(path, fresh, fresh_optimizer, make_scheduler(fresh_optimizer))
    assert_identical(fresh.state_dict(), model.state_dict(), "model")
    assert_identical(fresh_optimizer.state_dict(), optimizer.state_dict(), "optimizer")
    restore_rng_state(resume.rng_states[0])
    assert torch.rand(4, device="cuda").tolist() == expected

"""Checkpoint writer for test_checkpoint's kill -9 test, run as its own process.

    python checkpoint_writer.py RUN_DIR MEGABYTES

Saves step 1 in full, records a digest of it in RUN_DIR/step1.sha256, takes one more optimizer
step and saves step 2: the test kills this process while step 2 is being written.
"""
import hashlib
import sys
from pathlib import Path

import torch
from torch import nn

from flexip_train.checkpoint import save_checkpoint
from flexip_train.rng import capture_rng_state

WIDTH = 1024  # one layer: 1024 x 1024 float32 weights + bias, about 4 MiB


def big_model(megabytes):
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(max(1, megabytes // 4))])


def make_optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def digest(model, optimizer):
    """sha256 over every model and optimizer tensor, in state_dict order."""
    h = hashlib.sha256()
    tensors = list(model.state_dict().values())
    for entry in optimizer.state_dict()["state"].values():
        tensors += [entry[k] for k in sorted(entry)]
    for t in tensors:
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train_step(model, optimizer):
    loss = model(torch.randn(4, WIDTH)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main(run_dir, megabytes):
    torch.manual_seed(0)
    model = big_model(megabytes)
    optimizer = make_optimizer(model)
    for step in (1, 2):
        train_step(model, optimizer)
        save_checkpoint(run_dir, step, model, optimizer, None, {"position": step}, [capture_rng_state()],
                        {"megabytes": megabytes}, keep_last=None)
        if step == 1:
            (Path(run_dir) / "step1.sha256").write_text(digest(model, optimizer))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

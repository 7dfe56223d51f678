"""Random number generator states as plain JSON, for exact resume without pickling.

One process's state: python's `random`, numpy's global RandomState, torch's CPU generator and
every CUDA device's generator. Under accelerate each rank captures its own and the loop gathers
them; a checkpoint stores the list and each rank restores its own entry.
"""
import random
import warnings

import numpy as np
import torch


def capture_rng_state() -> dict:
    """This process's generator states as a JSON-serialisable dict."""
    version, mt_state, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {
        "python": [version, list(mt_state), gauss_next],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state().tolist(),
        "cuda": cuda,
    }


def restore_rng_state(state: dict) -> None:
    """Set every generator to what capture_rng_state() returned."""
    version, mt_state, gauss_next = state["python"]
    random.setstate((version, tuple(mt_state), gauss_next))
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    saved_cuda = state["cuda"]
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(saved_cuda) != present:
        # A run resumed on other hardware cannot replay the same CUDA draws; say so, go on.
        warnings.warn(f"the RNG state holds {len(saved_cuda)} CUDA generator(s), this process sees "
                      f"{present}: restoring the first {min(len(saved_cuda), present)}; CUDA random "
                      "draws will differ from the uninterrupted run.", stacklevel=2)
    for device, cuda_state in enumerate(saved_cuda[:present]):
        torch.cuda.set_rng_state(torch.tensor(cuda_state, dtype=torch.uint8), device)

"""FlexIP under ComfyUI's VRAM modes, as far as a CPU can show them.

--novram: load_models_gpu loads every model partially (lowvram_model_memory 0.1), force_full_load or not, and
a partial load moves only comfy.ops layers, so FlexIP's plain torch layers stay on the offload device. The
nodes must then run the module there, not on its load device. A CPU-only machine has no second device, so
the load device here is torch's 'meta' device: the test checks where model management leaves the weights,
never computes on it. Freeing other models' memory for it (free_memory, which asks the GPU) is left out.
"""
import torch

import random_models


def test_under_novram_the_module_runs_where_model_management_leaves_its_weights(comfy, pack, monkeypatch):
    import comfy.model_management as mm
    from flexip_core.weights import load_flexip
    meta = torch.device("meta")
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "get_torch_device", lambda: meta)
    monkeypatch.setattr(mm, "free_memory", lambda *args, **kwargs: [])
    real_free = mm.get_free_memory
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: (
        (2**40, 2**40) if torch_free_too else 2**40) if dev == meta else real_free(dev, torch_free_too))
    flexip = pack.nodes.managed.ManagedFlexIP(load_flexip(random_models.flexip_sd15()))
    assert flexip.patcher.load_device == meta
    try:
        device = flexip.load()
        weights = {p.device for p in flexip.module.parameters()}
        assert weights == {torch.device("cpu")}, "model management moved FlexIP's plain layers under --novram"
        assert device == torch.device("cpu"), f"the nodes would run the module on {device}, its weights are on the CPU"
    finally:
        loaded = [m for m in mm.current_loaded_models if m.model is flexip.patcher]
        for m in loaded:
            mm.current_loaded_models.remove(m)
        flexip.patcher.detach()

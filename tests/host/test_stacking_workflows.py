"""Order-free stacking through the real server: another pack's attn2 patch on the same layers as
FlexIP (tests/host/test_only_nodes: the layer's attention times a scale) runs inside FlexIP's
patch whichever of the two the graph applies first, under two-part keys (as ComfyUI_IPAdapter_plus
registers SD1.5 patches) and three-part keys (FlexIP's own)."""
import hashlib
import io
import json
import re

import pytest
from PIL import Image

OTHER = "90"  # the other pack's node in the graph
SD15_LAYERS = [f"input_{i}_0" for i in (1, 2, 4, 5, 7, 8)] + ["middle_0_0"] + [f"output_{i}_0" for i in range(3, 12)]


def digest(client, prompt):
    """Hash of the decoded pixels of the prompt's one image (the PNG's metadata differs between runs)."""
    (png,) = client.images(client.run(prompt))
    return hashlib.sha256(Image.open(io.BytesIO(png)).tobytes()).hexdigest()


def stacked(prompt, scale, key_parts, order):
    """The basic workflow with the test-only patch before FlexIP ("other_first") or after it."""
    prompt = json.loads(json.dumps(prompt))
    if order == "other_first":
        prompt[OTHER] = {"class_type": "FlexIPTestAttn2Patch",
                         "inputs": {"model": ["1", 0], "scale": scale, "key_parts": key_parts}}
        prompt["11"]["inputs"]["model"] = [OTHER, 0]
    else:
        prompt[OTHER] = {"class_type": "FlexIPTestAttn2Patch",
                         "inputs": {"model": ["11", 0], "scale": scale, "key_parts": key_parts}}
        prompt["13"]["inputs"]["model"] = [OTHER, 0]
    return prompt


def calls(log, pattern):
    """{layer: sorted chunk kinds it was called with} from the DEBUG lines matching `pattern`."""
    found = {}
    for layer, kinds in re.findall(pattern + r" (\w+) chunks \[([\d, ]+)\]", log):
        found.setdefault(layer, []).extend(int(k) for k in kinds.split(","))
    return {layer: sorted(kinds) for layer, kinds in found.items()}


@pytest.mark.parametrize("key_parts", [2, 3])
def test_another_packs_patch_runs_inside_flexip_in_either_order(server, client, test_prompt, key_parts):
    prompt = test_prompt(gamma=0.2, seed=5)
    steps = prompt["13"]["inputs"]["steps"]
    every_step = [0] * steps + [1] * steps  # each layer, every step, cond and uncond
    flexip_alone = digest(client, prompt)
    images = {}
    for order in ("other_first", "flexip_first"):
        start = len(server.log_text())
        images[order] = digest(client, stacked(prompt, 1.5, key_parts, order))
        log = server.log_text()[start:]
        other = calls(log, "test-only attn2")
        flexip = calls(log, "FlexIP attn2")
        assert sorted(other) == sorted(layer[:-2] for layer in SD15_LAYERS), f"{order}: the other patch was shadowed"
        assert all(kinds == every_step for kinds in other.values()), order
        assert sorted(flexip) == sorted(SD15_LAYERS), f"{order}: FlexIP's patch was replaced"
        assert all(kinds == every_step for kinds in flexip.values()), order
    # The same sum in both orders: the other patch in place of the layer's attention, plus FlexIP.
    assert images["other_first"] == images["flexip_first"]
    assert images["other_first"] != flexip_alone
    # At scale 1 the other patch is the layer's own attention: exactly FlexIP alone, in both orders.
    for order in ("other_first", "flexip_first"):
        assert digest(client, stacked(prompt, 1.0, key_parts, order)) == flexip_alone, order

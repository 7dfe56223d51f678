"""stack_patches: which patch each FlexIP layer runs in place of the layer's own attention, for every
order of FlexIP and another pack's patches in ComfyUI's attn2 table."""
import torch

from flexip_core import COND
from flexip_core.injection import attention_heads
from flexip_core.patch import GatedAttention, stack_patches

KEY = ("input", 1, 0)
HEADS = 2


def flexip_patch(wrapped=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    kv = lambda: {COND: (torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g))}  # noqa: E731
    return GatedAttention(KEY, kv(), kv(), 0.2, 0.7, lambda q, k, v, heads, attn_precision=None, transformer_options=None, **mask:
                          attention_heads(q, k, v, heads, **mask), wrapped=wrapped)


class Foreign:
    def __init__(self, offset):
        self.offset = offset

    def __call__(self, q, k, v, extra_options):
        return attention_heads(q, k, v, extra_options["n_heads"]) + self.offset


def call(patch):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 5, 8, generator=g) for _ in range(3))
    return patch(q, k, v, {"n_heads": HEADS, "cond_or_uncond": [COND], "sigmas": torch.ones(1)})


def test_a_two_part_patch_shadowed_by_flexip_runs_inside_it():
    flexip, foreign = flexip_patch(), Foreign(0.25)
    table = {KEY: flexip, KEY[:2]: foreign}
    stacked = stack_patches(table, {KEY: flexip})
    assert stacked[KEY].wrapped is foreign and stacked[KEY[:2]] is foreign
    assert table == {KEY: flexip, KEY[:2]: foreign} and flexip.wrapped is None, "the model's table was changed"
    assert torch.allclose(call(stacked[KEY]), call(flexip) + 0.25, atol=1e-6)
    assert stacked[KEY].terms is flexip.terms  # the copy reuses the K/V built at the first step


def test_a_three_part_patch_that_replaced_flexip_runs_inside_it():
    flexip, foreign = flexip_patch(), Foreign(-0.5)
    stacked = stack_patches({KEY: foreign}, {KEY: flexip})
    assert stacked[KEY].wrapped is foreign
    assert torch.allclose(call(stacked[KEY]), call(flexip) - 0.5, atol=1e-6)


def test_flexip_twice_wraps_the_other_patch_once_at_the_innermost_flexip():
    first = flexip_patch(seed=0)
    second = flexip_patch(wrapped=first, seed=3)
    foreign = Foreign(0.25)
    stacked = stack_patches({KEY: second, KEY[:2]: foreign}, {KEY: second})
    assert stacked[KEY].wrapped.wrapped is foreign
    assert torch.allclose(call(stacked[KEY]), call(second) + 0.25, atol=1e-6)


def test_nothing_changes_where_flexip_already_wraps_a_patch_or_was_removed():
    foreign, shadowed = Foreign(0.25), Foreign(1.0)
    flexip = flexip_patch(wrapped=foreign)  # applied after a three-part patch: ComfyUI never calls `shadowed`
    assert stack_patches({KEY: flexip, KEY[:2]: shadowed}, {KEY: flexip})[KEY] is flexip
    assert stack_patches({KEY[:2]: shadowed}, {KEY: flexip}) == {KEY[:2]: shadowed}
    assert stack_patches({KEY: flexip}, {KEY: flexip})[KEY] is flexip

"""The miniature's command line (benchmarks/nano/__main__.py): a size with its overrides."""
import dataclasses

from benchmarks.nano.__main__ import SIZES, sized


def test_sized_applies_only_the_overrides_given():
    full = SIZES["full"]
    assert sized("full") == full
    longer = sized("full", encoder_steps=3200)
    assert longer.encoder_steps == 3200 and dataclasses.replace(longer, encoder_steps=full.encoder_steps) == full
    weighted = sized("ci", subject_weight=1.0, encoder_steps=50)
    assert weighted.adapters == dataclasses.replace(SIZES["ci"].adapters, subject_weight=1.0)
    assert weighted.encoder_steps == 50 and weighted.base_steps == SIZES["ci"].base_steps
    both = sized("full", subject_weight=2.0, adapter_steps=4000)  # the adapters' steps, beside their other fields
    assert both.adapters == dataclasses.replace(full.adapters, steps=4000, subject_weight=2.0)
    assert dataclasses.replace(both, adapters=full.adapters) == full

"""A training variant's stamp settings (benchmarks/nano/train.py: Variant.settings)."""
import dataclasses

from benchmarks.nano.train import Variant
from benchmarks.nano.variants import VARIANTS


def test_settings_are_the_fields_set_away_from_their_defaults():
    gate = {"mode": "learned", "alpha": 0.9, "beta": 0.9}
    assert Variant("plain", gate, description="words").settings() == {"name": "plain", "gate": gate}
    both = VARIANTS["subject-recolour-both"]
    assert both.settings() == {"name": both.name, "gate": both.gate, "references": "subject", "recoloured_views": 0.5,
                               "recoloured_gamma": 0.0, "image_gamma": 1.0, "view_branches": "both"}
    # a gamma of 0 is a setting, not an unset field
    assert Variant("zero", gate, recoloured_gamma=0.0).settings()["recoloured_gamma"] == 0.0


def test_every_variant_has_its_own_settings_and_they_rebuild_it_exactly():
    settings = [v.settings() for v in VARIANTS.values()]
    assert len({repr(s) for s in settings}) == len(VARIANTS)
    for variant, own in zip(VARIANTS.values(), settings):
        assert dataclasses.replace(Variant(**own), description=variant.description) == variant

"""Recolour cases: prompts that contradict the reference, the conflict FlexIP's gamma is claimed to trade.

The scene cases (world.evaluation_cases) ask for another scene and name only the subject's shape.
Once the adapters stop copying the reference's layout, nothing in those prompts conflicts with the
reference, so gamma has nothing to trade on the prompt's side. A recolour case is the same subject,
reference and asked-for scene, with a prompt that also names a body colour other than the
reference's ("a small red circle at the right on sand" for a blue circle): DreamBench++'s
property-change prompts in the miniature.

Scored by scoring.py like the scene cases, with the asked colour as the prompt's: identity is the
attributes no prompt names (pattern, mark); prompt is shape, the asked colour, background,
position and size; colour copying (scoring's copied["colour"]) is the reference's colour drawn
where another was asked.
"""
from dataclasses import dataclass

import numpy as np

from . import world

COLOUR = world.SUBJECT_ATTRIBUTES.index("colour")


@dataclass(frozen=True)
class RecolourCase(world.Case):
    colour: int  # the asked body colour, an index into world.COLOURS; never the reference's own

    @property
    def prompt_subject(self):
        """The subject the prompt asks for: the reference's, in the asked colour."""
        reference = world.Subject.from_id(self.subject)
        return world.Subject(reference.shape, world.VALUES["colour"][self.colour], reference.pattern, reference.mark).id

    @property
    def prompt(self):
        return world.caption(world.Subject.from_id(self.prompt_subject), world.Scene.from_id(self.prompt_scene))


def recolour_cases(cases, seed=2):
    """Each scene case with a prompt that asks for another body colour, drawn uniformly from the others."""
    rng = np.random.default_rng(seed)
    table = world.attribute_table("subject")
    out = []
    for case in cases:
        own = int(table[case.subject, COLOUR])
        others = [c for c in range(len(world.COLOURS)) if c != own]
        out.append(RecolourCase(case.subject, case.reference_scene, case.prompt_scene, others[rng.integers(len(others))]))
    return out

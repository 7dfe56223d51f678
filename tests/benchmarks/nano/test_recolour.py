"""Recolour cases (benchmarks/nano/recolour.py): prompts that ask for another body colour, scored exactly."""
import pytest
import torch

from benchmarks.nano import recolour, scoring, world


@pytest.fixture(scope="module")
def decoder():
    return scoring.PlacementDecoder()


def test_every_case_asks_for_another_colour_and_keeps_the_rest():
    cases = world.evaluation_cases(world.split()[1], 1)
    edited = recolour.recolour_cases(cases)
    assert [(c.subject, c.reference_scene, c.prompt_scene) for c in edited] == \
        [(c.subject, c.reference_scene, c.prompt_scene) for c in cases]
    asked = set()
    for case in edited:
        reference, wanted = world.Subject.from_id(case.subject), world.Subject.from_id(case.prompt_subject)
        assert wanted.colour != reference.colour
        assert (wanted.shape, wanted.pattern, wanted.mark) == (reference.shape, reference.pattern, reference.mark)
        scene = world.Scene.from_id(case.prompt_scene)
        assert case.prompt == f"a {scene.size} {wanted.colour} {wanted.shape} at the {scene.position} on {scene.background}"
        assert scoring.named_in_prompt(case) == {"shape", "colour", "background", "position", "size"}
        asked.add(wanted.colour)
    assert asked == set(world.COLOURS)  # 48 draws reach every colour
    assert recolour.recolour_cases(cases) == edited  # seeded


@pytest.mark.parametrize("drawn, identity, prompt, colour_copy", [
    ("asked", 1.0, 1.0, 0.0),       # the prompt's subject in the prompt's scene
    ("reference", 1.0, 0.8, 1.0),   # the reference's colour kept: 4 of the 5 named attributes
    ("other", 0.5, 0.8, 0.0),       # a third colour and another mark: neither
])
def test_scores_on_clean_renders(decoder, drawn, identity, prompt, colour_copy):
    """Identity is pattern and mark only; the asked colour counts for the prompt; colour copying is the
    reference's colour drawn where another was asked. Exact on the world's renders."""
    case = recolour.recolour_cases(world.evaluation_cases([world.split()[1][3]], 1))[0]
    reference, wanted = world.Subject.from_id(case.subject), world.Subject.from_id(case.prompt_subject)
    third = next(c for c in world.COLOURS if c not in (reference.colour, wanted.colour))
    mark = next(m for m in world.MARKS if m != reference.mark)
    subject = {"asked": wanted.id, "reference": reference.id,
               "other": world.Subject(reference.shape, third, reference.pattern, mark).id}[drawn]
    picture = world.Renderer().render([subject], [case.prompt_scene])
    found = scoring.score(decoder(picture), [case], set(scoring.ATTRIBUTES))
    assert found["identity"].tolist() == [identity]
    assert found["prompt"].tolist() == [pytest.approx(prompt)]
    assert found["copied"]["colour"].tolist() == [colour_copy]
    assert found["layout_copy"].tolist() == [0.0]


def test_scene_cases_have_no_colour_axis(decoder):
    case = world.evaluation_cases([world.split()[1][3]], 1)[0]
    found = scoring.score(decoder(world.Renderer().render([case.subject], [case.prompt_scene])), [case],
                          set(scoring.ATTRIBUTES))
    assert set(found["copied"]) == set(scoring.LAYOUT)
    assert torch.equal(found["identity"], torch.tensor([1.0]))

"""The claim's scores (benchmarks/nano/scoring.py): exact on the world's own pictures, and
placement-free for identity."""
import numpy as np
import pytest
import torch

from benchmarks.nano import scoring, world


@pytest.fixture(scope="module")
def decoder():
    return scoring.PlacementDecoder()


def paint(subject, background, centre_x, radius):
    """A picture of a subject at any placement, painted the way the world paints (from the region maps)."""
    s = world.Subject.from_id(subject)
    maps = scoring._region_maps(centre_x, radius)[world.SHAPES.index(s.shape), world.PATTERNS.index(s.pattern)]
    colours = torch.stack([world._palette(world.BACKGROUNDS)[world.VALUES["background"].index(background)],
                           world._palette(world.COLOURS)[world.VALUES["colour"].index(s.colour)],
                           world._palette(world.MARKS)[world.VALUES["mark"].index(s.mark)]])
    return (maps.T @ colours).reshape(world.SIZE, world.SIZE, 3)


def test_decoder_is_exact_on_clean_renders(decoder):
    g = torch.Generator().manual_seed(1)
    subjects = torch.randint(world.NUM_SUBJECTS, (300,), generator=g)
    scenes = torch.randint(world.NUM_SCENES, (300,), generator=g)
    found = decoder(world.Renderer().render(subjects, scenes))
    truth = scoring.true_attributes([world.Case(int(a), int(b), int(b)) for a, b in zip(subjects, scenes)])
    for attribute in scoring.ATTRIBUTES:
        assert torch.equal(found[attribute], truth[attribute]), attribute


def test_decoder_finds_subjects_between_the_worlds_placements(decoder):
    """A subject drawn at x 12, radius 6.5 (no world scene has it) is decoded as itself, at that
    placement, and its position and size as the nearest world values (left: 9, small: 5)."""
    subject = world.Subject("triangle", "orange", "spot", "cyan").id
    found = decoder(paint(subject, "stone", 12.0, 6.5)[None])
    assert float(found["x"][0]) == 12.0 and float(found["radius"][0]) == 6.5
    for attribute in world.SUBJECT_ATTRIBUTES:
        assert int(found[attribute][0]) == world.VALUES[attribute].index(getattr(world.Subject.from_id(subject), attribute))
    assert world.VALUES["position"][int(found["position"][0])] == "left"
    assert world.VALUES["size"][int(found["size"][0])] == "small"


def test_prompt_names_the_shape_and_the_scene():
    case = world.evaluation_cases([5], 1)[0]
    assert scoring.named_in_prompt(case) == {"shape", "background", "position", "size"}


def test_identity_does_not_pay_for_layout_and_layout_copying_is_its_own_axis(decoder):
    """The right subject drawn at the reference's placement: identity 1 (colour, pattern and mark
    kept), layout copying 1, prompt 1/2 (shape and background as asked, position and size not)."""
    subject = world.Subject("square", "blue", "half", "white")
    reference, asked = world.Scene("sand", "left", "small"), world.Scene("night", "right", "large")
    case = world.Case(subject.id, reference.id, asked.id)
    picture = paint(subject.id, "night", world.POSITIONS["left"], world.SIZES["small"])
    found = scoring.score(decoder(picture[None]), [case], set(scoring.ATTRIBUTES))
    assert found["identity"].tolist() == [1.0]
    assert found["layout_copy"].tolist() == [1.0]
    assert found["prompt"].tolist() == [0.5]
    # the other colour and mark, as asked: identity 1/3 (the pattern), prompt 1, no layout copied
    other = world.Subject("square", "red", "half", "black")
    picture = paint(other.id, "night", world.POSITIONS["right"], world.SIZES["large"])
    found = scoring.score(decoder(picture[None]), [case], set(scoring.ATTRIBUTES))
    assert found["identity"].tolist() == pytest.approx([1 / 3]) and found["prompt"].tolist() == [1.0]
    assert found["layout_copy"].tolist() == [0.0]


def test_attributes_the_base_cannot_draw_are_not_counted(decoder):
    subject = world.Subject("circle", "green", "stripes", "pink")
    case = world.Case(subject.id, world.Scene("sand", "left", "small").id, world.Scene("sky", "centre", "large").id)
    wrong_pattern = world.Subject("circle", "green", "bars", "pink")
    picture = paint(wrong_pattern.id, "sky", world.POSITIONS["centre"], world.SIZES["large"])
    counted = scoring.counted({"shape": 0.9, "colour": 0.8, "pattern": 0.3, "mark": 0.75, "background": 1.0,
                               "position": 1.0, "size": 1.0})
    assert "pattern" not in counted and "mark" in counted
    assert scoring.score(decoder(picture[None]), [case], counted)["identity"].tolist() == [1.0]
    assert scoring.score(decoder(picture[None]), [case], set(scoring.ATTRIBUTES))["identity"].tolist() == \
        pytest.approx([2 / 3])


def test_standard_error_is_over_cases():
    per_case = np.array([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert scoring.standard_error(per_case) == pytest.approx([np.std([0, 1, 1, 0], ddof=1) / 2, 0.0])

"""The miniature's world (benchmarks/nano/world.py): ids, the held-out split, rendering, words."""
import numpy as np
import pytest
import torch

from benchmarks.nano import world


@pytest.fixture(scope="module")
def renderer():
    return world.Renderer()


def test_ids_round_trip():
    for i in (0, 1, 77, world.NUM_SUBJECTS - 1):
        assert world.Subject.from_id(i).id == i
    for i in (0, 5, world.NUM_SCENES - 1):
        assert world.Scene.from_id(i).id == i
    assert world.NUM_SUBJECTS == 384 and world.NUM_SCENES == 36


def test_split_is_fixed_disjoint_and_covers_every_value():
    train, held = world.split()
    assert (train, held) == world.split()
    assert len(held) == world.HELD_OUT and not set(train) & set(held)
    assert sorted(train + held) == list(range(world.NUM_SUBJECTS))
    for attribute in world.SUBJECT_ATTRIBUTES:
        assert {getattr(world.Subject.from_id(i), attribute) for i in held} == set(world.VALUES[attribute])


def test_render_paints_the_palette_where_the_masks_are_whole(renderer):
    subject = world.Subject("square", "green", "bars", "pink")
    scene = world.Scene("night", "right", "large")
    picture = renderer.render([subject.id], [scene.id])[0]
    assert picture.shape == (32, 32, 3) and picture.min() >= 0 and picture.max() <= 1
    colours = {tuple(np.round(p * 255).astype(int)) for p in picture.reshape(-1, 3).numpy()}
    for palette, name in ((world.BACKGROUNDS, "night"), (world.COLOURS, "green"), (world.MARKS, "pink")):
        assert palette[name] in colours
    assert picture[16, 2].tolist() == pytest.approx([c / 255 for c in world.BACKGROUNDS["night"]])  # left: background
    # bars: the vertical band at u in [-0.5, 0) is the mark colour, u in [0, 0.5) the body's
    assert picture[16, 21].tolist() == pytest.approx([c / 255 for c in world.MARKS["pink"]])
    assert picture[16, 25].tolist() == pytest.approx([c / 255 for c in world.COLOURS["green"]])


def test_subject_mask_is_where_the_picture_is_not_background(renderer):
    """The mask is the subject's coverage: 0 exactly where the picture shows the background's colour,
    fractional on the anti-aliased edge, 1 inside."""
    subjects = [world.Subject("triangle", "red", "spot", "white").id,
                world.Subject("circle", "blue", "half", "cyan").id]
    scenes = [world.Scene("grass", "left", "small").id, world.Scene("snow", "centre", "large").id]
    pictures, masks = renderer.render(subjects, scenes), renderer.subject_mask(subjects, scenes)
    assert masks.shape == (2, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    for picture, mask, background in zip(pictures, masks, ("grass", "snow")):
        colour = torch.tensor(world.BACKGROUNDS[background]) / 255
        is_background = (picture - colour).abs().amax(-1) < 1e-6
        assert torch.equal(is_background, mask == 0) and (mask == 1).any() and ((mask > 0) & (mask < 1)).any()
    assert (masks[1] > 0).sum() > 2 * (masks[0] > 0).sum()  # a large circle against a small triangle


def test_captions_never_name_the_reference_only_attributes():
    hidden = set(world.PATTERNS) | set(world.MARKS)
    for i in range(0, world.NUM_SUBJECTS, 7):
        subject = world.Subject.from_id(i)
        for c in range(0, world.NUM_SCENES, 5):
            scene = world.Scene.from_id(c)
            for text in (world.caption(subject, scene), world.caption(subject, scene, False), world.prompt(subject, scene)):
                assert not hidden & set(text.split()) and set(text.split()) <= set(world.VOCABULARY)
            assert subject.colour in world.caption(subject, scene) and subject.colour not in world.prompt(subject, scene)


def test_evaluation_prompts_ask_for_another_scene_entirely():
    _, held = world.split()
    cases = world.evaluation_cases(held, 2)
    assert len(cases) == 2 * len(held) and cases == world.evaluation_cases(held, 2)
    for case in cases:
        a, b = world.Scene.from_id(case.reference_scene), world.Scene.from_id(case.prompt_scene)
        assert a.background != b.background and a.position != b.position and a.size != b.size
        assert world.Subject.from_id(case.subject).shape in case.prompt

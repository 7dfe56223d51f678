"""The claim's scores (benchmarks/nano/scoring.py) and the report's numbers built on them: exact on
the world's own pictures, placement-free for identity, and the targets' arithmetic."""
import numpy as np
import pytest
import torch

from benchmarks.nano import report, scoring, world


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _method(identity, prompt, se=0.01):
    values = [0.0, 0.5, 1.0][:len(identity)]
    return {"values": values, "identity": identity, "prompt": prompt, "identity_se": [se] * len(identity),
            "prompt_se": [se] * len(prompt)}


def test_front_cover_within_one_standard_error():
    baseline = _method([0.3, 0.6, 0.55], [1.0, 0.9, 0.8])  # (0.55, 0.8) is beaten by (0.6, 0.9): not on its front
    assert report.baseline_front(baseline) == [0, 1]
    # FlexIP reaches identity 0.6 - 0.014 at prompt 0.9: within one s.e. of the difference (0.01 * sqrt 2)
    assert report.front_covered(_method([0.3, 0.586, 0.7], [1.0, 0.9, 0.5]), baseline) == {0: True, 1: True}
    assert report.front_covered(_method([0.3, 0.58, 0.7], [1.0, 0.9, 0.5]), baseline) == {0: True, 1: False}


def test_reversals_beyond_one_standard_error():
    rising = np.array([[0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 1.0], [0.5, 0.25, 0.5, 0.75]])  # [values, cases]
    rows = report._reversals([0.0, 0.5, 1.0], rising, sign=1)
    step = rising[2] - rising[1]
    assert rows == [[0.5, 1.0, pytest.approx(step.mean()), pytest.approx(step.std(ddof=1) / 2)]]
    assert report._reversals([0.0, 0.5, 1.0], rising, sign=-1)[0][:2] == [0.0, 0.5]


def test_report_on_rendered_sweeps(tmp_path):
    """The whole report on pictures the world renders: a FlexIP sweep that shows the subject's true
    colour and mark from gamma 0.5 on and the reference's layout at gamma 1, a baseline that never
    shows the subject, and the base model; every number follows from the pictures."""
    from benchmarks.nano.__main__ import SIZES
    cases = world.evaluation_cases(world.split()[1][:6], 1)
    renderer = world.Renderer()

    def pictures(subjects, scenes):
        return (renderer.render(subjects, scenes) * 255).round().to(torch.uint8)

    wrong = [world.Subject.from_id(c.subject) for c in cases]
    wrong = [world.Subject(s.shape, "red" if s.colour != "red" else "blue", s.pattern,
                           "black" if s.mark != "black" else "white").id for s in wrong]
    right = [c.subject for c in cases]
    asked = [c.prompt_scene for c in cases]
    copied = [world.Scene(world.Scene.from_id(c.prompt_scene).background, world.Scene.from_id(c.reference_scene).position,
                          world.Scene.from_id(c.reference_scene).size).id for c in cases]
    flexip = torch.stack([pictures(wrong, asked), pictures(right, asked), pictures(right, copied)])[None]
    baseline = torch.stack([pictures(wrong, asked)] * 3)[None]
    results = {"base": {"values": [], "pictures": pictures(wrong, asked)[None, None].numpy()},
               report.FLEXIP: {"values": [0.0, 0.5, 1.0], "pictures": flexip.numpy()},
               report.BASELINE: {"values": [0.0, 0.5, 1.0], "pictures": baseline.numpy()}}
    for r in results.values():  # the first evaluator's scores, as evaluate.run_sweeps stores them
        from benchmarks.nano.evaluate import Decoder, score
        found = [score(Decoder(renderer), torch.as_tensor(p).float() / 255, cases) for p in r["pictures"][0]]
        for key in found[0]:
            r[key] = np.stack([np.stack([f[key].numpy() for f in found])])
    facts = {"size": {}, "variant": {"name": "paper", "description": "the paper's"}, "encoder_knowledge": {n: {a: 1.0 for a in scoring.ATTRIBUTES} for n in ("clip", "dino")},
             "stage_seconds": {"base": 60.0, "flexip-paper": 30.0, "baseline-scene": 20.0},
             "stage_cpu_seconds": {"base": 54.0, "flexip-paper": 30.0, "baseline-scene": 18.0},
             "parallel_adapters": True, "wall_time": 60.0}
    drawable = {a: 1.0 for a in scoring.ATTRIBUTES}
    summary = report.write_report(tmp_path, SIZES["ci"], cases, results, facts, tmp_path, drawable)
    ours = summary[report.FLEXIP]
    # identity counts colour, pattern, mark: the wrong subject keeps only its pattern
    assert ours["identity"] == pytest.approx([1 / 3, 1.0, 1.0])
    assert ours["prompt"] == pytest.approx([1.0, 1.0, 0.5])
    assert ours["layout_copy"] == pytest.approx([0.0, 0.0, 1.0])
    assert summary["base"]["identity"] == pytest.approx([1 / 3])
    targets = summary["targets"]
    assert targets["identity_at_1"]["met"] and targets["front"]["met"] and targets["prompt_at_0"]["met"]
    assert targets["spearman_identity"]["values"] == [pytest.approx(np.sqrt(3) / 2, abs=1e-4)]
    assert not targets["spearman_identity"]["met"]
    assert summary["first_evaluator"]["targets"]["front"]["met"]
    text = (tmp_path / "report.md").read_text()
    assert "The first evaluator's numbers" in text and "± 0.000" in text
    assert targets["time"]["values"] == [1.5] and targets["time_cpu"]["values"] == [1.4]  # adapters side by side
    assert "the build's length from them 1.4 min (FlexIP and the baseline side by side)" in text
    for name in ("controls.png", "front.png", "attributes.png", "smoothness.png", "contact_sheet.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_build_minutes_counts_the_adapters_side_by_side_when_parallel():
    seconds = {"data": 6, "encoders": 114, "base": 1068, "flexip-paper": 708, "baseline-scene": 684,
               "evaluation-paper": 222, "drawability": 18}
    assert report.build_minutes(seconds, parallel=False) == pytest.approx(2820 / 60)
    assert report.build_minutes(seconds, parallel=True) == pytest.approx((2820 - 684) / 60)

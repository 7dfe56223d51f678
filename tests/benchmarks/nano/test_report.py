"""The miniature's report (benchmarks/nano/report.py) end to end on pictures the world renders."""
import numpy as np
import pytest
import torch

from benchmarks.nano import ablation, recolour, report, scoring, world
from benchmarks.nano.summary import BASELINE, FLEXIP


def _first_evaluator(results, cases, renderer):
    """The first evaluator's scores of each method's pictures, as evaluate.run_sweeps stores them."""
    from benchmarks.nano.evaluate import Decoder, score
    for r in results.values():
        found = [score(Decoder(renderer), torch.as_tensor(p).float() / 255, cases) for p in r["pictures"][0]]
        for key in found[0]:
            r[key] = np.stack([np.stack([f[key].numpy() for f in found])])


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
               FLEXIP: {"values": [0.0, 0.5, 1.0], "pictures": flexip.numpy()},
               BASELINE: {"values": [0.0, 0.5, 1.0], "pictures": baseline.numpy()}}
    _first_evaluator(results, cases, renderer)
    facts = {"size": {}, "variant": {"name": "paper", "description": "the paper's"}, "encoder_knowledge": {n: {a: 1.0 for a in scoring.ATTRIBUTES} for n in ("clip", "dino")},
             "stage_seconds": {"base": 60.0, "flexip-paper": 30.0, "baseline-scene": 20.0},
             "stage_cpu_seconds": {"base": 54.0, "flexip-paper": 30.0, "baseline-scene": 18.0},
             "jobs": 2, "wall_time": 60.0}
    drawable = {a: 1.0 for a in scoring.ATTRIBUTES}
    # recolour cases: FlexIP draws the asked colour at gamma 0 and 0.5 and the reference's at gamma 1; the
    # baseline always the reference's; the base the asked colour with another mark
    edited = recolour.recolour_cases(cases)
    wanted = [c.prompt_subject for c in edited]
    other_mark = []
    for subject in map(world.Subject.from_id, wanted):
        other_mark.append(world.Subject(subject.shape, subject.colour, subject.pattern,
                                        "black" if subject.mark != "black" else "white").id)
    recoloured = {"base": {"values": [], "pictures": pictures(other_mark, asked)[None, None].numpy()},
                  FLEXIP: {"values": [0.0, 0.5, 1.0],
                           "pictures": torch.stack([pictures(wanted, asked)] * 2 + [pictures(right, asked)])[None].numpy()},
                  BASELINE: {"values": [0.0, 0.5, 1.0], "pictures": torch.stack([pictures(right, asked)] * 3)[None].numpy()}}
    _first_evaluator(recoloured, edited, renderer)
    folder = tmp_path / "paper"
    summary = report.write_report(folder, SIZES["ci"], cases, results, facts, tmp_path, drawable, (edited, recoloured))
    ours = summary[FLEXIP]
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
    # every case pairs FlexIP's identity 1 at gamma 1 with the baseline's 1/3 (its first strength on a tie)
    assert summary["identity_gap"] == {"difference": pytest.approx(2 / 3), "se": pytest.approx(0.0), "strength": 0.0}
    text = (folder / "report.md").read_text()
    assert "The first evaluator's numbers" in text and "± 0.000" in text
    assert "baseline's at its best strength (0), paired over the same cases and sampling seeds: +0.667 ± 0.000" in text
    assert targets["time"]["values"] == [1.5] and targets["time_cpu"]["values"] == [1.4]  # adapters side by side
    assert "the build's length from them 1.4 min (two lanes: the encoders beside the base, the baseline beside" in text
    r = summary["recolour"]
    assert r[FLEXIP]["identity"] == pytest.approx([1.0, 1.0, 1.0])  # pattern and mark, the same in both colours
    assert r[FLEXIP]["prompt"] == pytest.approx([1.0, 1.0, 0.8])
    assert r[FLEXIP]["colour_copy"] == pytest.approx([0.0, 0.0, 1.0])
    assert r[BASELINE]["colour_copy"] == pytest.approx([1.0, 1.0, 1.0])
    assert r["base"]["identity"] == pytest.approx([0.5]) and r["base"]["prompt"] == pytest.approx([1.0])
    assert r["targets"]["spearman_prompt"]["values"] == [pytest.approx(-np.sqrt(3) / 2, abs=1e-4)]
    assert r["targets"]["identity_at_1"]["met"] and "time" not in r["targets"]
    assert r["identity_gap"]["difference"] == pytest.approx(0.0) and r["identity_gap"]["se"] == pytest.approx(0.0)
    assert "## Recolour cases: prompts that contradict the reference" in text
    for name in ("controls.png", "front.png", "attributes.png", "smoothness.png", "contact_sheet.png",
                 "recolour_controls.png", "recolour_sweep.png"):
        assert (folder / name).stat().st_size > 0
    # the ablation over the variants in the folder: this one's row, scene targets then recolour targets
    ablation.write_ablation(tmp_path)
    row = next(line for line in (tmp_path / "ablation.md").read_text().splitlines() if line.startswith("| paper |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 1 + len(ablation.ABLATION_TARGETS) + 5 + len(ablation.RECOLOUR_TARGETS) + 3
    assert cells[-3:] == ["1.00 1.00 1.00", "1.00 1.00 0.80", "0.00 0.00 1.00"]  # recolour identity, prompt, colour copying
    assert (tmp_path / "ablation.png").stat().st_size > 0

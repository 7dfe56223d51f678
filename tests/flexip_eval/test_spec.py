"""The benchmark spec (TOML and JSON), the DreamBench++ folder import and the workflow placeholders."""
import json
from pathlib import Path

import pytest
from PIL import Image

from flexip_eval.spec import TEMPLATES, dreambench_subjects, load_spec
from flexip_eval.template import fill, load_template, placeholders

REPO = Path(__file__).resolve().parents[2]


def image(path, size=(24, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 60)).save(path)
    return path


@pytest.fixture
def dreambench(tmp_path):
    """DreamBench++'s layout: images/<category>/<id>.jpg, captions/<category>/<id>.txt (name, then prompts)."""
    root = tmp_path / "dreambench_plus"
    for category, ids in (("animal", ("00", "01")), ("object", ("00",))):
        for i in ids:
            image(root / "images" / category / f"{i}.jpg")
            (root / "captions" / category).mkdir(parents=True, exist_ok=True)
            (root / "captions" / category / f"{i}.txt").write_text(
                f"{category} {i} name\na {category} {i} on a beach\n\na {category} {i} in the snow\n"
                f"a {category} {i}, oil painting\n")
    image(root / "images" / "animal" / "01_mask.png")
    return root


def test_dreambench_folder_import(dreambench):
    subjects = dreambench_subjects(dreambench)
    assert [s.id for s in subjects] == ["animal_00", "animal_01", "object_00"]
    first = subjects[0]
    assert first.name == "animal 00 name"
    assert first.prompts == ("a animal 00 on a beach", "a animal 00 in the snow", "a animal 00, oil painting")
    assert first.mask is None and subjects[1].mask == dreambench / "images" / "animal" / "01_mask.png"
    limited = dreambench_subjects(dreambench, categories=["object", "animal"], per_category=1, prompts_per_subject=2)
    assert [s.id for s in limited] == ["object_00", "animal_00"] and len(limited[1].prompts) == 2
    with pytest.raises(ValueError, match="no category 'human'"):
        dreambench_subjects(dreambench, categories=["human"])
    (dreambench / "captions" / "object" / "00.txt").unlink()
    with pytest.raises(FileNotFoundError, match="has no caption file"):
        dreambench_subjects(dreambench)


SPEC = """
[benchmark]
name = "two-methods"
seeds = [3, 4]
controls = [0.0, 0.5, 1.0]
note = "random weights"

[[subjects]]
id = "teapot"
image = "refs/teapot.png"
mask = "refs/teapot_mask.png"
prompts = ["a teapot on a beach", "a teapot in space"]

[dreambench]
folder = "dreambench_plus"
categories = ["object"]

[servers]
urls = ["http://a:8188", "http://b:8188"]
queue_depth = 3

[methods.flexip]
workflow = "flexip_sd15.json"
control = "gamma"
[methods.flexip.params]
checkpoint = "sd15.safetensors"
clip_vision = "clip.safetensors"
dino = "dino.safetensors"
flexip = "flexip.safetensors"
size = 64
steps = 2
cfg = 7.5

[methods.other]
workflow = "other.json"
controls = [0.2, 0.8]
params = {strength_name = "weight"}

[scoring.clip]
path = "models/clip"
[scoring.aesthetic]
head = "models/head.pth"
clip_path = "models/vit-l"
"""

OTHER = {"1": {"class_type": "LoadImage", "inputs": {"image": "{{reference_image}}"}},
         "2": {"class_type": "Something", "inputs": {"text": "{{prompt}}, photo of {{subject}}", "seed": "{{seed}}",
                                                     "image": ["1", 0], "{{strength_name}}": 1,
                                                     "strength": "{{control}}", "label": "{{strength_name}}"}}}


@pytest.fixture
def spec_folder(tmp_path, dreambench):
    image(tmp_path / "refs" / "teapot.png")
    image(tmp_path / "refs" / "teapot_mask.png")
    (tmp_path / "other.json").write_text(json.dumps(OTHER))
    (tmp_path / "spec.toml").write_text(SPEC)
    return tmp_path


def test_toml_spec_with_subjects_dreambench_methods_and_scoring(spec_folder):
    spec = load_spec(spec_folder / "spec.toml")
    assert spec.name == "two-methods" and spec.seeds == (3, 4) and spec.note == "random weights"
    assert [s.id for s in spec.subjects] == ["teapot", "object_00"]
    assert spec.subject("teapot").mask == spec_folder / "refs" / "teapot_mask.png"
    assert spec.servers == ["http://a:8188", "http://b:8188"] and spec.queue_depth == 3 and spec.retries == 2
    flexip, other = spec.methods["flexip"], spec.methods["other"]
    assert flexip.workflow_path == TEMPLATES / "flexip_sd15.json"   # found among the shipped templates
    assert flexip.controls == (0.0, 0.5, 1.0) and flexip.control_name == "gamma"
    assert other.controls == (0.2, 0.8) and other.control_name == "control"
    assert spec.scoring["clip"]["path"] == str(spec_folder / "models" / "clip")
    assert spec.scoring["aesthetic"] == {"head": str(spec_folder / "models" / "head.pth"),
                                         "clip_path": str(spec_folder / "models" / "vit-l")}
    jobs = spec.jobs()
    # per method: (2 + 3 prompts over the two subjects) x 2 seeds x its controls (3 and 2)
    assert len(jobs) == 5 * 2 * 3 + 5 * 2 * 2 and len({j.image for j in jobs}) == 50
    assert jobs[0].image == Path("images/flexip/teapot/p00_s3_c0.png")
    assert [j.control for j in jobs[:3]] == [0.0, 0.5, 1.0] and {j.subject for j in jobs[:12]} == {"teapot"}


def test_json_spec_is_the_same_structure(spec_folder):
    import tomllib
    raw = tomllib.loads(SPEC)
    (spec_folder / "spec.json").write_text(json.dumps(raw))
    assert load_spec(spec_folder / "spec.json").jobs() == load_spec(spec_folder / "spec.toml").jobs()


@pytest.mark.parametrize("edit, error", [
    (lambda s: s.replace('checkpoint = "sd15.safetensors"\n', ""), r"placeholders \['checkpoint'\] with no value"),
    (lambda s: s.replace('refs/teapot.png', 'refs/absent.png'), "reference image .* not found"),
    (lambda s: s.replace('id = "teapot"', 'id = "tea pot"'), "must be letters"),
    (lambda s: s.replace('controls = [0.2, 0.8]', 'controls = [0.2, 0.2]'), "control values repeat"),
    (lambda s: s.replace('workflow = "other.json"', 'workflow = "absent.json"'), "absent.json not found"),
    (lambda s: s.replace('categories = ["object"]', 'categories = ["object"]\n[[subjects]]\nid = "object_00"\n'
                                                    'image = "refs/teapot.png"\nprompts = ["x"]'), "ids repeat"),
])
def test_spec_errors_say_what_to_fix(spec_folder, edit, error):
    (spec_folder / "spec.toml").write_text(edit(SPEC))
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        load_spec(spec_folder / "spec.toml")


def test_placeholders_keep_the_values_types():
    assert placeholders(OTHER) == {"reference_image", "prompt", "subject", "seed", "control", "strength_name"}
    filled = fill(OTHER, {"reference_image": "ref.png", "prompt": "a cat", "subject": "Tom", "seed": 7,
                          "control": 0.25, "strength_name": "weight"})
    node = filled["2"]["inputs"]
    assert node["seed"] == 7 and isinstance(node["seed"], int)
    assert node["strength"] == 0.25 and node["text"] == "a cat, photo of Tom" and node["label"] == "weight"
    assert node["image"] == ["1", 0] and node["{{strength_name}}"] == 1  # only input values are filled
    assert OTHER["2"]["inputs"]["seed"] == "{{seed}}"  # the template itself is untouched
    with pytest.raises(KeyError, match=r"\['control', 'strength_name'\]"):
        fill(OTHER, {"reference_image": "r", "prompt": "p", "subject": "s", "seed": 1})


def test_shipped_flexip_template_is_the_basic_workflow_with_placeholders():
    template = load_template(TEMPLATES / "flexip_sd15.json")
    basic = json.loads((REPO / "example_workflows" / "api" / "flexip_basic_api.json").read_text())
    assert placeholders(template) == {"checkpoint", "prompt", "reference_image", "clip_vision", "dino", "flexip",
                                      "control", "size", "seed", "steps", "cfg"}
    assert {k: n["class_type"] for k, n in template.items()} == {k: n["class_type"] for k, n in basic.items()}
    assert template["11"]["inputs"]["gamma"] == "{{control}}" and template["13"]["inputs"]["sampler_name"] == "ddim"


def test_ui_format_workflows_are_refused(tmp_path):
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(ValueError, match="Export \\(API\\)"):
        load_template(tmp_path / "ui.json")


def test_the_command_line_names_a_bad_spec_and_what_to_fix(spec_folder, capsys):
    from flexip_eval.cli import main
    (spec_folder / "spec.toml").write_text(SPEC.replace('checkpoint = "sd15.safetensors"\n', ""))
    assert main(["score", str(spec_folder / "spec.toml")]) == 2
    assert "python -m flexip_eval score: method flexip: flexip_sd15.json has placeholders ['checkpoint']" in \
        capsys.readouterr().err


def test_the_shipped_example_spec_loads(tmp_path, dreambench):
    text = (REPO / "flexip_eval" / "examples" / "dreambench_flexip.toml").read_text()
    (tmp_path / "example.toml").write_text(text.replace('"/data/dreambench_plus/data"', f'"{dreambench}"')
                                           .replace('["animal", "human", "object"]', '["animal", "object"]'))
    spec = load_spec(tmp_path / "example.toml")
    assert len(spec.jobs()) == 3 * 3 * 3 * 5  # 3 subjects x 3 prompts x 3 seeds x 5 gamma values
    assert spec.methods["flexip"].params["steps"] == 50 and set(spec.scoring) == {"device", "batch_size", "clip",
                                                                                   "dino", "aesthetic"}

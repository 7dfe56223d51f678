"""The benchmark spec: subjects, prompts, seeds, control values, methods (workflow templates), the
servers and the scoring models. A TOML file (or the same structure as JSON); see the README's
Evaluation section. Relative paths are relative to the spec file.

Subjects come from [[subjects]] entries and/or a DreamBench++-style folder ([dreambench]):
images/<category>/<id>.jpg with captions/<category>/<id>.txt, whose first line is the subject's
name and each further line one prompt (DreamBench++'s own layout); an optional mask
images/<category>/<id>_mask.png beside a reference (white = subject) removes its background
before the image metrics.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .template import RUNNER_VALUES, load_template, placeholders

TEMPLATES = Path(__file__).resolve().parent / "templates"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Subject:
    id: str
    name: str
    image: Path
    prompts: tuple
    mask: Path = None


@dataclass(frozen=True)
class Method:
    name: str
    workflow_path: Path
    workflow: dict = field(compare=False, repr=False)
    controls: tuple
    control_name: str = "control"
    params: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Job:
    """One image to generate."""
    method: str
    subject: str
    prompt_index: int
    prompt: str
    seed: int
    control: float

    @property
    def image(self):
        """Its file under the output folder."""
        return Path("images", self.method, self.subject, f"p{self.prompt_index:02d}_s{self.seed}_c{self.control:.10g}.png")


@dataclass
class Spec:
    name: str
    path: Path
    subjects: list
    methods: dict
    seeds: tuple
    servers: list = field(default_factory=list)
    queue_depth: int = 2
    retries: int = 2
    timeout: float = 900.0
    scoring: dict = field(default_factory=dict)
    out: Path = None
    note: str = ""

    def jobs(self):
        """Every image, ordered so that one method's subject is generated in a run (ComfyUI then
        reuses its cached reference encodings across prompts, seeds and control values)."""
        return [Job(m.name, s.id, p, prompt, seed, control)
                for m in self.methods.values() for s in self.subjects
                for p, prompt in enumerate(s.prompts) for seed in self.seeds for control in m.controls]

    def subject(self, subject_id):
        return next(s for s in self.subjects if s.id == subject_id)


def load_spec(path):
    path = Path(path).resolve()
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        try:
            import tomllib
        except ModuleNotFoundError:
            raise RuntimeError("reading a TOML spec needs Python 3.11 or later; write the spec as JSON instead") from None
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    return parse_spec(raw, path)


def parse_spec(raw, path):
    base = path.parent
    bench = raw.get("benchmark", {})
    seeds = tuple(int(s) for s in bench.get("seeds", [0]))
    default_controls = bench.get("controls", [1.0])
    subjects = [_subject(entry, base) for entry in raw.get("subjects", [])]
    if "dreambench" in raw:
        db = raw["dreambench"]
        subjects += dreambench_subjects(base / db["folder"], db.get("categories"), db.get("subjects_per_category"),
                                        db.get("prompts_per_subject"))
    if not subjects:
        raise ValueError(f"{path}: no subjects: add [[subjects]] entries or a [dreambench] folder")
    ids = [s.id for s in subjects]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: subject ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    methods = {name: _method(name, entry, base, default_controls) for name, entry in raw.get("methods", {}).items()}
    if not methods:
        raise ValueError(f"{path}: no methods: add a [methods.NAME] table with a workflow template")
    servers = raw.get("servers", {})
    if int(servers.get("queue_depth", 2)) < 1:
        raise ValueError(f"{path}: [servers] queue_depth must be at least 1")
    return Spec(name=bench.get("name", path.stem), path=path, subjects=subjects, methods=methods, seeds=seeds,
                servers=list(servers.get("urls", [])), queue_depth=int(servers.get("queue_depth", 2)),
                retries=int(servers.get("retries", 2)), timeout=float(servers.get("timeout", 900)),
                scoring=_resolve_paths(raw.get("scoring", {}), base),
                out=base / bench["out"] if "out" in bench else None, note=bench.get("note", ""))


def _safe(kind, name):
    if not SAFE_NAME.fullmatch(name):
        raise ValueError(f"{kind} {name!r} must be letters, digits, '_', '.', '-' (it names folders)")
    return name


def _subject(entry, base):
    subject_id = _safe("subject id", str(entry["id"]))
    image = base / entry["image"]
    if not image.is_file():
        raise FileNotFoundError(f"subject {subject_id}: reference image {image} not found")
    mask = base / entry["mask"] if entry.get("mask") else None
    if mask is not None and not mask.is_file():
        raise FileNotFoundError(f"subject {subject_id}: mask {mask} not found")
    prompts = tuple(entry.get("prompts", ()))
    if not prompts:
        raise ValueError(f"subject {subject_id} has no prompts")
    return Subject(subject_id, entry.get("name", subject_id), image, prompts, mask)


def dreambench_subjects(folder, categories=None, per_category=None, prompts_per_subject=None):
    """Subjects from a DreamBench++-style folder, in sorted order; ids are <category>_<id>."""
    images = folder / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"{folder} has no images/ folder (expected images/<category>/<id>.jpg)")
    found = sorted(p.name for p in images.iterdir() if p.is_dir())
    for category in categories or ():
        if category not in found:
            raise ValueError(f"{folder}: no category {category!r} (found {found})")
    subjects = []
    for category in categories or found:
        files = sorted(p for p in (images / category).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask"))
        for image in files[:per_category]:
            caption = folder / "captions" / category / f"{image.stem}.txt"
            if not caption.is_file():
                raise FileNotFoundError(f"{image} has no caption file {caption}")
            lines = [line.strip() for line in caption.read_text().splitlines() if line.strip()]
            if len(lines) < 2:
                raise ValueError(f"{caption}: expected the subject's name on the first line and a prompt on each next line")
            mask = image.with_name(f"{image.stem}_mask.png")
            subjects.append(Subject(_safe("subject id", f"{category}_{image.stem}"), lines[0], image,
                                    tuple(lines[1:][:prompts_per_subject]), mask if mask.is_file() else None))
    return subjects


def _method(name, entry, base, default_controls):
    _safe("method name", name)
    if "workflow" not in entry:
        raise ValueError(f"method {name}: give its workflow template (workflow = \"...json\")")
    workflow_path = base / entry["workflow"]
    if not workflow_path.is_file() and (TEMPLATES / entry["workflow"]).is_file():
        workflow_path = TEMPLATES / entry["workflow"]
    if not workflow_path.is_file():
        raise FileNotFoundError(f"method {name}: workflow {entry['workflow']} not found beside the spec or in {TEMPLATES}")
    workflow = load_template(workflow_path)
    params = dict(entry.get("params", {}))
    missing = placeholders(workflow) - set(RUNNER_VALUES) - set(params)
    if missing:
        raise ValueError(f"method {name}: {workflow_path.name} has placeholders {sorted(missing)} with no value: "
                         f"set them under [methods.{name}.params]")
    controls = tuple(entry.get("controls", default_controls))
    if len(set(controls)) != len(controls):
        raise ValueError(f"method {name}: control values repeat: {list(controls)}")
    return Method(name, workflow_path, workflow, controls, entry.get("control", "control"), params)


def _resolve_paths(scoring, base):
    """Every 'path', 'head' or '*_path' value of the scoring tables, made absolute."""
    out = {}
    for key, value in scoring.items():
        if isinstance(value, dict):
            out[key] = _resolve_paths(value, base)
        elif isinstance(value, str) and (key in ("path", "head") or key.endswith("_path")):
            out[key] = str(base / value)
        else:
            out[key] = value
    return out

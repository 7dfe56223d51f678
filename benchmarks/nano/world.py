"""The miniature's world: 32 x 32 pictures of one subject in a scene, rendered exactly.

A subject is a combination of four attributes: its shape and body colour can be named in a
prompt ("a red circle"); its pattern and the pattern's colour (its "mark") are never named, so
only a reference picture shows them. 4 x 6 x 4 x 4 = 384 subjects; HELD_OUT of them are kept
out of every training stage (base, encoders, adapters) and only evaluated.
A scene is what a prompt controls: the background, the position (left, centre, right) and the
size (small, large): 6 x 3 x 2 = 36 scenes.

The renderer is a pure function of (subject, scene) (anti-aliased by 4 x 4 supersampling), so
the evaluator can render every picture the world has and decode a generated one exactly.
Pictures use ComfyUI's IMAGE layout: float [N, 32, 32, 3] in [0, 1].
"""
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIZE = 32
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (215, 40, 40), "orange": (240, 140, 20), "yellow": (235, 215, 40),
           "green": (40, 170, 60), "blue": (40, 80, 215), "purple": (140, 50, 190)}
PATTERNS = ("stripes", "bars", "spot", "half")
MARKS = {"black": (25, 25, 25), "white": (245, 245, 245), "pink": (250, 150, 200), "cyan": (40, 220, 230)}
BACKGROUNDS = {"grass": (60, 110, 50), "sand": (205, 185, 135), "sky": (130, 180, 225),
               "night": (25, 30, 60), "snow": (225, 228, 235), "stone": (120, 120, 120)}
POSITIONS = {"left": 9.0, "centre": 16.0, "right": 23.0}  # x of the subject's centre, in pixels
SIZES = {"small": 5.0, "large": 8.0}  # the subject's radius, in pixels
CENTRE_Y = 16.0

SUBJECT_ATTRIBUTES = ("shape", "colour", "pattern", "mark")
SCENE_ATTRIBUTES = ("background", "position", "size")
VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS, "mark": tuple(MARKS),
          "background": tuple(BACKGROUNDS), "position": tuple(POSITIONS), "size": tuple(SIZES)}
SUBJECT_GRID = tuple(len(VALUES[a]) for a in SUBJECT_ATTRIBUTES)
SCENE_GRID = tuple(len(VALUES[a]) for a in SCENE_ATTRIBUTES)
NUM_SUBJECTS = int(np.prod(SUBJECT_GRID))
NUM_SCENES = int(np.prod(SCENE_GRID))
HELD_OUT = 48
SPLIT_SEED = 9


@dataclass(frozen=True)
class Subject:
    shape: str
    colour: str
    pattern: str
    mark: str

    @property
    def id(self):
        return int(np.ravel_multi_index([VALUES[a].index(getattr(self, a)) for a in SUBJECT_ATTRIBUTES], SUBJECT_GRID))

    @classmethod
    def from_id(cls, index):
        return cls(*(VALUES[a][i] for a, i in zip(SUBJECT_ATTRIBUTES, np.unravel_index(int(index), SUBJECT_GRID))))

    @property
    def name(self):
        return f"{self.colour}-{self.shape}-{self.mark}-{self.pattern}"


@dataclass(frozen=True)
class Scene:
    background: str
    position: str
    size: str

    @property
    def id(self):
        return int(np.ravel_multi_index([VALUES[a].index(getattr(self, a)) for a in SCENE_ATTRIBUTES], SCENE_GRID))

    @classmethod
    def from_id(cls, index):
        return cls(*(VALUES[a][i] for a, i in zip(SCENE_ATTRIBUTES, np.unravel_index(int(index), SCENE_GRID))))


def attribute_table(kind):
    """[count, attributes] long tensor: every subject's (or scene's) attribute indices, by id."""
    grid = SUBJECT_GRID if kind == "subject" else SCENE_GRID
    return torch.tensor(list(itertools.product(*(range(n) for n in grid))), dtype=torch.long)


def split():
    """(training subject ids, held-out subject ids): a fixed draw in which every attribute value
    occurs among the held-out subjects."""
    rng = np.random.default_rng(SPLIT_SEED)
    table = attribute_table("subject").numpy()
    while True:
        held = np.sort(rng.choice(NUM_SUBJECTS, HELD_OUT, replace=False))
        if all(len(set(table[held, a])) == n for a, n in enumerate(SUBJECT_GRID)):
            return [int(i) for i in range(NUM_SUBJECTS) if i not in set(held)], [int(i) for i in held]


# --- Rendering ---------------------------------------------------------------------------------

def _fine_grid():
    coords = (torch.arange(SIZE * SUPERSAMPLE, dtype=torch.float64) + 0.5) / SUPERSAMPLE
    return torch.meshgrid(coords, coords, indexing="ij")  # y, x in pixels


def _shape_region(shape, u, v):
    """The shape in coordinates relative to its centre, in radii (v grows downwards)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.82
    if shape == "triangle":  # apex up
        return (v <= 0.75) & (u.abs() <= (v + 0.95) / 1.7)
    if shape == "diamond":
        return u.abs() + v.abs() <= 1.0
    raise ValueError(shape)


def _pattern_region(pattern, u, v):
    if pattern == "stripes":  # two horizontal bands
        return torch.floor((v + 1.0) * 2.0).remainder(2) == 1
    if pattern == "bars":  # two vertical bands
        return torch.floor((u + 1.0) * 2.0).remainder(2) == 1
    if pattern == "spot":
        return u * u + v * v <= 0.42 ** 2
    if pattern == "half":  # the lower part
        return v >= 0.15
    raise ValueError(pattern)


def _masks():
    """Anti-aliased coverage: body [shape, size, position, H, W] and mark [shape, pattern, size, position, H, W]."""
    y, x = _fine_grid()
    body = torch.zeros(len(SHAPES), len(SIZES), len(POSITIONS), SIZE, SIZE)
    mark = torch.zeros(len(SHAPES), len(PATTERNS), len(SIZES), len(POSITIONS), SIZE, SIZE)

    def coverage(region):
        return F.avg_pool2d(region.double()[None, None], SUPERSAMPLE)[0, 0].float()

    for (s, shape), (z, radius), (p, centre_x) in itertools.product(
            enumerate(SHAPES), enumerate(SIZES.values()), enumerate(POSITIONS.values())):
        u, v = (x - centre_x) / radius, (y - CENTRE_Y) / radius
        inside = _shape_region(shape, u, v)
        body[s, z, p] = coverage(inside)
        for t, pattern in enumerate(PATTERNS):
            mark[s, t, z, p] = coverage(inside & _pattern_region(pattern, u, v))
    return body, mark


def _palette(colours):
    return torch.tensor(list(colours.values()), dtype=torch.float32) / 255.0


class Renderer:
    """render(subject_ids, scene_ids) -> pictures [N, 32, 32, 3] in [0, 1]."""

    def __init__(self):
        self.body, self.mark = _masks()
        self.subjects, self.scenes = attribute_table("subject"), attribute_table("scene")
        self.colours, self.marks, self.backgrounds = _palette(COLOURS), _palette(MARKS), _palette(BACKGROUNDS)

    def render(self, subject_ids, scene_ids):
        subject_ids, scene_ids = torch.as_tensor(subject_ids).long(), torch.as_tensor(scene_ids).long()
        shape, colour, pattern, mark = self.subjects[subject_ids].unbind(-1)
        background, position, size = self.scenes[scene_ids].unbind(-1)
        body = self.body[shape, size, position][..., None]         # [N, H, W, 1]
        marked = self.mark[shape, pattern, size, position][..., None]
        paint = lambda palette, index: palette[index][:, None, None, :]  # noqa: E731
        return (paint(self.backgrounds, background) * (1 - body) + paint(self.colours, colour) * (body - marked)
                + paint(self.marks, mark) * marked)

    def subject_mask(self, subject_ids, scene_ids):
        """The subject's exact (anti-aliased) coverage of each picture render() draws: [N, 32, 32] in [0, 1]."""
        subject_ids, scene_ids = torch.as_tensor(subject_ids).long(), torch.as_tensor(scene_ids).long()
        shape = self.subjects[subject_ids][:, SUBJECT_ATTRIBUTES.index("shape")]
        _, position, size = self.scenes[scene_ids].unbind(-1)
        return self.body[shape, size, position]


# --- Words -------------------------------------------------------------------------------------

def caption(subject, scene, name_colour=True):
    """The picture's caption. It names the shape (and, if asked, the body colour) and the whole
    scene; never the pattern or its colour."""
    colour = f"{subject.colour} " if name_colour else ""
    return f"a {scene.size} {colour}{subject.shape} at the {scene.position} on {scene.background}"


def prompt(subject, scene):
    """An evaluation prompt: the subject's class (its shape) in a scene, as 'a dog on the beach'."""
    return caption(subject, scene, name_colour=False)


VOCABULARY = ("<pad>", "a", "at", "the", "on", *SHAPES, *COLOURS, *POSITIONS, *SIZES, *BACKGROUNDS)


def save_png(picture, path):
    """A picture [32, 32, 3] (RGB) or a mask [32, 32] (greyscale) in [0, 1] as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((picture.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(path)


@dataclass(frozen=True)
class Case:
    """One evaluation case: a held-out subject, the scene of its reference picture, and the scene a
    prompt asks for (different in background, position and size, so copying the reference and
    following the prompt can be told apart)."""
    subject: int
    reference_scene: int
    prompt_scene: int

    @property
    def prompt(self):
        return prompt(Subject.from_id(self.subject), Scene.from_id(self.prompt_scene))


def evaluation_cases(subjects, per_subject, seed=1):
    rng = np.random.default_rng(seed)
    cases = []
    for subject_id in subjects:
        for _ in range(per_subject):
            reference = Scene.from_id(rng.integers(NUM_SCENES))
            choices = [Scene(b, p, s) for b in BACKGROUNDS for p in POSITIONS for s in SIZES
                       if b != reference.background and p != reference.position and s != reference.size]
            cases.append(Case(subject_id, reference.id, choices[rng.integers(len(choices))].id))
    return cases

"""The miniature's scores of what FlexIP claims: identity, prompt and layout copying, apart.

evaluate.py's first evaluator decodes a picture as the one nearest world picture, subject and scene
together, and counts the shape (named in the prompt) as identity; a subject drawn where the
reference had it, while the prompt asked elsewhere, could then cost identity points for a layout
error. These scores decode a picture at whatever placement fits it best instead:

- PlacementDecoder: least squares over every subject (shape, body colour, pattern, mark), every
  background and a fine grid of placements (subject centre x every pixel, radius every half
  pixel, around the world's own), each rendered exactly as the world renders. Position and size
  are the world's values nearest to the best placement.
- identity: the subject's attributes that the case's prompt does not name (colour, pattern, mark:
  the prompt names only the shape), among those the base model can draw (see counted()).
- prompt: the attributes the prompt names (shape, background, position, size; and the asked body
  colour in recolour.py's cases, whose prompts contradict the reference).
- layout copying: how much of the reference's layout (position, size) the picture takes, where the
  prompt asked for another (every evaluation case does): a third axis, not part of either score.

An attribute counts only if the base model alone can draw it: drawability.py measures the base's
reconstruction accuracy per attribute, and an attribute below COUNTED_ACCURACY is reported beside
the scores and left out of them.
"""
import itertools

import numpy as np
import torch
import torch.nn.functional as F

from . import world

COUNTED_ACCURACY = 0.75  # an attribute the base reconstructs less often than this is reported, not counted
PLACEMENT_STEP_X, PLACEMENT_STEP_RADIUS = 1.0, 0.5
LAYOUT = ("position", "size")
ATTRIBUTES = world.SUBJECT_ATTRIBUTES + world.SCENE_ATTRIBUTES


def placements():
    """(centre x, radius) pairs the decoder tries: the world's own and every step around them."""
    xs, radii = list(world.POSITIONS.values()), list(world.SIZES.values())
    x = np.arange(min(xs) - 5, max(xs) + 5 + 1e-9, PLACEMENT_STEP_X)
    r = np.arange(min(radii) - 1.5, max(radii) + 1.5 + 1e-9, PLACEMENT_STEP_RADIUS)
    return [(float(a), float(b)) for a, b in itertools.product(x, r)]


def _region_maps(centre_x, radius):
    """[shapes, patterns, 3, H * W]: the anti-aliased coverage of the background, the body outside
    the mark, and the mark, for a subject at (centre_x, radius): a picture is their mix of colours."""
    coords = (torch.arange(world.SIZE * world.SUPERSAMPLE, dtype=torch.float64) + 0.5) / world.SUPERSAMPLE
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    u, v = (x - centre_x) / radius, (y - world.CENTRE_Y) / radius
    out = torch.zeros(len(world.SHAPES), len(world.PATTERNS), 3, world.SIZE * world.SIZE)

    def coverage(region):
        return F.avg_pool2d(region.double()[None, None], world.SUPERSAMPLE)[0, 0].float().flatten()

    for s, shape in enumerate(world.SHAPES):
        inside = world._shape_region(shape, u, v)
        body = coverage(inside)
        for t, pattern in enumerate(world.PATTERNS):
            mark = coverage(inside & world._pattern_region(pattern, u, v))
            out[s, t] = torch.stack((1 - body, body - mark, mark))
    return out


class PlacementDecoder:
    """pictures [N, 32, 32, 3] -> {attribute: index [N]} of the best-fitting world picture at the best
    placement, plus "x" and "radius" of that placement.

    The squared distance to a picture painted with colours (background b, body c, mark m) over
    region maps (A, B, C) is |x|^2 - 2 sum_rc y_rc <x_c, R_r> + sum_rr' <R_r, R_r'> sum_c y_rc y_r'c,
    so each placement, shape and pattern needs only nine projections of the picture and nine inner
    products of its maps; every colour combination is then one matrix product."""

    def __init__(self, chunk=16):
        self.placements = placements()
        maps = torch.stack([_region_maps(x, r) for x, r in self.placements])  # [P, S, T, 3, HW]
        self.maps = maps.flatten(0, 2)                                         # [K, 3, HW]
        self.gram = torch.einsum("krp,kqp->krq", self.maps, self.maps).flatten(1)  # [K, 9]
        palettes = [world._palette(world.BACKGROUNDS), world._palette(world.COLOURS), world._palette(world.MARKS)]
        self.combos = list(itertools.product(*(range(len(p)) for p in palettes)))  # (background, colour, mark)
        y = torch.stack([torch.stack([palettes[r][i] for r, i in enumerate(c)]) for c in self.combos])  # [C, 3, 3ch]
        self.linear = y.flatten(1)                                            # [C, 9]: (region, channel)
        self.quadratic = torch.einsum("zrc,zqc->zrq", y, y).flatten(1)        # [C, 9]: (region, region)
        self.constant = self.gram @ self.quadratic.T                          # [K, C]
        self.shape = (len(self.placements), len(world.SHAPES), len(world.PATTERNS))
        self.chunk = chunk

    @torch.no_grad()
    def __call__(self, pictures):
        x = pictures.reshape(len(pictures), -1, 3).float()  # [N, HW, channel]
        best = []
        for part in x.split(self.chunk):
            projections = torch.einsum("krp,npc->nkrc", self.maps, part).flatten(2)  # [n, K, 9]
            distance = self.constant[None] - 2 * projections @ self.linear.T         # [n, K, C] (+ |x|^2)
            best.append(distance.flatten(1).argmin(1))
        best = torch.cat(best)
        k, combo = best // len(self.combos), best % len(self.combos)
        placement, shape, pattern = np.unravel_index(k.numpy(), self.shape)
        combos = torch.tensor(self.combos)[combo]
        xs = torch.tensor([self.placements[p][0] for p in placement])
        radii = torch.tensor([self.placements[p][1] for p in placement])
        return {"shape": torch.as_tensor(shape), "colour": combos[:, 1], "pattern": torch.as_tensor(pattern),
                "mark": combos[:, 2], "background": combos[:, 0], "position": _nearest(world.POSITIONS, xs),
                "size": _nearest(world.SIZES, radii), "x": xs, "radius": radii}


def _nearest(values, found):
    """The index of the world value nearest to each found number."""
    table = torch.tensor(list(values.values()))
    return (found[:, None] - table[None]).abs().argmin(1)


def true_attributes(cases, side="prompt"):
    """{attribute: index [N]}: the subject and scene each case's prompt asks for (the reference's
    subject, with any attribute the prompt changes: recolour.py), or with side="reference" the
    reference's subject and scene."""
    def subject(c):
        return getattr(c, "prompt_subject", c.subject) if side == "prompt" else c.subject

    subjects = world.attribute_table("subject")[torch.tensor([subject(c) for c in cases])]
    scenes = world.attribute_table("scene")[torch.tensor([getattr(c, f"{side}_scene") for c in cases])]
    out = {a: subjects[:, i] for i, a in enumerate(world.SUBJECT_ATTRIBUTES)}
    out.update({a: scenes[:, i] for i, a in enumerate(world.SCENE_ATTRIBUTES)})
    return out


def named_in_prompt(case):
    """The attributes whose value the case's prompt says (the shape and the scene, for world.prompt)."""
    words = set(case.prompt.split())
    truth = true_attributes([case])
    return {a for a in ATTRIBUTES if world.VALUES[a][int(truth[a][0])] in words}


def counted(drawable):
    """The attributes the scores count: those the base reconstructs at least COUNTED_ACCURACY of
    the time ({attribute: accuracy}, drawability.py)."""
    return {a for a, accuracy in drawable.items() if accuracy >= COUNTED_ACCURACY}


def score(decoded, cases, counted_attributes):
    """Per picture: "identity", "prompt", "layout_copy" [N] (NaN where no attribute counts) and per
    attribute agreement with what the prompt asks "agree" and with the reference "copied" ({a: [N]}:
    position, size, and the subject attributes a prompt changes)."""
    truth, reference = true_attributes(cases), true_attributes(cases, "reference")
    agree = {a: (decoded[a] == truth[a]).float() for a in ATTRIBUTES}
    # copied: the layout, and any subject attribute some prompt asks to change (recolour cases)
    changed = [a for a in world.SUBJECT_ATTRIBUTES if bool((truth[a] != reference[a]).any())]
    copied = {a: (decoded[a] == reference[a]).float() for a in (*LAYOUT, *changed)}
    named = [named_in_prompt(c) for c in cases]

    def mean_over(choose):
        rows = []
        for i, case in enumerate(cases):
            attributes = [a for a in ATTRIBUTES if choose(a, named[i]) and a in counted_attributes]
            rows.append(torch.stack([agree[a][i] for a in attributes]).mean() if attributes else torch.tensor(np.nan))
        return torch.stack(rows)

    return {"identity": mean_over(lambda a, said: a in world.SUBJECT_ATTRIBUTES and a not in said),
            "prompt": mean_over(lambda a, said: a in said),
            "layout_copy": torch.stack([copied[a] for a in LAYOUT]).mean(0),
            "agree": agree, "copied": copied}


def standard_error(per_case):
    """Standard error of the mean over cases (the last axis), cases being the independent units."""
    per_case = np.asarray(per_case, dtype=np.float64)
    return per_case.std(axis=-1, ddof=1) / np.sqrt(per_case.shape[-1])

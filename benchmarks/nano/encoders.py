"""Stand-ins for FlexIP's two frozen image encoders, trained briefly on the world, each the way its
original learns: CLIP from images and their captions, DINOv2 from images alone.

- GlobalEncoder plays CLIP ViT-H's image embedding: one 64-d vector for the whole picture, a small
  CNN trained contrastively against its caption (InfoNCE with a bag-of-words caption tower, CLIP's
  objective). So it knows what captions say (shape, colour, scene) and, like CLIP, little of what
  they never say (the pattern and its colour).
- PatchEncoder plays DINOv2's patch tokens: 8 x 8 tokens of 64-d (4 x 4-pixel patches, a learned
  position embedding, two transformer layers), self-supervised: each token keeps its patch's
  pixels (a linear read-out reconstructs them), and the mean token is augmentation- and
  scene-invariant (InfoNCE between two pictures of one subject in different scenes). So it
  carries the subject's every detail, named or not.
A random network is too weak an encoder (design note: 35-37 % nearest-neighbour identity under a
scene change), hence the training; `attribute_knowledge` measures what each learned, for the report.
"""
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from flexip_train.dataset import CROP_SCALE, FLIP_PROBABILITY, JITTER, jitter_colour

from . import world

DIM = 64
PATCH = 4
TEMPERATURE = 0.1


class GlobalEncoder(nn.Module):
    def __init__(self, dim=DIM, width=48):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU())
        self.project = nn.Linear(4 * width, dim)

    def forward(self, pixels):
        """[B, 32, 32, 3] in [0, 1] -> [B, dim]; average and max pooling, so a small subject counts."""
        x = self.features(pixels.movedim(-1, 1) * 2 - 1)
        return self.project(torch.cat((x.mean((2, 3)), x.amax((2, 3))), dim=1))


class PatchEncoder(nn.Module):
    def __init__(self, dim=DIM, layers=2, heads=4):
        super().__init__()
        tokens = (world.SIZE // PATCH) ** 2
        self.embed = nn.Linear(3 * PATCH * PATCH, dim)
        self.position = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pixels):
        """[B, 32, 32, 3] in [0, 1] -> patch tokens [B, 64, dim]."""
        patches = F.unfold(pixels.movedim(-1, 1) * 2 - 1, PATCH, stride=PATCH).transpose(1, 2)
        return self.norm(self.layers(self.embed(patches) + self.position))


class Encoders(nn.Module):
    """Both encoders, frozen: pictures -> (global [B, 64], patch tokens [B, 64, 64])."""

    def __init__(self):
        super().__init__()
        self.clip, self.dino = GlobalEncoder(), PatchEncoder()

    @torch.no_grad()
    def forward(self, pixels):
        return self.clip(pixels), self.dino(pixels)


class CaptionEncoder(nn.Module):
    """CLIP's text tower in miniature, used only to train GlobalEncoder: the mean of the caption's
    word embeddings, projected."""

    def __init__(self, dim=DIM):
        super().__init__()
        self.vocabulary = {word: i for i, word in enumerate(world.VOCABULARY)}
        self.words = nn.EmbeddingBag(len(world.VOCABULARY), dim, mode="mean")
        self.project = nn.Linear(dim, dim)

    def forward(self, captions):
        ids = [[self.vocabulary[w] for w in c.split()] for c in captions]
        offsets = torch.tensor([0] + np.cumsum([len(i) for i in ids])[:-1].tolist())
        return self.project(self.words(torch.tensor(sum(ids, [])), offsets))


def augment(pictures, rng, flip=True):
    """The training dataset's light augmentation, per picture: a square crop of 80-100 % of the side
    anywhere (resized back), a horizontal flip half the time (unless a caption says left or right),
    brightness/contrast/saturation x0.9-1.1."""
    out = []
    for picture in pictures:
        side = int(round(rng.uniform(*CROP_SCALE) * world.SIZE))
        top, left = rng.integers(0, world.SIZE - side + 1, size=2)
        crop = picture[top:top + side, left:left + side].movedim(-1, 0)[None]
        crop = F.interpolate(crop, size=(world.SIZE, world.SIZE), mode="bilinear", align_corners=False)[0].movedim(0, -1)
        if flip and rng.random() < FLIP_PROBABILITY:
            crop = crop.flip(1)
        out.append(jitter_colour(crop, *rng.uniform(1 - JITTER, 1 + JITTER, size=3)))
    return torch.stack(out)


def info_nce(a, b, same=None):
    """Symmetric InfoNCE of paired embeddings [K, D]: row i of a matches row i of b, and any row j
    with same[i, j] (equal captions) as well."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / TEMPERATURE
    target = torch.eye(len(a)) if same is None else same.float()
    target = target / target.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T)) / 2


def two_views(renderer, subjects, rng, augmented=True):
    """Each subject in two different random scenes (augmented, unless asked not to)."""
    first = rng.integers(world.NUM_SCENES, size=len(subjects))
    second = (first + rng.integers(1, world.NUM_SCENES, size=len(subjects))) % world.NUM_SCENES
    views = renderer.render(subjects, first), renderer.render(subjects, second)
    return tuple(augment(v, rng) for v in views) if augmented else views


def train_encoders(steps, subjects_per_step, seed=0, lr=2e-3, progress=True):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoders, captions = Encoders(), CaptionEncoder()
    read_out = nn.Linear(DIM, 3 * PATCH * PATCH)
    dino_head = nn.Linear(DIM, DIM)
    params = [*encoders.parameters(), *captions.parameters(), *read_out.parameters(), *dino_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    renderer = world.Renderer()
    train_subjects, _ = world.split()
    bar = tqdm(range(steps), desc="encoders: CLIP and DINOv2 stand-ins", unit="step", disable=not progress,
               dynamic_ncols=True)
    for _ in bar:
        # CLIP: pictures against their captions (every nameable attribute named)
        subjects = rng.choice(train_subjects, 2 * subjects_per_step)
        scenes = rng.integers(world.NUM_SCENES, size=len(subjects))
        texts = [world.caption(world.Subject.from_id(s), world.Scene.from_id(c)) for s, c in zip(subjects, scenes)]
        same = torch.tensor([[a == b for b in texts] for a in texts])
        pictures = augment(renderer.render(subjects, scenes), rng, flip=False)
        clip_loss = info_nce(encoders.clip(pictures), captions(texts), same)
        # DINOv2: two pictures of one subject, in different scenes, augmented
        a, b = two_views(renderer, rng.choice(train_subjects, subjects_per_step, replace=False), rng)
        tokens_a, tokens_b = encoders.dino(a), encoders.dino(b)
        patches = F.unfold(torch.cat((a, b)).movedim(-1, 1) * 2 - 1, PATCH, stride=PATCH).transpose(1, 2)
        recon_loss = F.mse_loss(read_out(torch.cat((tokens_a, tokens_b))), patches)
        dino_loss = info_nce(dino_head(tokens_a.mean(1)), dino_head(tokens_b.mean(1)))
        loss = clip_loss + dino_loss + 10 * recon_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(clip=f"{clip_loss.item():.3f}", dino=f"{dino_loss.item():.3f}",
                        recon=f"{recon_loss.item():.4f}", refresh=False)
    return encoders.requires_grad_(False).eval()


@torch.no_grad()
def attribute_knowledge(encoders, gallery=2000, queries=240, seed=0):
    """What each encoder's features know: held-out subjects in random scenes are matched to their
    nearest neighbour (cosine) among training subjects in random scenes, and each attribute of the
    neighbour's subject and scene is compared with the query's. -> {"clip"|"dino": {attribute:
    accuracy}} (CLIP: the global vector; DINOv2: all patch tokens). Chance: 1 / number of values."""
    rng = np.random.default_rng(seed)
    renderer = world.Renderer()
    train, held = world.split()
    pictures, subjects, scenes = {}, {}, {}
    for part, pool, count in (("gallery", train, gallery), ("query", held, queries)):
        subjects[part] = torch.as_tensor(rng.choice(pool, count))
        scenes[part] = torch.as_tensor(rng.integers(world.NUM_SCENES, size=count))
        pictures[part] = renderer.render(subjects[part], scenes[part])
    tables = {"subject": world.attribute_table("subject"), "scene": world.attribute_table("scene")}
    out = {}
    for name, embed in (("clip", encoders.clip), ("dino", lambda x: encoders.dino(x).flatten(1))):
        g, q = (F.normalize(embed(pictures[part]), dim=-1) for part in ("gallery", "query"))
        nearest = (q @ g.T).argmax(1)
        out[name] = {}
        for kind, attributes in (("subject", world.SUBJECT_ATTRIBUTES), ("scene", world.SCENE_ATTRIBUTES)):
            ids = subjects if kind == "subject" else scenes
            agree = tables[kind][ids["gallery"][nearest]] == tables[kind][ids["query"]]
            out[name].update({a: float(agree[:, i].float().mean()) for i, a in enumerate(attributes)})
    return out


def save_encoders(encoders, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoders.state_dict().items()}, str(path))


def load_encoders(path):
    encoders = Encoders()
    encoders.load_state_dict(load_file(str(path)))
    return encoders.requires_grad_(False).eval()

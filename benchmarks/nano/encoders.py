"""Stand-ins for FlexIP's two frozen image encoders, trained briefly on the world.

- GlobalEncoder plays CLIP ViT-H's image embedding: one 64-d vector for the whole picture, a
  small CNN trained contrastively (InfoNCE) so that two pictures of one subject in different
  scenes (background, position, size), each lightly augmented, map close together and other
  subjects apart: a global identity descriptor, as FlexIP uses CLIP's.
- PatchEncoder plays DINOv2's patch tokens: 8 x 8 tokens of 64-d (4 x 4-pixel patches, a learned
  position embedding, two transformer layers), trained to keep each patch's pixels (a linear
  read-out reconstructs them) and, through the mean token, the same subject invariance.
A random network is too weak an identity encoder (design note: 35-37 % nearest-neighbour identity
under a scene change), hence the training; `identity_retrieval` measures it for the report.
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


def augment(pictures, rng):
    """The training dataset's light augmentation, per picture: a square crop of 80-100 % of the side
    anywhere (resized back), a horizontal flip half the time, brightness/contrast/saturation x0.9-1.1."""
    out = []
    for picture in pictures:
        side = int(round(rng.uniform(*CROP_SCALE) * world.SIZE))
        top, left = rng.integers(0, world.SIZE - side + 1, size=2)
        crop = picture[top:top + side, left:left + side].movedim(-1, 0)[None]
        crop = F.interpolate(crop, size=(world.SIZE, world.SIZE), mode="bilinear", align_corners=False)[0].movedim(0, -1)
        if rng.random() < FLIP_PROBABILITY:
            crop = crop.flip(1)
        out.append(jitter_colour(crop, *rng.uniform(1 - JITTER, 1 + JITTER, size=3)))
    return torch.stack(out)


def info_nce(a, b):
    """Symmetric InfoNCE of two views' embeddings [K, D]: row i of a matches row i of b."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / TEMPERATURE
    target = torch.arange(len(a))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def two_views(renderer, subjects, rng, augmented=True):
    """Each subject in two different random scenes (augmented, unless asked not to)."""
    first = rng.integers(world.NUM_SCENES, size=len(subjects))
    second = (first + rng.integers(1, world.NUM_SCENES, size=len(subjects))) % world.NUM_SCENES
    views = renderer.render(subjects, first), renderer.render(subjects, second)
    return tuple(augment(v, rng) for v in views) if augmented else views


def train_encoders(steps, subjects_per_step, seed=0, lr=2e-3, progress=True):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoders = Encoders()
    read_out = nn.Linear(DIM, 3 * PATCH * PATCH)
    dino_head = nn.Linear(DIM, DIM)
    params = [*encoders.parameters(), *read_out.parameters(), *dino_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    renderer = world.Renderer()
    train_subjects, _ = world.split()
    bar = tqdm(range(steps), desc="encoders: CLIP and DINOv2 stand-ins", unit="step", disable=not progress,
               dynamic_ncols=True)
    for _ in bar:
        subjects = rng.choice(train_subjects, subjects_per_step, replace=False)
        a, b = two_views(renderer, subjects, rng)
        clip_loss = info_nce(encoders.clip(a), encoders.clip(b))
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
def identity_retrieval(encoders, subjects, seed=0):
    """Nearest-neighbour identity accuracy under a scene change: each subject in two random scenes
    (no augmentation); how often a picture's nearest global embedding among the second pictures
    is its own subject's. (Chance: 1 / len(subjects).)"""
    rng = np.random.default_rng(seed)
    a, b = two_views(world.Renderer(), np.asarray(subjects), rng, augmented=False)
    za, zb = (F.normalize(encoders.clip(x), dim=-1) for x in (a, b))
    return float(((za @ zb.T).argmax(1) == torch.arange(len(subjects))).float().mean())


def save_encoders(encoders, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoders.state_dict().items()}, str(path))


def load_encoders(path):
    encoders = Encoders()
    encoders.load_state_dict(load_file(str(path)))
    return encoders.requires_grad_(False).eval()

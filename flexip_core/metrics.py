"""The paper's image metrics (Table 1), computed from embeddings, and mRank.

- CLIP-I and DINO-I: cosine between a generated image's embedding and its reference's.
- CLIP-T: cosine between a generated image's CLIP image embedding and its prompt's CLIP text embedding.
- CLIP-IQA (Wang, Chan, Loy, AAAI 2023): for each antonym prompt pair ("Good photo." / "Bad
  photo." and the rest of the published set), a softmax over the image's cosines with the two
  prompts at CLIP's temperature (logit scale 100); the score is the probability of the first
  prompt. The quality score, Table 1's CLIP-IQA, is the pair "quality".
- mRank: each method's rank in each metric (1 = best, ties share their mean rank), averaged over
  the metrics.

reference_and_prompt_scores is the one place embeddings become CLIP-I, DINO-I and CLIP-T, for the
evaluation (flexip_eval.scoring) and for the FlexIP Score node alike; with several references of a
subject an image's score is its mean over them (DreamBooth's mean over pairs).

The encoders that give the embeddings are in eval_encoders (local files only).
"""
import math

import torch
import torch.nn.functional as F
from scipy.stats import rankdata

# The antonym pairs of CLIP-IQA (the paper's Table 1 of attributes; the same set as torchmetrics').
CLIP_IQA_PAIRS = {
    "quality": ("Good photo.", "Bad photo."),
    "brightness": ("Bright photo.", "Dark photo."),
    "noisiness": ("Clean photo.", "Noisy photo."),
    "colorfulness": ("Colorful photo.", "Dull photo."),
    "sharpness": ("Sharp photo.", "Blurry photo."),
    "contrast": ("High contrast photo.", "Low contrast photo."),
    "complexity": ("Complex photo.", "Simple photo."),
    "natural": ("Natural photo.", "Synthetic photo."),
    "happy": ("Happy photo.", "Sad photo."),
    "scary": ("Scary photo.", "Peaceful photo."),
    "new": ("New photo.", "Old photo."),
    "warm": ("Warm photo.", "Cold photo."),
    "real": ("Real photo.", "Abstract photo."),
    "beautiful": ("Beautiful photo.", "Ugly photo."),
    "lonely": ("Lonely photo.", "Sociable photo."),
    "relaxing": ("Relaxing photo.", "Stressful photo."),
}
# CLIP's learnt temperature is clamped at 100 in training; CLIP-IQA uses that value, fixed here so
# that a model whose own logit scale differs (or is random) gives comparable numbers.
CLIP_IQA_LOGIT_SCALE = 100.0

# Table 1's metrics; all are better when higher.
TABLE1_METRICS = ("clip_t", "clip_i", "dino_i", "clip_iqa", "aesthetic")


def cosine(a, b):
    """Row-wise cosine similarity of [B, D] embeddings (b may be [1, D], broadcast) -> [B]."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"embeddings of different widths cannot be compared: {a.shape[-1]} and {b.shape[-1]}")
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def clip_i(generated_embeds, reference_embeds):
    """CLIP-I: cosine of CLIP image embeddings of the generated images and their references."""
    return cosine(generated_embeds, reference_embeds)


def clip_t(generated_embeds, prompt_embeds):
    """CLIP-T: cosine of the generated images' CLIP image embeddings and their prompts' text embeddings."""
    return cosine(generated_embeds, prompt_embeds)


def dino_i(generated_cls, reference_cls):
    """DINO-I: cosine of DINO [CLS] embeddings of the generated images and their references."""
    return cosine(generated_cls, reference_cls)


def reference_and_prompt_scores(clip_images=None, clip_references=None, dino_images=None, dino_references=None,
                                clip_image_embeds=None, prompt_embeds=None):
    """{"clip_i", "dino_i", "clip_t": [B]} for the embeddings given (a metric whose inputs are None is left out).

    clip_images, dino_images: [B, D] embeddings of the images (background removed where masked);
    clip_references, dino_references: [B or 1, R, D], R references per image (1: the same for all);
    clip_image_embeds: [B, D] CLIP embeddings of the whole images, prompt_embeds [B or 1, D], for CLIP-T.
    """
    scores = {}
    if clip_images is not None:
        scores["clip_i"] = clip_i(clip_images[:, None], clip_references).mean(1)
    if dino_images is not None:
        scores["dino_i"] = dino_i(dino_images[:, None], dino_references).mean(1)
    if clip_image_embeds is not None and prompt_embeds is not None:
        scores["clip_t"] = clip_t(clip_image_embeds, prompt_embeds)
    return scores


def weighted_total(scores, weights):
    """sum over metrics of weight x score, [B]; weights {metric: number}, metrics missing from scores
    must have weight 0."""
    missing = [m for m, w in weights.items() if w and m not in scores]
    if missing:
        raise ValueError(f"weights given to metrics that were not scored: {missing}")
    used = [m for m, w in weights.items() if w]
    if not used:
        raise ValueError("every weight is 0: give at least one metric a weight")
    return sum(weights[m] * scores[m].double() for m in used)


def clip_iqa(image_embeds, pair_embeds, logit_scale=CLIP_IQA_LOGIT_SCALE):
    """image_embeds [B, D], pair_embeds [P, 2, D] (the text embeddings of P antonym pairs, the
    positive prompt first) -> [B, P]: the probability of each pair's positive prompt."""
    if pair_embeds.ndim != 3 or pair_embeds.shape[1] != 2:
        raise ValueError(f"pair_embeds must be [pairs, 2, dim], got {tuple(pair_embeds.shape)}")
    image = F.normalize(image_embeds, dim=-1)
    pairs = F.normalize(pair_embeds, dim=-1)
    logits = logit_scale * torch.einsum("bd,pkd->bpk", image, pairs)
    return logits.softmax(dim=-1)[..., 0]


def mrank(table, metrics=TABLE1_METRICS):
    """table: {method: {metric: value}} (higher is better) -> {method: mean rank}.

    Each metric ranks the methods that have a finite value for it; a method's mRank is the mean of
    its ranks over those metrics (NaN if it has none).
    """
    ranks = {method: [] for method in table}
    for metric in metrics:
        scored = [m for m in table if _finite(table[m].get(metric))]
        if not scored:
            continue
        # rankdata ranks ascending; negate so that the highest value gets rank 1.
        for method, rank in zip(scored, rankdata([-table[m][metric] for m in scored], method="average")):
            ranks[method].append(float(rank))
    return {method: sum(r) / len(r) if r else math.nan for method, r in ranks.items()}


def _finite(value):
    return value is not None and math.isfinite(value)

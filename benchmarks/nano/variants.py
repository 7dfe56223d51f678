"""The training variants of issue 15 (`--variant`): each is data, a train.Variant that enters its stages'
stamps as settings, so that adding one here rebuilds no other variant's stages (no stage imports this
module)."""
from .train import Variant

# FlexIP's gate as the paper starts it: alpha (image samples) and beta (1 - gamma of variant samples)
# learned from 0.9.
FLEXIP_GATE = {"mode": "learned", "alpha": 0.9, "beta": 0.9}

VARIANTS = {v.name: v for v in (
    Variant("paper", FLEXIP_GATE, description="the paper's formulation: learned gate from 0.9, image samples "
            "with their own captions, whole-scene references"),
    Variant("conflict", {"mode": "sampled"}, image_captions="other_view",
            description="(a) gamma ~ U(0, 1): the target is the reference with probability gamma, else another "
            "view; the caption is always the other view's"),
    Variant("subject", FLEXIP_GATE, references="subject",
            description="(b) the paper's, with references of the subject alone (exact mask, box 1.1-1.5x, grey)"),
    Variant("conflict-subject", {"mode": "sampled"}, image_captions="other_view", references="subject",
            description="(a) + (b)"),
    Variant("split-dropout", FLEXIP_GATE, text_on_images=0.5, image_timesteps=0.5,
            description="(c) the paper's, with image samples in the low-noise half of the schedule and their "
            "prompt dropped half the time"),
    Variant("fixed-0.99", {"mode": "fixed", "alpha": 0.99, "beta": 0.99},
            description="(d) the paper's with alpha = beta = 0.99 fixed"),
    # Combinations, from the hypotheses of the first round (benchmarks/README.md, written before their results).
    Variant("subject-split", FLEXIP_GATE, references="subject", text_on_images=0.5, image_timesteps=0.5,
            description="(b) + (c): references of the subject alone, image samples in the low-noise half and "
            "their prompt dropped half the time"),
    Variant("sampled-subject", {"mode": "sampled"}, references="subject",
            description="(b) with gamma trained uniformly (the sampled gate of (a)) but each image sample's own "
            "caption: no contradicting captions"),
    # Round 5 (benchmarks/README.md, written before its results): the recolour cases' low end.
    Variant("subject-recolour", FLEXIP_GATE, references="subject", recoloured_views=0.5,
            description="(b) + the colour conflict: half of the multi-view samples whose caption names the body "
            "colour show their target in another colour, which the caption names (beyond the paper)"),
    Variant("subject-recolour-fixed", {"mode": "fixed", "alpha": 0.9, "beta": 0.9}, references="subject",
            recoloured_views=0.5, description="subject-recolour with the gate fixed at alpha = beta = 0.9, so that "
            "the recoloured views train S (weight 0.9) far more than P (0.1)"),
    Variant("subject-recolour-s", FLEXIP_GATE, references="subject", recoloured_views=0.5, recoloured_gamma=0.0,
            description="subject-recolour with the recoloured views trained at gamma 0 (their own gamma in the "
            "manifest), so that they teach S alone and P never learns to drop the reference's colour"),
    # Round 6 (benchmarks/README.md, written before its results): identity at gamma 1 on the scene cases.
    Variant("subject-recolour-ends", FLEXIP_GATE, references="subject", recoloured_views=0.5, recoloured_gamma=0.0,
            image_gamma=1.0, description="subject-recolour-s with the image samples (target = reference) trained at "
            "their own gamma 1, so that P alone learns to keep what the reference shows, in the setting gamma 1 "
            "samples in; each end of the dial is then trained by its own samples and the gate learns only the "
            "multi-view samples' gamma"),
    # Round 7b (benchmarks/README.md, written before its results): P trained as the baseline is.
    Variant("subject-recolour-decoupled", FLEXIP_GATE, references="subject", recoloured_views=0.5,
            recoloured_gamma=0.0, image_gamma=1.0, view_gamma=1.0, description="subject-recolour-s with every sample "
            "that is not a recoloured edit pair at its own gamma 1: P alone trains on them as the baseline does, S "
            "alone on the edit pairs (gamma 0); the gate learns nothing"),
    # Round 8 (benchmarks/README.md, written before its results): P at full weight without an untrained S.
    Variant("subject-recolour-split", FLEXIP_GATE, references="subject", recoloured_views=0.5, recoloured_gamma=0.0,
            image_gamma=1.0, view_branches="coin", description="subject-recolour-decoupled with each ordinary multi-view "
            "pair at its own gamma 1 or 0 by a fixed coin: P alone learns from the image samples and half of the "
            "pairs, S alone from the other half and the edit pairs"),
    # Round 9 (benchmarks/README.md, written before its results): P and S each alone on every pair.
    Variant("subject-recolour-both", FLEXIP_GATE, references="subject", recoloured_views=0.5, recoloured_gamma=0.0,
            image_gamma=1.0, view_branches="both", description="subject-recolour-split with every multi-view pair "
            "twice, at its own gamma 1 as it is and at 0 (recoloured where subject-recolour-s recolours it): P alone "
            "learns from the image samples and every pair as the baseline does, S alone from every pair and the "
            "edit pairs; at the same steps each copy is drawn half as often, so it needs twice the baseline's "
            "passes (--adapter-steps)"),
)}

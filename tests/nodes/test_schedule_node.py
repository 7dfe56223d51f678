"""FlexIP Gamma Schedule and FlexIP Gamma Sweep through GatedApply on ComfyUI's real SD1.5 UNet (the
random full-shape checkpoint), in this process. The patches are called as ComfyUI calls them and
checked against the design note's formula in float64,

    out = Attn(q, K_text, V_text) + w * (gamma * Attn(q, Wk_P P, Wv_P P) + (1 - gamma) * Attn(q, Wk_S S, Wv_S S)),

with gamma from the schedule formula at the call's sigma and the layer's block, or gamma i for
image i of every CFG chunk; asymmetric values, so a reversed schedule, an ignored block
multiplier, a stale step's gamma or gammas in the wrong order all change the numbers."""
import math

import pytest
import torch

from flexip_core import COND, UNCOND
from flexip_core.weights import load_flexip

import random_models

START, END, CURVE, BLOCKS = 0.85, 0.15, "cosine", {"input": 0.6, "middle": 1.0, "output": 0.35}
SWEEP = "0.2, 0.9, 0.55"


@pytest.fixture(scope="module")
def flexip(pack):
    return pack.nodes.managed.ManagedFlexIP(load_flexip(random_models.flexip_sd15()))


def tokens(prompt_tokens):
    """(P, S) per CFG kind: P 20 tokens; S `prompt_tokens` for the prompt, 77 for the negative."""
    g = torch.Generator().manual_seed(prompt_tokens)
    return ({COND: torch.randn(1, 20, 768, generator=g), UNCOND: torch.randn(1, 20, 768, generator=g)},
            {COND: torch.randn(1, prompt_tokens, 768, generator=g), UNCOND: torch.randn(1, 77, 768, generator=g)})


def schedule_gamma(t, block, start=START, end=END, curve=CURVE, blocks=BLOCKS):
    """The schedule's gamma written out in float64 (README): m_block * (start + (end - start) * c(t))."""
    c = t if curve == "linear" else (1 - math.cos(math.pi * t)) / 2
    return blocks[block] * (start + (end - start) * c)


def attention64(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, written out, in float64; k / v may have batch 1."""
    q, k, v = (t.double().unflatten(-1, (heads, -1)).transpose(-3, -2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(-3, -2).flatten(-2)


def design_formula(q, k, v, heads, chunks, preservation, personalization, weights, gammas, strength):
    """The formula per CFG chunk, with that chunk's P and S; gammas: one per row of a chunk."""
    gamma = torch.tensor(gammas, dtype=torch.float64).view(-1, 1, 1)
    out = []
    for q_c, k_c, v_c, kind in zip(q.chunk(len(chunks)), k.chunk(len(chunks)), v.chunk(len(chunks)), chunks):
        p, s = preservation[kind].double(), personalization[kind].double()
        branch_p = attention64(q_c, p @ weights["to_k_p"].T, p @ weights["to_v_p"].T, heads)
        branch_s = attention64(q_c, s @ weights["to_k_s"].T, s @ weights["to_v_s"].T, heads)
        out.append(attention64(q_c, k_c, v_c, heads) + strength * (gamma * branch_p + (1 - gamma) * branch_s))
    return torch.cat(out)


def unet_attn2(diffusion_model, key):
    block, index, t = key
    blocks = diffusion_model.middle_block if block == "middle" else getattr(diffusion_model, f"{block}_blocks")[index]
    return blocks[1].transformer_blocks[t].attn2


class Layer:
    """One patched SD1.5 cross-attention layer called as ComfyUI calls it, with its float64 formula."""

    def __init__(self, model, flexip, patched, key, rows, chunks, preservation, personalization):
        self.attn2 = unet_attn2(model.model.diffusion_model, key)
        self.patch = patched.model_options["transformer_options"]["patches_replace"]["attn2"][key]
        self.key, self.chunks, self.rows = key, chunks, rows
        self.tokens = preservation, personalization
        projections = flexip.projections[key]
        self.weights = {n: getattr(projections, n).weight.double() for n in ("to_k_p", "to_v_p", "to_k_s", "to_v_s")}
        g = torch.Generator().manual_seed(7)
        batch = rows * len(chunks)
        hidden = torch.randn(batch, 64, self.attn2.to_q.in_features, generator=g)
        text = torch.randn(batch, 77, 768, generator=g)
        with torch.no_grad():
            self.qkv = tuple(to(x) for to, x in ((self.attn2.to_q, hidden), (self.attn2.to_k, text),
                                                 (self.attn2.to_v, text)))

    def __call__(self, sigma):
        q = self.qkv[0]
        options = {"cond_or_uncond": list(self.chunks), "sigmas": torch.full((self.rows,), sigma),
                   "block": self.key[:2], "block_index": self.key[2], "n_heads": self.attn2.heads,
                   "dim_head": q.shape[-1] // self.attn2.heads, "attn_precision": self.attn2.attn_precision}
        with torch.no_grad():
            return self.patch(*self.qkv, options).double()

    def formula(self, gammas, strength):
        return design_formula(*self.qkv, self.attn2.heads, self.chunks, *self.tokens, self.weights, gammas, strength)


def gated_apply(pack, model, flexip, tokens_, gamma=0.5, strength=0.7, schedule=None, sweep=None):
    (patched,) = pack.nodes.apply.GatedApply().apply(model, flexip, *tokens_, gamma, strength, 0.0, 1.0,
                                                     schedule=schedule, sweep=sweep)
    return patched


def make_schedule(pack, start=START, end=END, curve=CURVE):
    (schedule,) = pack.nodes.schedule.FlexIPGammaSchedule().make(start, end, curve, BLOCKS["input"],
                                                                 BLOCKS["middle"], BLOCKS["output"])
    return schedule


def assert_formula_and_not(out, expected, wrongs):
    """out is the formula within float32 rounding; each wrong wiring is off by far more."""
    tolerance = 1e-5 * expected.abs().max().item()
    error = (out - expected).abs().max().item()
    assert error < tolerance, f"off the design formula by {error:.3g}"
    for name, wrong in wrongs.items():
        assert (wrong - expected).abs().max().item() > 100 * tolerance, name


@pytest.mark.parametrize("key", [("input", 1, 0), ("output", 7, 0)])
def test_the_scheduled_patch_is_the_formula_at_each_sigma_in_its_block(pack, sd15_model, flexip, key):
    """At 0.2 and 0.7 of the sampling (sigmas from the model's own percent_to_sigma, between its
    timesteps), then 0.2 again: each call uses gamma(t, its block), never the slider's or a stale step's."""
    model, _ = sd15_model
    sampling = model.get_model_object("model_sampling")
    toks = tokens(154)
    patched = gated_apply(pack, model, flexip, toks, gamma=0.95, strength=0.7, schedule=make_schedule(pack))
    layer = Layer(model, flexip, patched, key, 2, (UNCOND, COND), *toks)
    block = key[0]
    for t, other in ((0.2, 0.7), (0.7, 0.2), (0.2, 0.7)):
        out = layer(sampling.percent_to_sigma(t))
        assert_formula_and_not(out, layer.formula([schedule_gamma(t, block)] * 2, 0.7), {
            "the slider's gamma": layer.formula([0.95] * 2, 0.7),
            "the schedule reversed": layer.formula([schedule_gamma(t, block, start=END, end=START)] * 2, 0.7),
            "the block multiplier ignored": layer.formula([schedule_gamma(t, "middle")] * 2, 0.7),
            "the other step's gamma": layer.formula([schedule_gamma(other, block)] * 2, 0.7),
            "linear instead of cosine": layer.formula([schedule_gamma(t, block, curve="linear")] * 2, 0.7),
        })


def test_a_constant_schedule_is_the_slider(pack, sd15_model, flexip):
    """start = end and multiplier 1 (the middle block) give exactly the slider's patch at that gamma."""
    model, _ = sd15_model
    toks = tokens(77)
    (flat,) = pack.nodes.schedule.FlexIPGammaSchedule().make(0.3, 0.3, "cosine", 0.2, 1.0, 0.9)
    key = ("middle", 0, 0)
    scheduled = Layer(model, flexip, gated_apply(pack, model, flexip, toks, schedule=flat), key, 1, (COND, UNCOND), *toks)
    slider = Layer(model, flexip, gated_apply(pack, model, flexip, toks, gamma=0.3), key, 1, (COND, UNCOND), *toks)
    assert slider.patch.schedule is None and slider.patch.gamma == 0.3
    sigma = model.get_model_object("model_sampling").percent_to_sigma(0.4)
    assert torch.equal(scheduled(sigma), slider(sigma))


@pytest.mark.parametrize("key, prompt_tokens, chunks", [
    (("middle", 0, 0), 77, (UNCOND, COND)),    # S 77 against 77 tokens: the chunks stacked in one call
    (("input", 1, 0), 154, (COND, UNCOND)),    # 154 against 77: one attention per chunk
    (("output", 11, 0), 77, (COND,)),          # a batch of the cond pass alone
])
def test_the_sweep_gives_image_i_of_every_chunk_gamma_i(pack, sd15_model, flexip, key, prompt_tokens, chunks):
    model, _ = sd15_model
    toks = tokens(prompt_tokens)
    (sweep,) = pack.nodes.schedule.FlexIPGammaSweep().make(SWEEP)
    assert sweep == (0.2, 0.9, 0.55)
    layer = Layer(model, flexip, gated_apply(pack, model, flexip, toks, gamma=0.5, sweep=sweep), key, 3, chunks, *toks)
    out = layer(5.0)
    assert_formula_and_not(out, layer.formula(sweep, 0.7), {
        "the slider's gamma": layer.formula([0.5] * 3, 0.7),
        "the gammas reversed": layer.formula(sweep[::-1], 0.7),
        "the gammas rotated": layer.formula(sweep[1:] + sweep[:1], 0.7),
    })
    assert torch.equal(layer(5.0), out)  # the weighted K/V are cached per layout: the same again


def test_a_sweep_of_another_length_than_the_batch_names_node_input_and_fix(pack, sd15_model, flexip):
    model, _ = sd15_model
    toks = tokens(77)
    (sweep,) = pack.nodes.schedule.FlexIPGammaSweep().make(SWEEP)
    layer = Layer(model, flexip, gated_apply(pack, model, flexip, toks, sweep=sweep), ("input", 1, 0), 2,
                  (COND, UNCOND), *toks)
    with pytest.raises(pack.nodes.errors.FlexIPInputError) as error:
        layer(5.0)
    assert str(error.value) == ("FlexIPGammaSweep, input 'gammas': 3 gammas for a latent batch of 2 images. "
                                "Fix: give one gamma per image (2), or set the latent's batch_size to 3.")


def test_a_schedule_and_a_sweep_together_are_refused(pack, sd15_model, flexip):
    model, _ = sd15_model
    with pytest.raises(ValueError, match=r"GatedApply, input 'sweep': a schedule and a sweep are both connected.*"
                                         r"Fix: disconnect the schedule or the sweep"):
        gated_apply(pack, model, flexip, tokens(77), schedule=make_schedule(pack), sweep=(0.2, 0.9))


@pytest.mark.parametrize("text, problem", [
    ("0.2, 0.9, x", "entry 3 ('x') is not a number"),
    ("0.2,, 0.9", "entry 2 ('') is not a number"),
    ("0.2, 1.5", "entry 2 (1.5) is not from 0 to 1"),
    ("nan", "entry 1 (nan) is not from 0 to 1"),
    ("  ", "no gammas given"),
])
def test_bad_sweeps_are_refused_before_running(pack, text, problem):
    sweep = pack.nodes.schedule.FlexIPGammaSweep
    message = sweep.VALIDATE_INPUTS(text)
    assert message.startswith(f"FlexIPGammaSweep, input 'gammas': {problem}") and "Fix: write one gamma" in message
    with pytest.raises(pack.nodes.errors.FlexIPInputError):
        sweep().make(text)
    assert sweep.VALIDATE_INPUTS("0, 0.25, 1") is True


def test_bad_schedule_values_are_refused(pack):
    schedule = pack.nodes.schedule.FlexIPGammaSchedule
    good = {"start": 1.0, "end": 0.3, "input_blocks": 1.0, "middle_block": 0.5, "output_blocks": 0.0}
    assert schedule.VALIDATE_INPUTS(**good) is True
    assert schedule.VALIDATE_INPUTS(**{**good, "end": float("nan")}) == (
        "FlexIPGammaSchedule, input 'end': nan is not a number from 0 to 1. Fix: set end between 0 and 1.")
    with pytest.raises(pack.nodes.errors.FlexIPInputError, match="input 'output_blocks': 1.5 is not"):
        schedule().make(**{**good, "output_blocks": 1.5}, curve="linear")
    with pytest.raises(pack.nodes.errors.FlexIPInputError, match="input 'curve': 'sigmoid' is not a curve"):
        schedule().make(**good, curve="sigmoid")


def test_the_weight_files_slider_map_applies_to_the_slider_the_sweep_and_the_schedule(
        pack, sd15_model, flexip, tmp_path, monkeypatch):
    """A file calibrated with exponent 1.5 (flexip_core.slider), loaded by FlexIPLoader: the branches are
    blended by gamma^1.5, whichever of the three gives gamma."""
    import folder_paths

    from flexip_core.slider import save_with_slider_exponent

    save_with_slider_exponent(random_models.flexip_sd15(), tmp_path / "calibrated.safetensors", 1.5)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "flexip", ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    (calibrated,) = pack.nodes.loader.FlexIPLoader().load("calibrated.safetensors")
    assert calibrated.slider_exponent == 1.5
    model, _ = sd15_model
    sampling = model.get_model_object("model_sampling")
    toks = tokens(77)
    key = ("input", 1, 0)

    slider = Layer(model, calibrated, gated_apply(pack, model, calibrated, toks, gamma=0.3), key, 1, (UNCOND, COND), *toks)
    assert_formula_and_not(slider(5.0), slider.formula([0.3 ** 1.5], 0.7), {"the paper's map": slider.formula([0.3], 0.7)})

    (sweep,) = pack.nodes.schedule.FlexIPGammaSweep().make(SWEEP)
    swept = Layer(model, calibrated, gated_apply(pack, model, calibrated, toks, sweep=sweep), key, 3, (COND, UNCOND), *toks)
    assert_formula_and_not(swept(5.0), swept.formula([g ** 1.5 for g in sweep], 0.7),
                           {"the paper's map": swept.formula(sweep, 0.7)})

    scheduled = Layer(model, calibrated, gated_apply(pack, model, calibrated, toks, schedule=make_schedule(pack)),
                      key, 1, (UNCOND, COND), *toks)
    out = scheduled(sampling.percent_to_sigma(0.2))
    assert_formula_and_not(out, scheduled.formula([schedule_gamma(0.2, "input") ** 1.5], 0.7),
                           {"the paper's map": scheduled.formula([schedule_gamma(0.2, "input")], 0.7)})


@pytest.mark.parametrize("stored", ["nan", "9"])
def test_a_damaged_slider_exponent_names_the_loader_input_and_fix(pack, tmp_path, monkeypatch, stored):
    import folder_paths
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(random_models.flexip_sd15(), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, tmp_path / "damaged.safetensors", {**metadata, "slider_exponent": stored})
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "flexip", ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    with pytest.raises(Exception, match=r"(?s)FlexIPLoader.*flexip_name.*slider_exponent.*0\.25 to 4\.0.*re-export"):
        pack.nodes.loader.FlexIPLoader().load("damaged.safetensors")

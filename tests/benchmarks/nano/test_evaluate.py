"""The miniature's evaluation (benchmarks/nano/evaluate.py): the exact evaluators, and the batched
GatedAttention patches the sweeps sample with."""
import pytest
import torch

from benchmarks.nano import world
from benchmarks.nano.evaluate import Decoder, identity_score, prompt_score


@pytest.fixture(scope="module")
def renderer():
    return world.Renderer()


@pytest.fixture(scope="module")
def decoder(renderer):
    return Decoder(renderer)


def test_every_picture_of_the_world_is_distinct(decoder):
    """Distinct, and by a margin far above the decoder's float32 rounding (about 1e-3 here)."""
    renders = torch.cat(decoder.renders).double()  # [scenes * subjects, pixels]
    sample = renders[torch.randperm(len(renders), generator=torch.Generator().manual_seed(0))[:300]]
    squared = sample.pow(2).sum(1, keepdim=True) - 2 * sample @ renders.T + renders.pow(2).sum(1)
    assert squared.lt(1e-9).sum(1).eq(1).all()  # only itself
    assert squared[squared >= 1e-9].min() > 0.5


def test_decoder_is_exact_on_clean_renders(renderer, decoder):
    g = torch.Generator().manual_seed(1)
    subjects = torch.randint(world.NUM_SUBJECTS, (400,), generator=g)
    scenes = torch.randint(world.NUM_SCENES, (400,), generator=g)
    found_subjects, found_scenes = decoder(renderer.render(subjects, scenes))
    assert torch.equal(found_subjects, subjects) and torch.equal(found_scenes, scenes)
    assert identity_score(found_subjects, subjects).eq(1).all()
    assert prompt_score(found_scenes, scenes).eq(1).all()


def test_identity_score_is_low_on_other_subjects(renderer, decoder):
    own = world.Subject("circle", "red", "stripes", "black")
    other = world.Subject("circle", "blue", "stripes", "white")  # shares shape and pattern: 2 of 4
    scene = world.Scene("sand", "left", "small").id
    found, _ = decoder(renderer.render([other.id], [scene]))
    assert identity_score(found, [own.id]).item() == 0.5
    # every other subject, each in a random scene: the mean agreement of unrelated subjects
    others = torch.tensor([i for i in range(world.NUM_SUBJECTS) if i != own.id])
    scenes = torch.randint(world.NUM_SCENES, (len(others),), generator=torch.Generator().manual_seed(2))
    found, _ = decoder(renderer.render(others, scenes))
    scores = identity_score(found, torch.full_like(others, own.id))
    assert scores.max() == 0.75 and scores.mean() < 0.3


def test_decoder_reads_noisy_pictures_as_their_subject(renderer, decoder):
    """Light pixel noise does not move the decoded subject or scene: the score is a property of the
    picture's content, not of exact pixel values."""
    g = torch.Generator().manual_seed(3)
    subjects = torch.randint(world.NUM_SUBJECTS, (200,), generator=g)
    scenes = torch.randint(world.NUM_SCENES, (200,), generator=g)
    noisy = (renderer.render(subjects, scenes) + 0.05 * torch.randn(200, 32, 32, 3, generator=g)).clamp(0, 1)
    found_subjects, found_scenes = decoder(noisy)
    assert identity_score(found_subjects, subjects).mean() > 0.97
    assert torch.equal(found_scenes, scenes)


# --- The sweeps' patches: GatedAttention batched over cases, through ComfyUI's sampler ---------

@pytest.fixture(scope="module")
def nano(comfy):
    """A random nano base (UNet with a non-zero output layer, text encoder, encoders) and a random
    FlexIP-nano module with distinct branches."""
    from flexip_core.model import FlexIP

    from benchmarks.nano import base as nano_base
    from benchmarks.nano.encoders import Encoders
    from benchmarks.nano.train import nano_config
    import comfy.model_patcher
    torch.manual_seed(0)
    model = nano_base.unet_model()
    torch.nn.init.normal_(model.diffusion_model.out[-1].weight, std=0.05)  # zero would hide every patch
    patcher = comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))
    config = nano_config(model.diffusion_model)
    base = nano_base.nano_base(patcher, nano_base.TextEncoder().eval(), Encoders().eval(), config)
    return base, FlexIP(config).eval()


def _run(base, flexip, cases, gamma, strength, p=None, s=None, noise=None):
    from benchmarks.nano.evaluate import Sampling, adapter_tokens, patched_model, reference_pictures, sample, sweep_noise
    _, references = reference_pictures(world.Renderer(), cases, 2 * base.config.clip.resolution)
    prompts = [c.prompt for c in cases]
    tokens = adapter_tokens(flexip, base, references, prompts)
    if p is not None:
        tokens = (p(tokens[0]), tokens[1])
    if s is not None:
        tokens = (tokens[0], s(tokens[1]))
    model = base.model if strength is None else patched_model(base.model, flexip, *tokens, gamma, strength)
    noise = sweep_noise(cases, 0, (12, 16, 16)) if noise is None else noise
    return sample(model, base.text(prompts), base.empty_text(len(prompts)).clone(), noise, Sampling(steps=2, cfg=3.0))


def _cases():
    _, held = world.split()
    return world.evaluation_cases(held[:3], 1)


def test_batched_cases_sample_as_each_case_alone(nano):
    base, flexip = nano
    cases = _cases()
    from benchmarks.nano.evaluate import sweep_noise
    noise = sweep_noise(cases, 0, (12, 16, 16))
    together = _run(base, flexip, cases, 0.3, 1.0, noise=noise)
    alone = torch.cat([_run(base, flexip, [case], 0.3, 1.0, noise=noise[i:i + 1]) for i, case in enumerate(cases)])
    torch.testing.assert_close(together, alone, atol=2e-4, rtol=0)  # batched kernels round differently
    assert (together - _run(base, flexip, cases, None, None)).abs().max() > 1e-3  # FlexIP changes the picture


def test_strength_zero_is_the_base_model_and_gamma_one_ignores_personalization(nano):
    base, flexip = nano
    cases = _cases()
    assert torch.equal(_run(base, flexip, cases, 0.3, 0.0), _run(base, flexip, cases, None, None))
    scrambled = lambda tokens: {kind: t.flip(0) + 1.0 for kind, t in tokens.items()}  # noqa: E731
    assert torch.equal(_run(base, flexip, cases, 1.0, 0.7), _run(base, flexip, cases, 1.0, 0.7, s=scrambled))
    assert (_run(base, flexip, cases, 0.99, 0.7) - _run(base, flexip, cases, 0.99, 0.7, s=scrambled)).abs().max() > 1e-4
    assert (_run(base, flexip, cases, 1.0, 0.7) - _run(base, flexip, cases, 1.0, 0.7, p=scrambled)).abs().max() > 1e-3

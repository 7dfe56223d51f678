"""Gamma schedules and gamma sweeps through the real ComfyUI server (POST /prompt), with the shipped API
workflows flexip_gamma_schedule_api.json and flexip_gamma_sweep_batch_api.json, full-shape random
model files, a 64 px image and few steps.

The patches log, at DEBUG, each call's layer, CFG chunks and the gamma they weighted the branches
with; the schedule's log is checked step by step and layer by layer against the schedule formula in
float64 at each step's sigma (the sampling fraction computed here from the model's own sigmas). The
images check the rest end to end: a schedule run equals the slider split at the step, and image i of
one sweep run equals image i of a run at gamma i."""
import io
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from flexip_client import ComfyError

SCHEDULE, SWEEP = "flexip_gamma_schedule_api.json", "flexip_gamma_sweep_batch_api.json"
GATED, LATENT, SAMPLER, SOURCE = "11", "12", "13", "16"  # node ids of both workflows
LAYERS = ["input_1_0", "input_2_0", "input_4_0", "input_5_0", "input_7_0", "input_8_0", "middle_0_0"] + [
    f"output_{i}_0" for i in range(3, 12)]
CALL = re.compile(r"FlexIP attn2 (\w+) chunks \[([\d, ]+)\] gamma (\[[^\]]*\]|\S+)")
SAME = 2     # pixel levels: the same gammas batched otherwise differ only by float32 rounding
APART = 10   # pixel levels: different gammas give different images


def pixels(png):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def max_difference(a, b):
    return int(np.abs(pixels(a) - pixels(b)).max())


def patch_calls(server, run):
    """[(layer, chunks, gamma)] the patches logged while run() ran, in order."""
    start = len(server.log_text())
    result = run()
    return result, [(layer, chunks, json.loads(gamma)) for layer, chunks, gamma in CALL.findall(server.log_text()[start:])]


def schedule_gamma(t, block, start, end, curve, blocks):
    c = t if curve == "linear" else (1 - math.cos(math.pi * t)) / 2
    return blocks[block] * (start + (end - start) * c)


def sampling_fraction(sigma, log_sigmas):
    """The t of percent_to_sigma(t) = sigma for SD1.5: its timestep T by log sigma, linear between the
    1000 training sigmas (ComfyUI's ModelSamplingDiscrete.sigma), then t = 1 - T / 999; float64."""
    timestep = np.interp(math.log(sigma), log_sigmas, np.arange(len(log_sigmas), dtype=np.float64))
    return 1.0 - timestep / (len(log_sigmas) - 1)


@pytest.fixture(scope="module")
def sd15_sampling(comfy):
    """SD1.5's model sampling (ComfyUI's defaults are SD1.5's betas), for the sampler's sigmas."""
    import comfy.model_sampling
    import comfy.samplers
    sampling = comfy.model_sampling.ModelSamplingDiscrete()
    return sampling, comfy.samplers.calculate_sigmas


def test_the_new_nodes_are_listed_with_tooltips(client):
    info = client.get_json("/object_info")
    for name, output in (("FlexIPGammaSchedule", "FLEXIP_GAMMA_SCHEDULE"), ("FlexIPGammaSweep", "FLEXIP_GAMMA_SWEEP")):
        node = info[name]
        assert node["category"] == "FlexIP" and node["description"] and node["output"] == [output]
        assert all(spec[1].get("tooltip") for spec in node["input"]["required"].values()), name
        assert len(node["output_tooltips"]) == 1 and node["output_tooltips"][0], name
    optional = info["FlexIPGatedApply"]["input"]["optional"]
    assert optional["schedule"][0] == "FLEXIP_GAMMA_SCHEDULE" and optional["sweep"][0] == "FLEXIP_GAMMA_SWEEP"
    assert optional["schedule"][1]["tooltip"] and optional["sweep"][1]["tooltip"]


def test_every_layer_uses_the_scheduled_gamma_of_its_block_at_every_step(server, client, test_prompt, sd15_sampling):
    """Three karras steps (sigmas between SD1.5's timesteps), cosine from 0.85 to 0.15, blocks 0.6 / 1 / 0.35."""
    schedule = {"start": 0.85, "end": 0.15, "curve": "cosine"}
    blocks = {"input": 0.6, "middle": 1.0, "output": 0.35}
    prompt = test_prompt(SCHEDULE, seed=31)
    prompt[SOURCE]["inputs"].update(schedule, input_blocks=blocks["input"], middle_block=blocks["middle"],
                                    output_blocks=blocks["output"])
    prompt[SAMPLER]["inputs"].update(steps=3, sampler_name="euler", scheduler="karras")
    _, calls = patch_calls(server, lambda: client.run(prompt))

    sampling, calculate_sigmas = sd15_sampling
    sigmas = calculate_sigmas(sampling, "karras", 3)[:-1].tolist()  # the sigma of each step (the last is 0)
    log_sigmas = sampling.log_sigmas.double().numpy()
    fractions = [sampling_fraction(s, log_sigmas) for s in sigmas]
    assert fractions[0] == 0.0 and 0.5 < fractions[1] < 0.7 and fractions[2] > 0.99

    assert len(calls) == 16 * 3  # cond and uncond batched: one call per layer per step
    for step, t in enumerate(fractions):
        layers = calls[16 * step:16 * (step + 1)]
        assert sorted(layer for layer, _, _ in layers) == sorted(LAYERS)
        for layer, chunks, gamma in layers:
            block = layer.split("_")[0]
            want = schedule_gamma(t, block, **schedule, blocks=blocks)
            assert gamma == pytest.approx(want, abs=1e-6), f"step {step}, {layer}"
            reversed_ = schedule_gamma(t, block, start=0.15, end=0.85, curve="cosine", blocks=blocks)
            assert step == 1 or abs(reversed_ - want) > 0.1  # reversed ends would show (at 0.5-0.7 they cross)


def test_a_schedule_run_is_the_slider_split_at_the_step(client, test_prompt):
    """Two steps: the first at sigma_max (t = 0, gamma = start), the second at sigma_min (t = 1, gamma = end).
    That equals two KSamplerAdvanced halves with GatedApply's slider at start, then at end, and not the reverse."""
    prompt = test_prompt(SCHEDULE, seed=32)
    prompt[SOURCE]["inputs"].update(start=0.9, end=0.2, curve="linear", input_blocks=1.0, middle_block=1.0,
                                    output_blocks=1.0)
    prompt[SAMPLER]["inputs"].update(sampler_name="euler", scheduler="normal")
    assert prompt[SAMPLER]["inputs"]["steps"] == 2
    (scheduled,) = client.images(client.run(prompt))

    def split(first, second):
        halves = json.loads(json.dumps(prompt))
        del halves[SOURCE], halves[GATED]["inputs"]["schedule"]
        sampler = halves.pop(SAMPLER)["inputs"]
        halves[GATED]["inputs"]["gamma"] = first
        halves["17"] = {"class_type": "FlexIPGatedApply", "inputs": {**halves[GATED]["inputs"], "gamma": second}}
        common = {k: sampler[k] for k in ("steps", "cfg", "sampler_name", "scheduler", "positive", "negative")}
        halves["18"] = {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": [GATED, 0], "add_noise": "enable", "noise_seed": sampler["seed"],
            "latent_image": [LATENT, 0], "start_at_step": 0, "end_at_step": 1, "return_with_leftover_noise": "enable"}}
        halves["19"] = {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": ["17", 0], "add_noise": "disable", "noise_seed": sampler["seed"],
            "latent_image": ["18", 0], "start_at_step": 1, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
        halves["14"]["inputs"]["samples"] = ["19", 0]
        (png,) = client.images(client.run(halves))
        return png

    assert max_difference(scheduled, split(0.9, 0.2)) <= SAME
    assert max_difference(scheduled, split(0.2, 0.9)) > APART


def test_one_sweep_run_gives_image_i_the_image_of_gamma_i(server, client, test_prompt):
    gammas = [0.2, 0.9, 0.55]
    sweep = test_prompt(SWEEP, seed=33)
    sweep[SOURCE]["inputs"]["gammas"] = ", ".join(map(str, gammas))
    sweep[LATENT]["inputs"]["batch_size"] = len(gammas)
    entry, calls = patch_calls(server, lambda: client.run(sweep))
    swept = client.images(entry)
    assert len(swept) == 3
    assert len(calls) == 16 * sweep[SAMPLER]["inputs"]["steps"]  # one sampler run, cond and uncond batched
    for _, chunks, logged in calls:
        assert logged == pytest.approx(gammas, abs=1e-7) and sorted(chunks.split(", ")) == ["0", "1"]

    for j, gamma in enumerate(gammas):  # the same batch of 3 at one slider gamma: its image j is the sweep's
        fixed = json.loads(json.dumps(sweep))
        del fixed[SOURCE], fixed[GATED]["inputs"]["sweep"]
        fixed[GATED]["inputs"]["gamma"] = gamma
        images = client.images(client.run(fixed))
        for i in range(3):
            difference = max_difference(swept[i], images[i])
            assert difference <= SAME if i == j else difference > APART, (i, gamma, difference)


def test_a_sweep_of_another_length_than_the_batch_fails_naming_node_input_and_fix(client, test_prompt):
    prompt = test_prompt(SWEEP, seed=34)
    prompt[SOURCE]["inputs"]["gammas"] = "0.2, 0.9, 0.55"
    prompt[LATENT]["inputs"]["batch_size"] = 2
    with pytest.raises(ComfyError) as failure:
        client.run(prompt)
    (error,) = [m[1] for m in failure.value.details["status"]["messages"] if m[0] == "execution_error"]
    assert error["node_type"] == "KSampler"  # the batch is known only when the sampler runs
    assert ("FlexIPGammaSweep, input 'gammas': 3 gammas for a latent batch of 2 images. Fix: give one gamma per "
            "image (2), or set the latent's batch_size to 3.") in error["exception_message"]
    prompt[SOURCE]["inputs"]["gammas"] = "0.2, 0.9"
    assert len(client.images(client.run(prompt))) == 2  # and the server still serves


def test_a_bad_sweep_or_schedule_is_refused_when_queued(client, test_prompt):
    prompt = test_prompt(SWEEP)
    prompt[SOURCE]["inputs"]["gammas"] = "0.2, x"
    with pytest.raises(ComfyError) as refusal:
        client.queue(prompt)
    errors = refusal.value.details["node_errors"]
    assert errors[SOURCE]["class_type"] == "FlexIPGammaSweep"
    assert ("FlexIPGammaSweep, input 'gammas': entry 2 ('x') is not a number. Fix: write one gamma"
            in json.dumps(errors[SOURCE]["errors"]))
    both = test_prompt(SCHEDULE)
    both["20"] = {"class_type": "FlexIPGammaSweep", "inputs": {"gammas": "0.5"}}
    both[GATED]["inputs"]["sweep"] = ["20", 0]
    with pytest.raises(ComfyError) as failure:
        client.run(both)
    assert "GatedApply, input 'sweep': a schedule and a sweep are both connected" in str(failure.value)

"""FlexIP under ComfyUI's model management in the real server: while the basic workflow runs, the
FlexIP module is in current_loaded_models; POST /free {"unload_models": true, "free_memory": true}
unloads it and leaves no FlexIP module alive in the server; the next prompt loads the file again
and gives the same image. The test-only node FlexIPTestLoadedModels reports from inside the server."""
import hashlib
import io
import time

from PIL import Image

PROBE = "FlexIPTestLoadedModels"


def digest(png):
    """Hash of the decoded pixels (the PNG's metadata differs between runs)."""
    return hashlib.sha256(Image.open(io.BytesIO(png)).tobytes()).hexdigest()


def report(entry, node_id):
    """(class names in current_loaded_models, FlexIP modules alive) as the probe node saw them."""
    out = entry["outputs"][node_id]
    return out["loaded_models"], out["flexip_modules"][0]


def run_with_probe(client, prompt):
    """The workflow with the probe after GatedApply: (image digest, probe report)."""
    (gated,) = [i for i, node in prompt.items() if node["class_type"] == "FlexIPGatedApply"]
    entry = client.run({**prompt, "probe": {"class_type": PROBE, "inputs": {"after": [gated, 0]}}})
    (png,) = client.images(entry)
    return digest(png), report(entry, "probe")


def free(client):
    """POST /free with both flags; the probe's report once the server has handled them."""
    client.post_json("/free", {"unload_models": True, "free_memory": True})
    # The worker thread handles the flags when it wakes; busy after the last prompt, it misses the
    # wake-up and handles them after the next prompt. So ask until the answer settles (it stays
    # at 1 if anything keeps the module).
    deadline = time.time() + 20
    while True:
        loaded, alive = report(client.run({"probe": {"class_type": PROBE, "inputs": {}}}), "probe")
        if (alive == 0 and "FlexIP" not in loaded) or time.time() > deadline:
            return loaded, alive
        time.sleep(0.5)


def test_free_releases_flexip_and_the_next_prompt_loads_it_again(server, client, test_prompt):
    prompt = test_prompt()
    free(client)  # earlier tests' prompts may have left FlexIP loaded and cached
    start = len(server.log_text())
    image, (loaded, alive) = run_with_probe(client, prompt)
    assert "FlexIP" in loaded and alive == 1, (loaded, alive)
    assert server.log_text()[start:].count("Requested to load FlexIP") == 1

    loaded, alive = free(client)
    assert "FlexIP" not in loaded and alive == 0, (loaded, alive)

    again, (loaded, alive) = run_with_probe(client, prompt)
    assert "FlexIP" in loaded and alive == 1, (loaded, alive)
    assert again == image
    assert server.log_text()[start:].count("Requested to load FlexIP") == 2

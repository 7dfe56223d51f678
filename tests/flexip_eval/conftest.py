"""Fixtures of the evaluation tests: cheap ComfyUI servers (core nodes only, no model: about
0.5 GB each) and tiny scoring models in local files. Spec writing and the cheap method are in helpers.py."""
import threading

import pytest

from tests.flexip_eval.tiny_models import tiny_aesthetic_head, tiny_dinov2, tiny_open_clip


@pytest.fixture(scope="session")
def start_servers():
    """start_servers(n) -> n fresh ComfyServers, started together; all stopped at the end."""
    from comfy_server import ComfyServer
    started = []

    def start(n):
        servers = [ComfyServer() for _ in range(n)]
        errors = []

        def boot(server):
            try:
                server.start()
            except Exception as e:  # reported below, in the test's thread
                errors.append(e)
        threads = [threading.Thread(target=boot, args=(s,)) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        started.extend(servers)
        if errors:
            raise errors[0]
        return servers
    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tiny_scoring(tmp_path_factory):
    """[scoring] tables using tiny random models saved as users keep them (CLIP with both towers and
    768-d embeddings, so it also feeds the aesthetic head)."""
    folder = tmp_path_factory.mktemp("scoring-models")
    return {"batch_size": 4,
            "clip": {"path": str(tiny_open_clip(folder / "tiny-clip"))},
            "dino": {"path": str(tiny_dinov2(folder / "tiny-dinov2.safetensors")), "resolution": 32},
            "aesthetic": {"head": str(tiny_aesthetic_head(folder / "aesthetic-head.pth"))}}

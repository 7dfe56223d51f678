"""One ComfyUI server as the runner sees it: scripts/flexip_client.py's HTTP client, with its
errors sorted into "the server is gone" (its work goes elsewhere) and "this prompt failed" (it is
retried on another server)."""
import http.client
import json
import sys
import threading
import urllib.error
import uuid
from pathlib import Path

try:
    import flexip_client
except ModuleNotFoundError:  # `python -m flexip_eval` from the repository root: scripts/ is not on the path
    sys.path.append(str(Path(__file__).resolve().parents[1] / "scripts"))
    import flexip_client


class ServerDown(RuntimeError):
    """The server did not answer (refused, reset, timed out)."""


class PromptFailed(RuntimeError):
    """The server answered, but refused or failed this prompt."""


def _calling(url, action):
    try:
        return action()
    except flexip_client.ComfyError as e:
        raise PromptFailed(str(e)) from None
    except urllib.error.HTTPError as e:
        raise PromptFailed(f"{url} answered HTTP {e.code}: {e.read()[:500].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise ServerDown(f"{url} did not answer: {e}") from None
    except ValueError as e:  # an answer that is not the JSON ComfyUI sends
        raise PromptFailed(f"{url} sent an unreadable answer: {e}") from None


class Server:
    def __init__(self, url, timeout=900.0):
        self.url = url.rstrip("/")
        self.client = flexip_client.Client(self.url)
        self.timeout = timeout
        self._uploads = {}
        self._lock = threading.Lock()

    def check(self):
        """Raises ServerDown unless the server answers."""
        _calling(self.url, lambda: self.client.get_json("/system_stats"))

    def upload(self, path):
        """The LoadImage name of a local image, uploaded once per server."""
        with self._lock:
            if path not in self._uploads:
                self._uploads[path] = _calling(self.url, lambda: self.client.upload_image(path))
            return self._uploads[path]

    def generate(self, prompt):
        """Run an API-format prompt that saves one image -> (PNG bytes, seconds the server spent on it)."""
        prompt_id = _calling(self.url, lambda: self.client.queue(prompt))
        try:
            entry = _calling(self.url, lambda: self.client.wait(prompt_id, self.timeout))
        except TimeoutError:
            self._drop(prompt_id)
            raise PromptFailed(f"{self.url}: prompt did not finish within {self.timeout:g} s") from None
        pngs = _calling(self.url, lambda: self.client.images(entry))
        if len(pngs) != 1:
            raise PromptFailed(f"the workflow gave {len(pngs)} images; an evaluation template must give exactly one "
                               "(one SaveImage or PreviewImage node, batch size 1)")
        return pngs[0], execution_seconds(entry)

    def _drop(self, prompt_id):
        try:
            self.client.post_json("/queue", {"delete": [prompt_id]})
        except (OSError, http.client.HTTPException, json.JSONDecodeError):
            pass  # best effort: the server may be gone as well


def with_own_file_names(prompt, prefix):
    """The prompt with every SaveImage writing under prefix plus a random suffix: servers that share
    an output folder (several ComfyUI processes on one machine) count file names independently and
    would otherwise overwrite each other's images before they are fetched."""
    for node in prompt.values():
        if node.get("class_type") == "SaveImage":
            node["inputs"]["filename_prefix"] = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return prompt


def execution_seconds(entry):
    """Seconds between ComfyUI's execution_start and execution_success messages (not the time the
    prompt waited in the server's queue); None if the server did not report them."""
    stamps = {kind: data.get("timestamp") for kind, data in entry.get("status", {}).get("messages", [])}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return (end - start) / 1000.0 if start is not None and end is not None else None

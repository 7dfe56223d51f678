"""Queue a FlexIP workflow on a ComfyUI server through its HTTP API and fetch the images.

    python3 scripts/flexip_client.py example_workflows/flexip_basic_api.json \
        --image subject.png --prompt "a photo of the subject on a beach" --gamma 0.3 --seed 7 \
        --server http://127.0.0.1:8188 --out outputs/

Works with any API-format workflow (ComfyUI: Workflow > Export (API)) that uses the FlexIP
nodes: the overrides find their nodes by class and, for the prompt, by the title "Positive".
Only the standard library is used.
"""
import argparse
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


class ComfyError(RuntimeError):
    """ComfyUI refused a prompt or failed running it; .details holds the server's JSON."""

    def __init__(self, message, details):
        super().__init__(message)
        self.details = details


class Client:
    def __init__(self, url="http://127.0.0.1:8188"):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex

    def _request(self, path, data=None, headers=None):
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    def get_json(self, path):
        return json.loads(self._request(path))

    def post_json(self, path, body):
        answer = self._request(path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return json.loads(answer) if answer else None  # some routes (POST /api/settings) answer 200 with no body

    def queue(self, prompt, workflow=None):
        """POST /prompt; returns the prompt id, or raises ComfyError with the node errors.

        workflow: the UI-format graph, stored in the PNGs' metadata as the UI stores it.
        """
        body = {"prompt": prompt, "client_id": self.client_id}
        if workflow is not None:
            body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        try:
            return self.post_json("/prompt", body)["prompt_id"]
        except urllib.error.HTTPError as e:
            details = json.loads(e.read() or b"{}")
            raise ComfyError(f"prompt refused: {json.dumps(details)}", details) from None

    def wait(self, prompt_id, timeout=900):
        """The prompt's /history entry once it has finished; ComfyError if it failed."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                if entry["status"].get("status_str") == "error":
                    errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                    message = errors[0]["exception_message"] if errors else "unknown error"
                    raise ComfyError(f"prompt failed: {message}", entry)
                return entry
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def run(self, prompt, workflow=None, timeout=900):
        return self.wait(self.queue(prompt, workflow), timeout)

    def image(self, meta):
        """PNG bytes of one image of a /history output ({filename, subfolder, type})."""
        return self._request("/view?" + urllib.parse.urlencode({k: meta[k] for k in ("filename", "subfolder", "type")}))

    def images(self, entry):
        """The PNG bytes of every image a finished prompt saved, in node order."""
        return [self.image(meta) for node_id in sorted(entry.get("outputs", {}), key=str)
                for meta in entry["outputs"][node_id].get("images", [])]

    def upload_image(self, path):
        """POST /upload/image; returns the name to put in a LoadImage node."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + (
                f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue"
                f"\r\n--{boundary}--\r\n").encode()
        answer = json.loads(self._request("/upload/image", body,
                                          {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return answer["name"] if not answer.get("subfolder") else f"{answer['subfolder']}/{answer['name']}"


def nodes_of(prompt, class_type, title=None):
    found = [node for node in prompt.values() if node["class_type"] == class_type
             and (title is None or node.get("_meta", {}).get("title") == title)]
    if not found:
        raise KeyError(f"the workflow has no {class_type} node" + (f" titled {title!r}" if title else ""))
    return found


def override(prompt, image=None, prompt_text=None, gamma=None, seed=None, models=None, size=None, steps=None,
             subject=None):
    """A copy of an API-format workflow with the given inputs replaced.

    models: {"checkpoint", "clip_vision", "dino", "flexip"} -> file name (any subset); the DINOv2
    loader is the CLIPVisionLoader whose current file name mentions dino.
    subject: a saved subject's name in models/flexip_subjects, for the FlexIPLoadSubject nodes.
    """
    prompt = json.loads(json.dumps(prompt))
    models = models or {}
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "LoadImage" and image is not None:
            inputs["image"] = image
        elif kind == "FlexIPGatedApply" and gamma is not None:
            inputs["gamma"] = gamma
        elif kind == "KSampler":
            inputs.update({k: v for k, v in (("seed", seed), ("steps", steps)) if v is not None})
        elif kind == "EmptyLatentImage" and size is not None:
            inputs.update(width=size, height=size)
        elif kind == "CheckpointLoaderSimple" and "checkpoint" in models:
            inputs["ckpt_name"] = models["checkpoint"]
        elif kind == "CLIPVisionLoader":
            role = "dino" if "dino" in inputs["clip_name"].lower() else "clip_vision"
            inputs["clip_name"] = models.get(role, inputs["clip_name"])
        elif kind == "FlexIPLoader" and "flexip" in models:
            inputs["flexip_name"] = models["flexip"]
        elif kind == "FlexIPLoadSubject" and subject is not None:
            inputs["subject_name"] = subject
    if prompt_text is not None:
        nodes_of(prompt, "CLIPTextEncode", "Positive")[0]["inputs"]["text"] = prompt_text
    return prompt


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", help="an API-format workflow JSON file")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--image", help="reference image file to upload and use")
    parser.add_argument("--prompt", help="text of the node titled 'Positive'")
    parser.add_argument("--gamma", type=float, help="0 = follow the prompt, 1 = keep the subject")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--size", type=int, help="image width and height in pixels")
    parser.add_argument("--steps", type=int, help="sampling steps")
    parser.add_argument("--subject", help="a saved subject in models/flexip_subjects (FlexIP Load Subject)")
    parser.add_argument("--out", default=".", help="folder for the images")
    args = parser.parse_args()

    client = Client(args.server)
    image = client.upload_image(args.image) if args.image else None
    prompt = override(json.loads(Path(args.workflow).read_text()), image, args.prompt, args.gamma, args.seed,
                      size=args.size, steps=args.steps, subject=args.subject)
    entry = client.run(prompt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(client.images(entry)):
        path = out / f"flexip_{i:03d}.png"
        path.write_bytes(png)
        print(path)


if __name__ == "__main__":
    main()

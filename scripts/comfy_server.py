"""Start the pinned ComfyUI test host as a real server on 127.0.0.1, for tests and the demo.

The server sees the model files under .host/models through an extra_model_paths.yaml written
here (the same mechanism a user's own ComfyUI offers), writes its outputs and logs under
.host/run/, and runs on the CPU.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import flexip_client
import host

RUN = host.HOST / "run"
# How long a starting server may take, in its own CPU time: a server niced behind other jobs on a busy machine
# gets a sliver of a core (ComfyUI 0.33.0 did not reach its node imports in 360 wall seconds beside four
# un-niced training runs), so a wall-clock limit fails a healthy start. It fails a stuck one instead: one that
# spins through START_CPU_SECONDS, or one that used no CPU at all for STALL_SECONDS (blocked, not waiting its turn).
START_CPU_SECONDS = 600
STALL_SECONDS = 600
MODELS = host.HOST / "models"
MODEL_FOLDERS = ("checkpoints", "clip_vision", "diffusion_models", "flexip")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_serving(process, url, log_text):
    """Return once the server at `url` answers; raise with its log's end if it exits or is stuck (see
    START_CPU_SECONDS). log_text() gives the log."""
    used, last_progress = 0.0, time.time()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {process.returncode}:\n{log_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=2).read()
            return
        except OSError:
            pass
        try:
            now_used = cpu_seconds(process.pid)
        except FileNotFoundError:
            continue  # it has just exited: poll() says so next
        if now_used > used:
            used, last_progress = now_used, time.time()
        problem = (f"used {used:.0f} s of CPU" if used > START_CPU_SECONDS else
                   f"used no CPU for {STALL_SECONDS} s" if time.time() - last_progress > STALL_SECONDS else None)
        if problem:
            process.terminate()
            raise RuntimeError(f"ComfyUI did not answer and {problem}:\n{log_text()[-3000:]}")
        time.sleep(0.5)


def write_model_paths():
    """An extra_model_paths.yaml that adds .host/models/<folder> to each ComfyUI model folder."""
    lines = ["flexip_test_host:", f"  base_path: {MODELS}"]
    lines += [f"  {folder}: {folder}" for folder in MODEL_FOLDERS]
    path = RUN / "extra_model_paths.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class ComfyServer:
    def __init__(self, port=None, verbose=False, front_end_root=None):
        """front_end_root: a frontend's static folder to serve instead of the venv's pinned
        comfyui-frontend-package (host.frontend_root() is the newest one the host has)."""
        self.port = port or free_port()
        self.front_end_root = front_end_root
        self.url = f"http://127.0.0.1:{self.port}"
        self.verbose = verbose
        self.process = None
        self.log_path = RUN / f"server-{self.port}.log"

    def start(self):
        for folder in ("input", "output", "user"):
            (RUN / folder).mkdir(parents=True, exist_ok=True)
        for folder in MODEL_FOLDERS:
            (MODELS / folder).mkdir(parents=True, exist_ok=True)
        args = [str(host.PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch", "--extra-model-paths-config", str(write_model_paths()),
                "--output-directory", str(RUN / "output"), "--input-directory", str(RUN / "input"),
                "--user-directory", str(RUN / "user"), "--database-url", "sqlite:///:memory:"]
        if self.verbose:
            args += ["--verbose", "DEBUG"]
        if self.front_end_root:
            args += ["--front-end-root", str(self.front_end_root)]
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(args, cwd=host.COMFYUI, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_until_serving(self.process, self.url, self.log_text)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.process:
            self.log.close()

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def client(self):
        return flexip_client.Client(self.url)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    # Serve until interrupted: python3 scripts/comfy_server.py [port]
    server = ComfyServer(int(sys.argv[1]) if len(sys.argv) > 1 else 8188).start()
    print(f"ComfyUI with comfyui-flexip at {server.url} (log: {server.log_path})", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()

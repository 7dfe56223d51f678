"""Generation over one or many ComfyUI servers.

- Every server gets `queue_depth` worker threads, so its ComfyUI queue never runs dry while an
  image is being fetched or the next prompt is sent.
- A server keeps to one (method, subject) at a time while it can, so ComfyUI's cache reuses the
  reference's encodings across prompts, seeds and control values; idle servers help others.
- Resumable: an image already on disk is skipped; images are written whole (temp file + rename).
- A prompt that fails is retried on another server (up to `retries` more servers), then given up.
- A server that stops answering is dropped; its prompts go back to the others. If every server
  is gone the run stops, and the same command later resumes it.
- Everything that happened goes to runs.jsonl (one event per line) for the report; each image's
  server and time go to generation.jsonl.
"""
import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from .comfy import PromptFailed, Server, ServerDown, with_own_file_names
from .template import fill

GENERATION_LOG = "generation.jsonl"
RUN_LOG = "runs.jsonl"
# A template that fails every prompt stops the run instead of failing thousands of prompts.
GIVE_UP_BEFORE_ANY_SUCCESS = 10


@dataclass
class Task:
    job: object
    failures: list = field(default_factory=list)  # (server url, message)

    def failed_on(self):
        return {url for url, _ in self.failures}


@dataclass
class RunSummary:
    generated: int = 0
    skipped: int = 0
    given_up: list = field(default_factory=list)   # (job, [(server, message)])
    left: int = 0                                   # not generated because no server was left
    dead_servers: list = field(default_factory=list)
    per_server: dict = field(default_factory=dict)

    @property
    def complete(self):
        return not self.given_up and not self.left


def now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Runner:
    def __init__(self, spec, out, servers=None, on_image=None, progress=True):
        """servers: URLs (default: the spec's); on_image(job, server_url) is called after each saved image."""
        self.spec, self.out = spec, Path(out)
        self.urls = list(servers or spec.servers)
        if not self.urls:
            raise ValueError("no ComfyUI server: list them in the spec ([servers] urls = [...]) or pass --server URL")
        self.on_image, self.progress = on_image, progress
        self.cond = threading.Condition()
        self.groups, self.owner, self.retry = {}, {}, deque()
        self.live, self.in_flight, self.stopped = set(), 0, False
        self.summary = RunSummary()
        self.log_lock = threading.Lock()

    # --- the run ----------------------------------------------------------------------------

    def run(self):
        self.out.mkdir(parents=True, exist_ok=True)
        jobs = self.spec.jobs()
        todo = [job for job in jobs if not (self.out / job.image).is_file()]
        self.summary.skipped = len(jobs) - len(todo)
        for job in todo:
            self.groups.setdefault((job.method, job.subject), deque()).append(Task(job))
        self.references = self._references({job.subject for job in todo})
        servers = [Server(url, self.spec.timeout) for url in self.urls]
        for server in servers:
            try:
                server.check()
                self.live.add(server.url)
            except ServerDown as e:
                self._event("unreachable", server=server.url, message=str(e))
                self.summary.dead_servers.append(server.url)
        self._event("start", images=len(jobs), to_generate=len(todo), found_on_disk=self.summary.skipped,
                    servers=self.urls, queue_depth=self.spec.queue_depth)
        if todo and not self.live:
            raise RuntimeError(f"none of the servers answers: {', '.join(self.urls)}")
        self.bar = tqdm(total=len(todo), desc="generate", unit="img", disable=not self.progress, dynamic_ncols=True)
        workers = [threading.Thread(target=self._worker, args=(server,), name=f"{server.url}#{k}", daemon=True)
                   for server in servers if server.url in self.live for k in range(self.spec.queue_depth)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        self.bar.close()
        self.summary.left = sum(len(q) for q in self.groups.values()) + len(self.retry)
        self._event("end", generated=self.summary.generated, given_up=len(self.summary.given_up),
                    left=self.summary.left, per_server=self.summary.per_server)
        return self.summary

    def _references(self, subject_ids):
        """Each reference copied to out/references under a name unique to its content, so servers
        never confuse two subjects' files (DreamBench++ reuses ids across categories)."""
        folder = self.out / "references"
        folder.mkdir(exist_ok=True)
        refs = {}
        for subject in self.spec.subjects:
            if subject.id in subject_ids:
                digest = hashlib.sha256(subject.image.read_bytes()).hexdigest()[:10]
                refs[subject.id] = folder / f"{subject.id}-{digest}{subject.image.suffix.lower()}"
                if not refs[subject.id].is_file():
                    shutil.copyfile(subject.image, refs[subject.id])
        return refs

    def _worker(self, server):
        while True:
            task = self._take(server.url)
            if task is None:
                return
            started = time.time()
            try:
                png, seconds = self._generate(server, task.job)
                self._save(server.url, task, png, seconds, time.time() - started)
            except ServerDown as e:
                self._server_down(server.url, task, str(e))
                return
            except PromptFailed as e:
                self._failed(server.url, task, str(e))
                continue
            except Exception as e:  # anything else (a full disk ...) must not leave the other workers waiting
                self._failed(server.url, task, f"{type(e).__name__}: {e}")
                continue
            if self.on_image:
                self.on_image(task.job, server.url)

    def _generate(self, server, job):
        method = self.spec.methods[job.method]
        values = {**method.params, "reference_image": server.upload(self.references[job.subject]),
                  "prompt": job.prompt, "seed": job.seed, "control": job.control,
                  "subject": self.spec.subject(job.subject).name}
        prefix = Path("flexip_eval", self.spec.name, job.image.relative_to("images").with_suffix(""))
        return server.generate(with_own_file_names(fill(method.workflow, values), prefix.as_posix()))

    # --- the shared state (all under self.cond) ---------------------------------------------

    def _take(self, url):
        with self.cond:
            while True:
                if self.stopped or url not in self.live:
                    return None
                task = self._pick(url)
                if task is not None:
                    self.in_flight += 1
                    return task
                if self.in_flight == 0:
                    return None  # what is left (if anything) only other servers may take
                self.cond.wait()

    def _pick(self, url):
        for task in self.retry:  # failed prompts first, on a server they have not failed on
            if url not in task.failed_on():
                self.retry.remove(task)
                return task
        own = [key for key, owner in self.owner.items() if owner == url and self.groups.get(key)]
        if own:
            return self.groups[own[0]].popleft()
        for key, tasks in self.groups.items():
            if tasks and key not in self.owner:
                self.owner[key] = url
                return tasks.popleft()
        busiest = max(self.groups, key=lambda k: len(self.groups[k]), default=None)
        if busiest is not None and self.groups[busiest]:
            return self.groups[busiest].pop()  # from the end: the owner keeps working from the front
        return None

    def _save(self, url, task, png, seconds, wall):
        path = self.out / task.job.image
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(png)
        os.replace(partial, path)
        self._log(GENERATION_LOG, image=task.job.image.as_posix(), server=url, seconds=seconds,
                  wall_seconds=round(wall, 3), attempts=len(task.failures) + 1, time=now())
        with self.cond:
            self.in_flight -= 1
            self.summary.generated += 1
            self.summary.per_server[url] = self.summary.per_server.get(url, 0) + 1
            self.bar.update(1)
            self.cond.notify_all()

    def _failed(self, url, task, message):
        task.failures.append((url, message))
        with self.cond:
            self.in_flight -= 1
            self._event("prompt_failed", image=task.job.image.as_posix(), server=url, message=message[:2000])
            if len(task.failures) > self.spec.retries or not (self.live - task.failed_on()):
                self._give_up(task)
            else:
                self.retry.append(task)
            self.cond.notify_all()

    def _give_up(self, task):
        self.summary.given_up.append((task.job, list(task.failures)))
        self._event("given_up", image=task.job.image.as_posix(), tried=[u for u, _ in task.failures])
        self.bar.set_postfix(given_up=len(self.summary.given_up), refresh=False)
        if len(self.summary.given_up) >= GIVE_UP_BEFORE_ANY_SUCCESS and self.summary.generated == 0:
            self.stopped = True
            self._event("stopped", message=f"the first {GIVE_UP_BEFORE_ANY_SUCCESS} prompts failed on every server "
                                           f"and none succeeded; last error: {task.failures[-1][1][:2000]}")

    def _server_down(self, url, task, message):
        with self.cond:
            self.in_flight -= 1
            if url in self.live:
                self.live.discard(url)
                self.summary.dead_servers.append(url)
                self.owner = {key: owner for key, owner in self.owner.items() if owner != url}
                self._event("server_down", server=url, message=message,
                            images_before=self.summary.per_server.get(url, 0), servers_left=sorted(self.live))
            if task.failures:
                self.retry.appendleft(task)
            else:
                self.groups[(task.job.method, task.job.subject)].appendleft(task)
            self._event("reassigned", image=task.job.image.as_posix(), server=url)
            for waiting in [t for t in self.retry if not (self.live - t.failed_on())]:
                self.retry.remove(waiting)
                self._give_up(waiting)
            self.cond.notify_all()

    def _event(self, kind, **data):
        self._log(RUN_LOG, event=kind, time=now(), **data)

    def _log(self, name, **record):
        with self.log_lock, open(self.out / name, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path):
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""The runner against real ComfyUI servers (the pinned host) with a cheap core-node method: a
server killed mid-run, a prompt failing on every server, a killed run resumed.

HEAVY (starts ComfyUI): flock /tmp/flexip-heavy.lock .host/venv/bin/python -m pytest tests/flexip_eval/test_runner_host.py
"""
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flexip_eval.cli import main, score_and_report
from flexip_eval.comfy import Server
from flexip_eval.runner import GENERATION_LOG, RUN_LOG, Runner, read_jsonl
from flexip_eval.scoring import SCORES, read_scores
from flexip_eval.spec import load_spec
from flexip_eval.template import fill
from tests.flexip_eval.helpers import blend_method, references, write_spec

REPO = Path(__file__).resolve().parents[2]
CONTROLS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def steady(start_servers):
    """Two servers that stay up for the whole module."""
    return start_servers(2)


def two_subjects(folder):
    a, b = references(folder / "refs", 2)
    return [("cat", a, ["a cat on a beach", "a cat in the snow"]), ("mug", b, ["a mug on a table", "a mug in space"])]


def test_a_server_killed_mid_run_leaves_its_work_to_the_other(tmp_path, steady, start_servers, tiny_scoring):
    (victim,) = start_servers(1)
    survivor = steady[0]
    spec = load_spec(write_spec(tmp_path, subjects=two_subjects(tmp_path), seeds=(0, 1), controls=CONTROLS,
                                methods={"blend": blend_method()}, servers=[victim.url, survivor.url],
                                scoring=tiny_scoring))
    out = tmp_path / "out"
    made = Counter()

    def kill_the_victim_after_three(job, url):
        made[url] += 1
        if url == victim.url and made[url] == 3:
            victim.process.kill()
    summary = Runner(spec, out, on_image=kill_the_victim_after_three, progress=False).run()

    jobs = spec.jobs()
    assert len(jobs) == 40 and summary.complete and summary.generated == 40
    assert all((out / job.image).is_file() for job in jobs)
    assert summary.dead_servers == [victim.url]
    assert summary.per_server[victim.url] >= 3 and summary.per_server[survivor.url] == 40 - summary.per_server[victim.url]
    events = read_jsonl(out / RUN_LOG)
    (down,) = [e for e in events if e["event"] == "server_down"]
    assert down["server"] == victim.url and down["servers_left"] == [survivor.url]
    log = read_jsonl(out / GENERATION_LOG)
    assert sorted(r["image"] for r in log) == sorted(j.image.as_posix() for j in jobs)
    # Whichever server made an image, it is the method's: the victim's image, made again on the survivor.
    record = next(r for r in log if r["server"] == victim.url)
    job = next(j for j in jobs if j.image.as_posix() == record["image"])
    server = Server(survivor.url)
    reference = server.upload(next((out / "references").glob(f"{job.subject}-*")))
    values = {**spec.methods["blend"].params, "reference_image": reference,
              "prompt": job.prompt, "seed": job.seed, "control": job.control, "subject": job.subject}
    png, _ = server.generate(fill(spec.methods["blend"].workflow, values))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(Image.open(out / job.image)))

    report = score_and_report(spec, out, progress=False)
    rows = read_scores(out / SCORES)
    assert len(rows) == 40 and {r["server"] for r in rows} == {victim.url, survivor.url}
    assert all(np.isfinite([r[m] for m in ("clip_t", "clip_i", "dino_i", "clip_iqa", "aesthetic")]).all() for r in rows)
    assert f"server {victim.url} stopped answering" in report.read_text()


def test_a_failing_prompt_is_tried_on_the_other_server_then_given_up(tmp_path, steady):
    """blend_factor 1.5 is refused by ComfyUI's validation on any server."""
    subject_id, image, prompts = two_subjects(tmp_path)[0]
    spec = load_spec(write_spec(tmp_path, subjects=[(subject_id, image, prompts[:1])], controls=(0.0, 1.0, 0.5),
                                methods={"blend": blend_method(), "broken": blend_method(controls=[1.5])},
                                servers=[s.url for s in steady]))
    out = tmp_path / "out"
    summary = Runner(spec, out, progress=False).run()
    assert summary.generated == 3 and summary.left == 0
    ((job, failures),) = summary.given_up
    assert job.method == "broken" and sorted(url for url, _ in failures) == sorted(s.url for s in steady)
    assert all("blend_factor" in message for _, message in failures)
    events = read_jsonl(out / RUN_LOG)
    assert [e["server"] for e in events if e["event"] == "prompt_failed"] == [url for url, _ in failures]
    report = score_and_report(spec, out, progress=False)  # no [scoring]: the report still tells the story
    assert "gave up images/broken/" in report.read_text()


def test_a_template_that_always_fails_stops_the_run(tmp_path, steady):
    (subject,) = two_subjects(tmp_path)[:1]
    spec = load_spec(write_spec(tmp_path, subjects=[subject], seeds=range(6), controls=(1.5, 2.0),
                                methods={"broken": blend_method()}, servers=[steady[0].url]))
    summary = Runner(spec, tmp_path / "out", progress=False).run()
    # 2 prompts x 6 seeds x 2 controls; the prompts in flight when it stops fail too (queue depth 2)
    assert summary.generated == 0 and 10 <= len(summary.given_up) <= 11 and len(summary.given_up) + summary.left == 24
    assert [e for e in read_jsonl(tmp_path / "out" / RUN_LOG) if e["event"] == "stopped"]


def test_a_killed_run_resumes_without_regenerating_finished_images(tmp_path, steady, tiny_scoring):
    spec_path = write_spec(tmp_path, subjects=two_subjects(tmp_path), seeds=(0, 1), controls=CONTROLS,
                           methods={"blend": blend_method(size=256)}, servers=[steady[1].url], queue_depth=1,
                           scoring=tiny_scoring)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "flexip_eval", "run", str(spec_path), "--out", str(out), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user runs it from the repository
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while len(list(out.glob("images/*/*/*.png"))) < 8 and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {p: p.stat().st_mtime_ns for p in out.glob("images/*/*/*.png")}
    assert 8 <= len(before) < 40, f"the first run was not killed midway: {len(before)} images\n{first.stdout.read()}"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    after = {p: p.stat().st_mtime_ns for p in out.glob("images/*/*/*.png")}
    assert len(after) == 40 and all(after[p] == mtime for p, mtime in before.items())
    starts = [e for e in read_jsonl(out / RUN_LOG) if e["event"] == "start"]
    assert [s["found_on_disk"] for s in starts] == [0, len(before)] and starts[1]["to_generate"] == 40 - len(before)
    second_run = read_jsonl(out / GENERATION_LOG)[-(40 - len(before)):]
    assert {r["image"] for r in second_run} == {p.relative_to(out).as_posix() for p in after} - \
        {p.relative_to(out).as_posix() for p in before}
    assert len(read_scores(out / SCORES)) == 40 and (out / "report.md").is_file()
    third = subprocess.run(command + ["--generate-only"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "generated 0, found on disk 40" in third.stdout


def test_score_command_rescores_without_a_server(tmp_path, steady, tiny_scoring):
    (subject,) = two_subjects(tmp_path)[:1]
    spec_path = write_spec(tmp_path, subjects=[subject], controls=(0.0, 1.0), methods={"blend": blend_method()},
                           servers=[steady[0].url], scoring=tiny_scoring)
    out = tmp_path / "out"
    assert main(["run", str(spec_path), "--out", str(out), "--no-progress"]) == 0
    first = (out / SCORES).read_text()
    (out / SCORES).unlink()
    write_spec(tmp_path, subjects=[subject], controls=(0.0, 1.0), methods={"blend": blend_method()},
               servers=["http://127.0.0.1:9"], scoring=tiny_scoring)  # no server there: score must not need one
    assert main(["score", str(spec_path), "--out", str(out), "--no-progress"]) == 0
    assert (out / SCORES).read_text() == first

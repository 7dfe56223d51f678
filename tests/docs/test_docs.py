"""The documentation: README.md stays short, every relative link in README.md, docs/ and the help
pages (js/docs/) resolves, down to the heading an anchor names, and every command in a ```sh block
is one the tests or CI run (the file that runs it holds the program and every --option the docs
use) or is marked GPU-only."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "js" / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
GPU_ONLY = "# GPU-only"
# A command's program (the first key found in it) -> the files that run it, with its options.
RUNNERS = {
    "scripts/demo.sh": ["tests/host/test_doc_commands.py"],
    "scripts/test.sh": [".ci/run"],
    "scripts/flexip_client.py": ["tests/host/test_doc_commands.py"],
    "flexip_train.build_manifest": ["tests/flexip_train/test_builders.py"],
    "flexip_train": ["tests/flexip_train/sd15_run.py", "tests/flexip_train/test_config.py", "tests/docs/test_docs.py",
                     "tests/flexip_train/test_shards.py", "tests/flexip_train/test_training_recipe.py"],
    "flexip_eval": ["tests/flexip_eval/test_runner_host.py"],
    "benchmarks.nano": ["tests/benchmarks/nano/test_run.py"],
    "requirements.txt": ["scripts/host-requirements.txt"],  # pip install -r requirements.txt: the test host does
}


def rel(path):
    return path.relative_to(REPO).as_posix()


def prose(text):
    """The text without fenced code blocks and inline code, where a (...) is not a link."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


def slug(heading):
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(path.read_text()), re.M)}


def commands(path):
    """(line number, command) of every line of the page's ```sh blocks."""
    found = []
    for block in re.finditer(r"^```sh\n(.*?)^```", path.read_text(), re.M | re.S):
        first = path.read_text()[:block.start()].count("\n") + 2
        for offset, line in enumerate(block.group(1).splitlines()):
            if line.strip():
                found.append((first + offset, line.strip()))
    return found


def test_readme_is_short():
    assert (REPO / "README.md").stat().st_size < 8 * 1024


def test_the_pages_are_the_ones_checked():
    assert {rel(p) for p in PAGES} >= {"README.md", "docs/install.md", "docs/nodes.md", "docs/workflows.md",
                                      "docs/training.md", "docs/evaluation.md", "docs/miniature.md",
                                      "docs/benchmarks.md", "docs/troubleshooting.md", "docs/development.md"}
    assert len([p for p in PAGES if p.parent.name == "docs" and p.parent.parent.name == "js"]) == 10


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_resolves(page):
    links = LINK.findall(prose(page.read_text()))
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{rel(page)}: {link} -> {path} does not exist"
        assert REPO in path.parents or path == REPO, f"{rel(page)}: {link} leaves the repository"
        if anchor:
            assert path.suffix == ".md" and anchor in anchors(path), f"{rel(page)}: no heading #{anchor} in {target or 'it'}"


def test_the_link_check_finds_broken_links(tmp_path):
    """The checker itself: a missing file and a missing heading are caught."""
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [gone](missing.md) `[not a link](x)`\n\n## A b.c\n[anchor](#nope)\n")
    found = LINK.findall(prose(page.read_text()))
    assert found == ["#top", "missing.md", "#nope"]
    assert anchors(page) == {"top", "a-bc"} and slug("gated_apply.py: what FlexIP costs") == "gated_applypy-what-flexip-costs"


@pytest.mark.parametrize("page", [p for p in PAGES if commands(p)], ids=rel)
def test_every_command_is_run_by_the_tests_or_marked_gpu_only(page):
    for line, command in commands(page):
        if command.endswith(GPU_ONLY):
            continue
        program = next((p for p in RUNNERS if p in command), None)
        assert program, f"{rel(page)}:{line}: no test runs `{command}` (add one, or mark it {GPU_ONLY})"
        runners = [(REPO / f).read_text() for f in RUNNERS[program]]
        assert all(program in text for text in runners), f"{program}: a runner in {RUNNERS[program]} does not run it"
        for option in re.findall(r"(?<!\S)--[a-z][\w-]*", command):
            assert any(f'"{option}"' in text or f"{option} " in text for text in runners), \
                f"{rel(page)}:{line}: {option} of `{command}` is not used by {RUNNERS[program]}"


def test_print_config_writes_a_config_the_trainer_reads(tmp_path):
    """docs/training.md's first command: its output is a complete TOML file."""
    out = subprocess.run([sys.executable, "-m", "flexip_train", "--print-config"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    config = tomllib.loads(out.stdout)
    assert {"model", "data", "run"} <= set(config), sorted(config)


def test_the_registry_metadata():
    comfy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]
    assert comfy["requires-comfyui"] == ">=0.3.75,<0.34.0"
    icon = comfy["Icon"]
    prefix = "https://raw.githubusercontent.com/comfyui-flexip/comfyui-flexip/main/"
    assert icon.startswith(prefix) and (REPO / icon[len(prefix):]).is_file()

"""The miniature's stage cache (benchmarks/nano/stages.py): a stage's stamp covers the code of
every repository module it imports, so an edit anywhere in that code rebuilds it."""
import shutil

from benchmarks.nano.stages import REPO, Stages, source_files


def test_a_stage_covers_every_repository_module_it_imports():
    adapters = {p.relative_to(REPO).as_posix() for p in source_files(["train", "data"])}
    # the Trainer, the method it injects, and the nano modules they come through
    assert {"flexip_train/loop.py", "flexip_train/dataset.py", "flexip_core/patch.py", "flexip_core/gate.py",
            "benchmarks/nano/train.py", "benchmarks/nano/world.py"} <= adapters
    assert not any(name.startswith(("nodes/", "tests/", ".host/")) for name in adapters)
    data = {p.relative_to(REPO).as_posix() for p in source_files(["world", "data"])}
    assert "flexip_train/builders.py" in data and "flexip_train/loop.py" not in data


def test_an_edit_to_a_training_module_rebuilds_the_stage(tmp_path):
    code = tmp_path / "code"
    for package in ("benchmarks", "flexip_core", "flexip_train"):
        shutil.copytree(REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    stages = Stages(tmp_path / "cache", rebuild=False, code_root=code)
    settings = {"steps": 10}
    assert not stages.current("flexip-paper", settings, ["train", "data"])
    (stages.folder("flexip-paper") / "flexip.safetensors").write_bytes(b"weights")
    stages.done()
    assert Stages(tmp_path / "cache", False, code).current("flexip-paper", settings, ["train", "data"])
    loop = code / "flexip_train" / "loop.py"
    loop.write_text(loop.read_text() + "\n# an edit\n")
    stages = Stages(tmp_path / "cache", False, code)
    assert not stages.current("flexip-paper", settings, ["train", "data"])
    assert not (stages.folder("flexip-paper") / "flexip.safetensors").exists()  # cleared for the rebuild
    # an edit elsewhere (the data stage does not import the loop) leaves the data stage current
    assert not Stages(tmp_path / "cache", False, code).current("data", [1], ["world", "data"])


def test_a_stage_being_built_makes_another_process_wait_for_it(tmp_path):
    """Two runs in parallel share a stage: the second waits for the first's done() and then finds it
    current, instead of clearing the folder under it."""
    import subprocess
    import sys
    import time
    stages = Stages(tmp_path, rebuild=False)
    assert not stages.current("base", [1], ["world"])
    (stages.folder("base") / "weights").write_text("built")
    other = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[2]); from benchmarks.nano.stages import Stages; "
        "print(Stages(sys.argv[1], False).current('base', [1], ['world']))"), str(tmp_path), str(REPO)],
        stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    assert other.poll() is None  # waiting on the lock
    stages.done()
    assert other.communicate(timeout=60)[0].strip() == "True"
    assert (stages.folder("base") / "weights").read_text() == "built"

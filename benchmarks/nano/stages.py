"""The miniature's stage cache: each stage's output is kept with a stamp of its settings, its code (every
repository module it imports, found by reading their import statements) and the stamps of the stages it is
built from. No stage imports this module, so changing it rebuilds nothing."""
import ast
import fcntl
import hashlib
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def source_files(modules, root=REPO):
    """Every file of the repository at `root` that the nano modules import, directly or through
    other repository modules (flexip_core, flexip_train, ...), imports inside functions included:
    each file's import statements (ast), followed wherever they name a file under `root`."""
    root = Path(root).resolve()

    def file_of(name):
        base = root.joinpath(*name.split("."))
        return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)

    todo = [file_of(f"benchmarks.nano.{m}") for m in modules]
    found = set()
    while todo:
        path = todo.pop()
        if path is None or path in found:
            continue
        found.add(path)
        package = path.parent.relative_to(root).parts
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = package[:len(package) - node.level + 1] if node.level else ()
                stem = ".".join((*parent, *(node.module.split(".") if node.module else ())))
                names = [stem] + [f"{stem}.{a.name}" for a in node.names]  # "from x import module" too
            else:
                continue
            for name in names:
                parts = name.split(".")
                todo += [file_of(".".join(parts[:k])) for k in range(1, len(parts) + 1)]  # packages' __init__ too
    return sorted(found)


def code_hash(*modules, root=REPO):
    digest = hashlib.sha256()
    for path in source_files(modules, root):
        digest.update(path.relative_to(Path(root).resolve()).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class Stages:
    """Cached stages. current(name, settings, modules, after) says whether a stage's cached output
    is current (its settings, its code and the stamps of the stages it is built from unchanged),
    clearing it if not; done() stamps it with the time it took, which the report shows for cached
    stages too. A stage being built holds a lock file from current() to done(), so that runs of
    several variants in parallel processes wait for a shared stage (the base, a baseline) instead
    of building it twice."""

    def __init__(self, root, rebuild, code_root=REPO):
        self.root, self.rebuild, self.code_root = Path(root), rebuild, code_root
        self.stamps, self.pending = {}, None

    def folder(self, name):
        return self.root / name

    def current(self, name, settings, modules, after=()):
        stamp = {"settings": settings, "code": code_hash(*modules, root=self.code_root),
                 "after": {a: hashlib.sha256(json.dumps(self.stamps[a], sort_keys=True).encode()).hexdigest()[:16]
                           for a in after}}
        self.stamps[name] = stamp
        folder, path = self.folder(name), self.folder(name) / "stamp.json"
        self.root.mkdir(parents=True, exist_ok=True)
        lock = open(self.root / f"{name}.lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by done(), or by the OS if the builder dies
        if not self.rebuild and path.exists() and json.loads(path.read_text())["stamp"] == stamp:
            lock.close()
            return True
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.pending = (path, stamp, time.time(), time.process_time(), lock)
        return False

    def done(self):
        path, stamp, start, cpu, lock = self.pending
        path.write_text(json.dumps({"stamp": stamp, "started": start, "seconds": time.time() - start,
                                    "cpu_seconds": time.process_time() - cpu}, indent=1, sort_keys=True))
        lock.close()

    def seconds(self, name, kind="seconds"):
        """The stage's build time: wall-clock "seconds", or "cpu_seconds" (this process's CPU time: on one
        torch thread, about what the stage takes on a quiet core however busy the machine was)."""
        return json.loads((self.folder(name) / "stamp.json").read_text()).get(kind)

"""Fixtures of the weight-file tests: a pickle that runs code, and a spy on every unpickler."""
import pickle

import pytest
import torch


def touch(path):
    open(path, "w").close()


class Payload:
    """Unpickling this runs code (creates the marker file): it must never be unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return touch, (self.marker,)


@pytest.fixture
def payload(tmp_path):
    """(an object whose unpickling creates a marker file, that marker's path)."""
    marker = tmp_path / "code_ran"
    return Payload(str(marker)), marker


@pytest.fixture
def unpickling_calls(monkeypatch):
    """Every way this process could unpickle, replaced by a recorder that refuses: the code under
    test must tell what a pickled file is from its bytes alone. The list must stay empty."""
    calls = []

    def refuse(name):
        def unpickle(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called: the file was unpickled")
        return unpickle

    for owner, name in ((torch, "load"), (torch.serialization, "load"), (pickle, "load"),
                        (pickle, "loads"), (pickle, "Unpickler"), (pickle, "_Unpickler"),
                        (torch._weights_only_unpickler, "Unpickler"), (torch._weights_only_unpickler, "load")):
        monkeypatch.setattr(owner, name, refuse(f"{owner.__name__}.{name}"))
    return calls

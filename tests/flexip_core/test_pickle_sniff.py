"""read_pickle: what a pickled file holds, found from its opcodes without unpickling it."""
import pickle
import zipfile
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from flexip_core import pickle_sniff
from flexip_core.pickle_sniff import read_pickle


def ip_adapter_dict(context):
    """IP-Adapter's .bin layout (two state dicts, real key names), tiny tensors, real context width."""
    return {"image_proj": OrderedDict([("proj.weight", torch.zeros(8, 4)), ("norm.bias", torch.zeros(4))]),
            "ip_adapter": OrderedDict([("1.to_k_ip.weight", torch.zeros(2, context)),
                                       ("1.to_v_ip.weight", torch.zeros(2, context)),
                                       ("31.to_k_ip.weight", torch.zeros(3, context))])}


def ip_adapter_shapes(context):
    return {"image_proj.proj.weight": (8, 4), "image_proj.norm.bias": (4,),
            "ip_adapter.1.to_k_ip.weight": (2, context), "ip_adapter.1.to_v_ip.weight": (2, context),
            "ip_adapter.31.to_k_ip.weight": (3, context)}


@pytest.mark.parametrize("save", [
    dict(),                                              # zip, protocol 2: what torch.save writes today
    dict(_use_new_zipfile_serialization=False),          # legacy: a bare pickle stream
    dict(pickle_protocol=4),                             # STACK_GLOBAL, MEMOIZE, FRAME
    dict(pickle_protocol=5, _use_new_zipfile_serialization=False),
], ids=["zip", "legacy", "zip-protocol4", "legacy-protocol5"])
@pytest.mark.parametrize("context", [768, 2048])
def test_tensor_names_and_shapes(tmp_path, unpickling_calls, save, context):
    path = tmp_path / "ip-adapter.bin"
    torch.save(ip_adapter_dict(context), path, **save)
    summary = read_pickle(path)
    assert summary.tensors == ip_adapter_shapes(context)
    assert summary.imports == () and summary.complete
    assert unpickling_calls == []


def test_parameters_scalars_and_nested_names(tmp_path, unpickling_calls):
    path = tmp_path / "checkpoint.ckpt"
    torch.save({"state_dict": {"model": {"w": torch.nn.Parameter(torch.zeros(3, 5))}, "step": torch.tensor(7)},
                "epoch": 3, "note": "x"}, path)
    summary = read_pickle(path)
    assert summary.tensors == {"state_dict.model.w": (3, 5), "state_dict.step": ()}
    assert summary.complete and unpickling_calls == []


@pytest.mark.parametrize("protocol", [2, 5])
def test_code_it_would_run_is_named_not_run(tmp_path, unpickling_calls, payload, protocol):
    code, marker = payload
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"w": torch.zeros(2), "state": code}, protocol=protocol))
    summary = read_pickle(path)
    # pickle.dumps stores a tensor's data through torch.load itself: named too.
    assert summary.imports == ("tests.flexip_core.conftest.touch", "torch.storage._load_from_bytes")
    assert summary.tensors == {"w": (2,)} and summary.complete
    assert not marker.exists() and unpickling_calls == []


@pytest.mark.parametrize("make", ["safetensors", "text", "zip", "empty"])
def test_not_a_pickle(tmp_path, make):
    path = tmp_path / "file.bin"
    if make == "safetensors":
        save_file({"x": torch.zeros(2)}, path)
    elif make == "text":
        path.write_text("<html>404</html>")
    elif make == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("images/cat.png", b"not a pickle")
    else:
        path.write_bytes(b"")
    assert read_pickle(path) is None


def test_truncated_download_is_still_a_pickle(tmp_path):
    path = tmp_path / "ip-adapter.bin"
    torch.save(ip_adapter_dict(768), path)
    path.write_bytes(path.read_bytes()[:300])
    summary = read_pickle(path)
    assert summary is not None and not summary.complete


def test_damaged_opcodes(tmp_path):
    path = tmp_path / "damaged.pt"
    path.write_bytes(b"\x80\x02}q\x00X\x05\x00\x00\x00\xff\xfe\xfd\xfc\xfbK\x01s.")  # invalid UTF-8 key
    summary = read_pickle(path)
    assert summary is not None and not summary.complete and summary.tensors == {}


def test_oversized_pickle_is_not_read(tmp_path):
    """A data.pkl that inflates beyond the cap (a zip bomb) is not decompressed."""
    path = tmp_path / "bomb.bin"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"N" * (pickle_sniff.MAX_PICKLE_BYTES + 1))
    assert path.stat().st_size < 100_000
    summary = read_pickle(path)
    assert summary is not None and not summary.complete


def test_opcode_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(pickle_sniff, "MAX_OPCODES", 1000)
    path = tmp_path / "long.pt"
    path.write_bytes(b"\x80\x02" + b"N0" * 1000 + b"N.")
    assert not read_pickle(path).complete
    path.write_bytes(b"\x80\x02" + b"N0" * 400 + b"N.")
    assert read_pickle(path).complete


def test_deep_nesting(tmp_path):
    """100000 nested lists and 100000 nested dicts: no recursion anywhere."""
    n = 100_000
    path = tmp_path / "deep.pt"
    path.write_bytes(b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")
    assert read_pickle(path).complete
    key = b"X\x01\x00\x00\x00k"
    path.write_bytes(b"\x80\x02" + (b"}" + key) * n + b"}" + b"s" * n + b".")
    summary = read_pickle(path)
    assert summary.complete and summary.tensors == {}


def test_shared_and_self_referencing_containers(tmp_path):
    """Dicts that share children 2^40 paths deep, and a list inside itself, are walked a bounded number of steps."""
    loop = []
    loop.append(loop)
    d = {"t": torch.zeros(1), "loop": loop}
    for _ in range(40):
        d = {"a": d, "b": d}
    path = tmp_path / "shared.pt"
    torch.save(d, path)
    summary = read_pickle(path)
    assert summary.complete
    assert 0 < len(summary.tensors) <= pickle_sniff.MAX_ENTRIES
    assert all(name.endswith(".t") and shape == (1,) for name, shape in summary.tensors.items())

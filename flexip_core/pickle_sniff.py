"""What a pickled file (.bin/.pt/.ckpt) holds, read from its opcodes without unpickling it.

Unpickling runs whatever code the file names; torch.load(weights_only=True) closes that only
from torch 2.6 on, and the pack does not choose the user's torch. pickletools.genops only decodes
opcodes. A small stack machine follows them with plain values (strings, numbers, tuples, lists,
dicts); imports and calls stay symbols that are never resolved, except that the few a tensor
state dict is made of (OrderedDict, torch's tensor rebuilds) give a dict or a tensor's shape.
That is enough to name an IP-Adapter file and its base model, or the code a pickle would run.
"""
import io
import pickletools
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import NamedTuple

# A state dict's pickle is small (an SD1.5 checkpoint's: about 0.2 MB; the tensor data lies
# outside it). Beyond these limits a summary is partial, never slow.
MAX_PICKLE_BYTES = 16 * 2**20
MAX_OPCODES = 1_000_000
MAX_ENTRIES = 100_000  # dict entries walked for tensor names (shared dicts can repeat endlessly)
MAX_DEPTH = 64
MAX_KEY = 256
# torch.save's legacy (non-zip) format: this number, the protocol version and system info, each
# pickled on its own, then the object.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TENSOR_REBUILDS = {("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2")}
PARAMETER_REBUILDS = {("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")}
# Imports that only carry tensor data (protocol 2 stores bytes through _codecs.encode).
DATA_IMPORTS = TENSOR_REBUILDS | PARAMETER_REBUILDS | {("collections", "OrderedDict"), ("_codecs", "encode")}


@dataclass(frozen=True)
class PickleSummary:
    tensors: dict   # {"a.b.c": shape} of the tensors in its nested dicts, named as safetensors would
    imports: tuple  # "module.name" of what unpickling would import and call, beyond tensor data
    complete: bool  # False: damaged, truncated or beyond the limits; the rest is what came before


class _Global(NamedTuple):
    module: str
    name: str


class _Tensor(NamedTuple):
    shape: tuple


class _Opaque:
    """What unpickling would build by running code: never built here."""


OPAQUE = _Opaque()


# How the opcodes that are not spelled out in _follow act on the stack (pickletools documents each).
TO_MARK = -1  # take everything above the last MARK
PUSH_ARGUMENT = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "NONE",
                 "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                 "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
NEW_VALUES = {"NEWTRUE": lambda: True, "NEWFALSE": lambda: False, "EMPTY_TUPLE": tuple, "EMPTY_LIST": list,
              "EMPTY_DICT": dict}
TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "TUPLE": TO_MARK}
DISCARDS = {"POP": 1, "BUILD": 1, "POP_MARK": TO_MARK, "ADDITEMS": TO_MARK}
# Results that running code would build (or sets, which hold no tensor): what each takes.
OPAQUE_RESULTS = {"EMPTY_SET": 0, "PERSID": 0, "BINPERSID": 1, "NEWOBJ": 2, "NEWOBJ_EX": 3,
                  "OBJ": TO_MARK, "FROZENSET": TO_MARK}


class _Unreadable(Exception):
    """The pickle ends early, is damaged, or goes beyond what this reader follows."""


def read_pickle(path):
    """A PickleSummary of a file torch.save or pickle wrote; None if the file is no pickle."""
    data = _pickle_bytes(path)
    if data is None:
        return None
    stream, imports, obj, complete = io.BytesIO(data), set(), None, True
    try:
        obj = _follow(stream, imports)
        if type(obj) is int and obj == LEGACY_MAGIC:
            for _ in range(3):  # protocol version, system info, then the object
                obj = _follow(stream, imports)
    except _Unreadable:
        complete = False
    code = [f"{module}.{name}"[:MAX_KEY] for module, name in imports
            if (module, name) not in DATA_IMPORTS and not (module == "torch" and name.endswith("Storage"))]
    return PickleSummary(_tensor_shapes(obj), tuple(sorted(code)), complete)


def _pickle_bytes(path):
    """The bytes that start with its pickle, or None for a file that is no pickle."""
    with open(path, "rb") as f:
        head = f.read(MAX_PICKLE_BYTES + 2**16)
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip: the pickle is <archive>/data.pkl
        try:
            with zipfile.ZipFile(path) as archive:
                member = next((i for i in archive.infolist() if _is_data_pkl(i.filename)), None)
                if member is None:
                    return None
                with archive.open(member) as f:
                    return f.read(MAX_PICKLE_BYTES)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError, zlib.error):
            return _first_member(head)  # a truncated download has lost the zip's directory
    # From protocol 2 on a pickle opens with PROTO; a safetensors header length can too, but
    # then byte 8 opens its JSON header.
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[8:9] != b"{":
        return head[:MAX_PICKLE_BYTES]
    return None


def _is_data_pkl(name):
    return name.endswith("/data.pkl") and name.count("/") == 1


def _first_member(head):
    """The data of a zip's first member if it is an uncompressed data.pkl (torch.save writes it
    first, stored), read from its local header; else None."""
    if len(head) < 30:
        return None
    method, name_length, extra_length = struct.unpack_from("<H", head, 8)[0], *struct.unpack_from("<HH", head, 26)
    name = head[30:30 + name_length].decode("utf-8", "replace")
    return head[30 + name_length + extra_length:] if method == 0 and _is_data_pkl(name) else None


def _follow(stream, imports):
    """The object the next pickle in stream describes, calls left unresolved; the names of
    everything it imports are added to imports. pickle's own stack machine, on plain values."""
    stack, marks, memo = [], [], {}

    def take(n):
        """The top n values (n == TO_MARK: those above the last MARK), removed from the stack."""
        if n == TO_MARK:
            n = len(stack) - marks.pop()
        if len(stack) < n:
            raise IndexError("stack underflow")
        taken = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return taken

    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(stream)):
            name = op.name
            if count >= MAX_OPCODES:
                raise _Unreadable
            if name == "STOP":
                return stack.pop()
            if name in PUSH_ARGUMENT:
                stack.append(arg)
            elif name in NEW_VALUES:
                stack.append(NEW_VALUES[name]())
            elif name in TUPLES:
                stack.append(tuple(take(TUPLES[name])))
            elif name == "LIST":
                stack.append(take(TO_MARK))
            elif name == "DICT":
                stack.append(_set_items({}, take(TO_MARK)))
            elif name in ("APPEND", "APPENDS"):
                items = take(1 if name == "APPEND" else TO_MARK)
                if isinstance(stack[-1], list):
                    stack[-1].extend(items)
            elif name in ("SETITEM", "SETITEMS"):
                items = take(2 if name == "SETITEM" else TO_MARK)
                _set_items(stack[-1], items)
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "POP" and marks and marks[-1] == len(stack):
                marks.pop()  # POP right after MARK drops the mark (as pickle does)
            elif name in DISCARDS:
                take(DISCARDS[name])
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in ("GLOBAL", "INST", "STACK_GLOBAL"):
                module, attribute = take(2) if name == "STACK_GLOBAL" else arg.split(" ", 1)
                if type(module) is not str or type(attribute) is not str:
                    raise _Unreadable
                imports.add((module, attribute))
                if name == "INST":  # import and call in one opcode
                    take(TO_MARK)
                stack.append(OPAQUE if name == "INST" else _Global(module, attribute))
            elif name == "REDUCE":
                stack.append(_call(*take(2)))
            elif name in OPAQUE_RESULTS:
                take(OPAQUE_RESULTS[name])
                stack.append(OPAQUE)
            elif name in ("EXT1", "EXT2", "EXT4"):  # copyreg's extension registry: an import by number
                imports.add(("copyreg extension", str(arg)))
                stack.append(OPAQUE)
            elif name not in ("PROTO", "FRAME"):  # out-of-band buffers, or an opcode newer than this
                raise _Unreadable
    except (IndexError, KeyError, ValueError, TypeError) as e:  # ValueError: genops met bad or missing bytes
        raise _Unreadable from e
    raise _Unreadable


def _set_items(target, items):
    """Set key, value, key, value... into target if it is a dict; only str and int keys (their
    hash cannot recurse)."""
    if isinstance(target, dict):
        for key, value in zip(items[::2], items[1::2]):
            if type(key) in (str, int):
                target[key] = value
    return target


def _call(function, args):
    """What calling an imported function gives, for the few a state dict is made of; else OPAQUE."""
    if not isinstance(function, _Global) or not isinstance(args, tuple):
        return OPAQUE
    called = (function.module, function.name)
    if called == ("collections", "OrderedDict") and not args:
        return {}
    if called in TENSOR_REBUILDS and len(args) >= 3 and isinstance(args[2], tuple) \
            and all(type(size) is int and size >= 0 for size in args[2]):
        return _Tensor(args[2])
    if called in PARAMETER_REBUILDS and args and isinstance(args[0], _Tensor):
        return args[0]
    return OPAQUE


def _tensor_shapes(obj):
    """{"a.b.c": shape} of the tensors in obj's nested dicts, walked without recursion."""
    shapes, todo, walked = {}, [("", obj, 0)], 0
    while todo and walked < MAX_ENTRIES:
        prefix, d, depth = todo.pop()
        if not isinstance(d, dict):
            continue
        for key, value in d.items():
            walked += 1
            if walked > MAX_ENTRIES:
                break
            if type(key) is not str or len(key) > MAX_KEY:
                continue
            if isinstance(value, _Tensor):
                shapes[prefix + key] = value.shape
            elif isinstance(value, dict) and depth < MAX_DEPTH:
                todo.append((f"{prefix}{key}.", value, depth + 1))
    return shapes

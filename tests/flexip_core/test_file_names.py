"""flexip_core.file_names: every bad prefix gets its own message and fix, good ones give the exact
subfolder and name, and nothing is created on disk either way."""
import os

import pytest

from flexip_core.file_names import FIX, FileNameError, check_prefix

SUFFIX = "_00001.safetensors"  # 18 bytes


def refusal(prefix, folder, suffix=SUFFIX):
    with pytest.raises(FileNameError) as refused:
        check_prefix(prefix, str(folder), suffix)
    return str(refused.value)


@pytest.mark.parametrize("prefix, subfolder, name", [
    ("my_cat", "", "my_cat"),
    ("  cats/tabby ", "cats", "tabby"),  # spaces around the whole prefix are dropped
    ("a/b/c.v2", "a/b", "c.v2"),
    ("tabby.", "", "tabby."),  # the file is tabby._00001.safetensors: no trailing dot on disk
    ("CON", "", "CON"),  # CON_00001.safetensors is not a device name
    ("cat\n", "", "cat"),  # a trailing newline is whitespace around the prefix, dropped
    ("cats/../dogs", "", "dogs"),
    ("k" * 237, "", "k" * 237),  # 237 + 18 = 255 bytes, the limit
    ("é" * 118, "", "é" * 118),  # 236 bytes in UTF-8
])
def test_good_prefixes(tmp_path, prefix, subfolder, name):
    folder = tmp_path / "subjects"
    assert check_prefix(prefix, str(folder), SUFFIX) == (os.path.join(str(folder), subfolder).rstrip(os.sep), name)
    assert list(tmp_path.iterdir()) == []  # checking creates nothing


def test_too_long_file_name(tmp_path):
    message = refusal("a" * 300, tmp_path)
    assert message == (f"{'a' * 57!r}... (300 characters) is too long: the file name would be 318 bytes, and this "
                       "file system allows 255. Fix: use at most 237 bytes for each file name.")
    assert "at most 237" in refusal("k" * 238, tmp_path)
    assert "would be 256 bytes" in refusal("é" * 119, tmp_path)  # bytes, not characters
    # The counter is part of the name: 237 bytes fit with 5 digits, not with 6.
    assert check_prefix("k" * 237, str(tmp_path), "_99999.safetensors")
    assert "would be 256 bytes" in refusal("k" * 237, tmp_path, "_100000.safetensors")


def test_too_long_folder_name(tmp_path):
    assert refusal("f" * 256 + "/tabby", tmp_path).endswith(
        "is too long: the folder name would be 256 bytes, and this file system allows 255. "
        "Fix: use at most 255 bytes for each folder name.")


def test_too_long_path(tmp_path):
    prefix = "/".join(["d" * 200] * 25) + "/tabby"
    message = refusal(prefix, tmp_path)
    length = len(os.fsencode(os.path.join(str(tmp_path), prefix) + SUFFIX))
    assert message.endswith(f"is too long: the whole path would be {length} bytes, and this system allows "
                            f"{os.pathconf(tmp_path, 'PC_PATH_MAX') - 1}. Fix: use fewer or shorter subfolders.")


@pytest.mark.parametrize("prefix, shown, character, position", [
    ("a\x00b", "'a\\x00b'", "'\\x00'", 2),
    ("ca\tt", "'ca\\tt'", "'\\t'", 3),
    ("x\x1b[31m", "'x\\x1b[31m'", "'\\x1b'", 2),
    ("del\x7f", "'del\\x7f'", "'\\x7f'", 4),
])
def test_control_characters(tmp_path, prefix, shown, character, position):
    assert refusal(prefix, tmp_path) == (f"{shown} has a control character ({character} at position {position}); "
                                         f"file names cannot hold one. Fix: remove it; {FIX}")


@pytest.mark.parametrize("character", list('<>:"|?*\\'))
def test_characters_windows_refuses(tmp_path, character):
    assert refusal(f"ca{character}t", tmp_path) == (
        f"{'ca' + character + 't'!r} has {character!r} (position 3), which Windows does not allow in a file name. "
        f"Fix: remove it; {FIX}")


@pytest.mark.parametrize("prefix, kind, on_disk", [
    ("CON/tabby", "folder", "CON"),
    ("cats/nul/tabby", "folder", "nul"),
    ("com1.backup/tabby", "folder", "com1.backup"),
    ("LPT9 /x", "folder", "LPT9 "),  # Windows ignores the trailing space in the device check too
    ("aux.tabby", "file", "aux.tabby_00001.safetensors"),
    ("cats/Prn.v1", "file", "Prn.v1_00001.safetensors"),
])
def test_windows_device_names(tmp_path, prefix, kind, on_disk):
    device = on_disk.split(".")[0].rstrip(" ")
    assert refusal(prefix, tmp_path) == (
        f"{prefix!r}: the {kind} name {on_disk!r} is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9, "
        f"with any extension); it cannot be copied there. Fix: choose another name, e.g. '{device}_subject'.")


@pytest.mark.parametrize("prefix, on_disk, end", [
    ("cats./tabby", "cats.", "a dot"),
    ("cats /tabby", "cats ", "a space"),
    ("a/b../c", "b..", "a dot"),
])
def test_trailing_dots_and_spaces(tmp_path, prefix, on_disk, end):
    assert refusal(prefix, tmp_path) == (
        f"{prefix!r}: the folder name {on_disk!r} ends with {end}; Windows drops trailing dots and spaces, so the "
        "name would change there. Fix: remove the trailing dots and spaces.")


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/abs", "cats/../../escape", ".", "cats/.."])
def test_outside_the_folder(tmp_path, prefix):
    folder = tmp_path / "subjects"
    assert refusal(prefix, folder) == (f"{prefix!r} is not a file name inside the subjects folder ({folder}). "
                                       f"Fix: {FIX} No '..', no absolute path.")


@pytest.mark.parametrize("prefix", ["", "   ", "\n"])
def test_empty(tmp_path, prefix):
    assert refusal(prefix, tmp_path) == f"{prefix!r} is empty. Fix: {FIX}"

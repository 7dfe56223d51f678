"""File names a user types (FlexIP Save Subject's filename_prefix), checked before anything is written.

A prefix is a relative path inside one folder: subfolders separated by '/', then a name that gets a
counter and an extension ('cats/tabby' -> cats/tabby_00001.safetensors). Each problem gets its own
message and fix instead of the operating system's raw error ("[Errno 36] File name too long",
"embedded null byte"), and names that work here but not on Windows are refused too, so a saved
subject can be shared.
"""
import os

# Windows maps these to devices, with any extension ("nul.txt"), in any case.
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
NOT_ON_WINDOWS = '<>:"|?*\\'
DEFAULT_NAME_MAX = 255  # bytes per name on ext4, APFS, NTFS (in UTF-16 units there), and most others
DEFAULT_PATH_MAX = 4096
FIX = "use a name like 'my_cat' or 'cats/tabby': letters, digits, '_', '-', '.', and '/' between subfolders."


class FileNameError(ValueError):
    """A prefix that cannot be saved: .problem says why, .fix what to do."""

    def __init__(self, problem, fix=FIX):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} Fix: {fix}")


def _limit(folder, name, default):
    """os.pathconf of the nearest existing folder at or above `folder` (the subfolders may not exist yet)."""
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder, name)
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows) or no such limit
        return default


def _show(prefix):
    """The prefix as a Python literal, cut to 60 characters: control characters stay visible."""
    return repr(prefix) if len(prefix) <= 60 else f"{prefix[:57]!r}... ({len(prefix)} characters)"


def check_prefix(prefix, folder, suffix):
    """(subfolder, name) for a prefix inside folder, where the file will be subfolder/name + suffix.

    suffix is what the caller adds to the name ('_00001.safetensors'). Raises FileNameError naming
    the first problem; touches nothing on disk.
    """
    folder = os.path.abspath(folder)
    shown = _show(prefix)
    prefix = prefix.strip()
    if not prefix:
        raise FileNameError(f"{shown} is empty.")
    for position, character in enumerate(prefix, 1):
        if ord(character) < 32 or ord(character) == 127:
            raise FileNameError(f"{shown} has a control character ({character!r} at position {position}); "
                                "file names cannot hold one.", "remove it; " + FIX)
        if character in NOT_ON_WINDOWS:
            raise FileNameError(f"{shown} has {character!r} (position {position}), which Windows does not allow in "
                                "a file name.", "remove it; " + FIX)
    target = os.path.abspath(os.path.join(folder, prefix))
    if os.path.commonpath((folder, target)) != folder or target == folder:
        raise FileNameError(f"{shown} is not a file name inside the subjects folder ({folder}).",
                            FIX + " No '..', no absolute path.")
    # The names as they will be on disk: the subfolders, then the file with its counter and extension.
    *subfolders, name = os.path.relpath(target, folder).split(os.sep)
    name_max = _limit(folder, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    for on_disk, kind in [*((part, "folder") for part in subfolders), (name + suffix, "file")]:
        device = on_disk.split(".")[0].rstrip(" ")
        if device.upper() in RESERVED:
            raise FileNameError(f"{shown}: the {kind} name {on_disk!r} is a device name on Windows "
                                "(CON, PRN, AUX, NUL, COM1-9, LPT1-9, with any extension); it cannot be copied there.",
                                f"choose another name, e.g. '{device}_subject'.")
        if on_disk[-1] in ". ":
            raise FileNameError(f"{shown}: the {kind} name {on_disk!r} ends with "
                                f"{'a dot' if on_disk[-1] == '.' else 'a space'}; Windows drops trailing dots and "
                                "spaces, so the name would change there.", "remove the trailing dots and spaces.")
        length = len(os.fsencode(on_disk))
        if length > name_max:
            room = name_max - (len(os.fsencode(suffix)) if kind == "file" else 0)
            raise FileNameError(f"{shown} is too long: the {kind} name would be {length} bytes, and this file "
                                f"system allows {name_max}.", f"use at most {room} bytes for each {kind} name.")
    path_max = _limit(folder, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    length = len(os.fsencode(target + suffix))
    if length >= path_max:
        raise FileNameError(f"{shown} is too long: the whole path would be {length} bytes, and this system allows "
                            f"{path_max - 1}.", "use fewer or shorter subfolders.")
    return os.path.split(target)

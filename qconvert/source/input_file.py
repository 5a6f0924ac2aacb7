"""An input path given by the user (a model, --imatrix, --calibration FILE), checked before
it is opened: only a regular file is read. Opening a FIFO blocks until someone writes to it,
and reading /dev/zero or /dev/urandom never ends (the whole text is read into memory)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import InputError
from ..sink.output_check import kind_of


def stat_input(path: Path | str, what: str) -> os.stat_result:
    """os.stat of a path the user gave, any failure (missing, a name too long, a parent that
    is a file, a link loop) one InputError naming it and `what` it was given as. An empty
    path is refused: Path("") is the current directory."""
    if not str(path).strip():
        raise InputError(f"{what}: empty path; give a file or directory name")
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise InputError(f"{path}: {what} not found (no such file or directory)") from None
        raise InputError(f"{path}: cannot open {what} ({e.strerror})") from None


def checked_input_file(path: Path | str, what: str) -> Path:
    """`path` if it names a regular file (links followed); else one InputError naming it
    and `what` it was given as ("calibration text", "--imatrix")."""
    p = Path(path)
    st = stat_input(path, what)
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: {what} should be a file, not a directory")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: {what} is {kind_of(st.st_mode)}; give a regular file")
    return p

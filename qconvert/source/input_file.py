"""A single input file given by the user (--imatrix, --calibration FILE), checked before it
is opened: only a regular file is read. Opening a FIFO blocks until someone writes to it,
and reading /dev/zero or /dev/urandom never ends (the whole text is read into memory)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import InputError
from ..sink.output_check import kind_of


def checked_input_file(path: Path | str, what: str) -> Path:
    """`path` if it names a regular file (links followed); else one InputError naming it
    and `what` it was given as ("calibration text", "--imatrix")."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise InputError(f"{p}: {what} file not found") from None
        raise InputError(f"{p}: cannot open {what} ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: {what} should be a file, not a directory")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: {what} is {kind_of(st.st_mode)}; give a regular file")
    return p

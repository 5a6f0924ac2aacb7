"""Nothing half-written at the output path: write beside it under a temporary name
(.NAME.PID.partial), fsync it, rename it over the output (atomic on POSIX), fsync the
directory so the rename itself survives a power cut. Until the rename the old output is
untouched; the temporary file is removed on any failure or interrupt, and a killed
run's is removed by the next run writing in that directory (stale.py)."""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from .output_check import kind_of, target_of
from .stale import clean_stale, remove, temp_name

# errors of the file being written, not of the files being read
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot sync a directory; the data itself is synced
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root, root last."""
    for d, _, files in os.walk(root, topdown=False):
        for f in files:
            fsync_file(Path(d) / f)
        fsync_dir(Path(d))


def refuse_non_regular(path: Path) -> None:
    """The last look before a rename: only a regular file (or nothing) is replaced."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: output path is {kind_of(st.st_mode)}; qconvert only replaces regular files")


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    path = target_of(Path(path))
    clean_stale(path.parent)
    tmp = path.with_name(temp_name(path.name))
    remove(tmp)  # a killed process with our (reused) pid left it
    try:
        yield tmp
        fsync_file(tmp)
        refuse_non_regular(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        if e.errno in OUTPUT_ERRNOS or e.filename in (str(tmp), tmp):
            raise InputError(f"{path}: cannot write the output ({e.strerror})") from e
        raise
    finally:
        if os.path.lexists(tmp):
            remove(tmp)

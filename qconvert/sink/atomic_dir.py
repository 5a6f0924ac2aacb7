"""A whole output directory appears at once or not at all: it is built beside its final
place as .NAME.PID.partial, every file and directory in it fsynced, then swapped in.

With --force an existing output is never lost. Where the kernel can (Linux
renameat2 RENAME_EXCHANGE: ext4, xfs, btrfs, tmpfs) the two directories trade names in
one atomic step, so the output path always holds a complete directory; the old one, now
under the temporary name, is deleted after. Elsewhere the old directory is renamed aside
to .NAME.PID.old, the new one renamed in, and on any failure the old one is renamed back;
it is deleted only once the new one is in place. A run killed between those two renames
leaves the .old directory, which the next run in that directory moves back (stale.py)."""

from __future__ import annotations

import ctypes
import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from .atomic import fsync_dir, fsync_tree
from .output_check import target_of
from .stale import clean_stale, remove, temp_name

AT_FDCWD = -100
RENAME_EXCHANGE = 2
UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap the names a and b atomically; False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(new: Path, path: Path) -> None:
    """Put directory `new` at `path`; the previous `path` ends up at `new`'s name (to be
    deleted by the caller) or is restored on failure."""
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    if path.is_symlink() or not path.is_dir():  # the last look: only a directory is replaced by one
        raise InputError(f"{path}: output path is no longer a directory; nothing was replaced")
    if exchange(new, path):
        return
    old = path.with_name(temp_name(path.name, "old"))
    remove(old)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)  # the old output goes back where it was
        raise
    os.replace(old, new)  # the caller deletes the old output under the temporary name


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    path = target_of(Path(path))
    clean_stale(path.parent)
    tmp = path.with_name(temp_name(path.name))
    remove(tmp)  # a killed process with our (reused) pid left it
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        swap_in(tmp, path)
        fsync_dir(path.parent)
    finally:
        remove(tmp)  # the unfinished new directory, or after the swap the old output


@contextmanager
def staging_dir(parent: Path | str, label: str = "qconvert-staging") -> Iterator[Path]:
    """A scratch directory in `parent` named like a partial output, so that a killed
    run's is cleaned up by the next run there; removed on exit."""
    parent = Path(parent)
    clean_stale(parent)
    d = parent / temp_name(label)
    remove(d)
    d.mkdir()
    try:
        yield d
    finally:
        remove(d)

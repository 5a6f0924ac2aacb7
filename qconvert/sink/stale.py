"""Temporary names of a run, and the cleanup of those a dead run left behind.

Everything qconvert writes beside an output before it is complete carries the writing
process's id in its name:

    .NAME.PID.partial   a file or directory being written (GGUF, safetensors directory,
                        sensitivity cache, imatrix) or a GPTQ staging directory
    .NAME.PID.old       the previous output directory, moved aside during a --force swap

A run killed with SIGKILL cannot remove them, so every run that writes in a directory
first removes those of processes that no longer exist. Only names of exactly this form
are touched, and only when os.kill(PID, 0) says there is no such process: a live
writer's files (another qconvert, or a reused PID) are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

STALE = re.compile(r"\.(?P<name>.+)\.(?P<pid>[1-9][0-9]{0,9})\.(?P<kind>partial|old)")


def temp_name(name: str, kind: str = "partial") -> str:
    return f".{name}.{os.getpid()}.{kind}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or no valid pid: not ours to judge
        return True
    return True


def remove(path: Path) -> None:
    """Remove a file, link or directory tree; nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def clean_stale(directory: Path) -> list[Path]:
    """Remove the temporary files and directories dead runs left in `directory`; returns
    what was removed. A `.NAME.PID.old` directory whose NAME no longer exists is the old
    output of a run killed between its two renames: it is moved back, not deleted."""
    directory = Path(directory)
    done: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return done  # the caller's own checks report an unusable directory
    for entry in entries:
        m = STALE.fullmatch(entry.name)
        if m is None or pid_alive(int(m["pid"])):
            continue
        path = directory / entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if not is_dir and not entry.is_file(follow_symlinks=False):
            continue  # we never make devices, FIFOs or links under these names
        final = directory / m["name"]
        if m["kind"] == "old":
            if not is_dir:
                continue
            if not os.path.lexists(final):
                os.rename(path, final)
                done.append(final)
                continue
        remove(path)
        done.append(path)
    return done

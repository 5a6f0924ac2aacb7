"""Nothing half-written at the output path: write beside it under a temporary name and
rename at the end (an atomic replace on POSIX); remove the temporary file on failure."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InputError, OutputExistsError


def check_output(path: Path, force: bool) -> None:
    if path.is_dir():
        raise InputError(f"{path}: output path is a directory; give a file name")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: output directory does not exist")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

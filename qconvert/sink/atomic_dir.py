"""A whole output directory appears at once or not at all: it is built beside its final
place under a hidden temporary name and renamed at the end. With force, an existing
directory is first renamed aside and deleted only after the new one is in place."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import InputError, OutputExistsError


def check_output_dir(path: Path, force: bool, *, input_dir: Path | None = None) -> None:
    if input_dir is not None and path.resolve() == input_dir.resolve():
        raise InputError(f"{path}: output directory would replace the input model; choose another")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: output path is a file; give a directory name")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: parent of the output directory does not exist")


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)

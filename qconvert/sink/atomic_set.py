"""Several output files that appear together or not at all (a split GGUF set).

Each file is written under its own temporary name (.NAME.PID.partial, as atomic.py does
for one file). Only when every one is complete are they fsynced and renamed over their
outputs, one after another, and the directory fsynced. A failure or interrupt while
writing removes the temporary files and leaves the outputs untouched; one during the
renames (a full disk cannot cause it: renames take no space) removes the members already
renamed, so a half set is never left to be loaded. A killed run's temporary files are
removed by the next run writing in that directory (stale.py)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import InputError
from .atomic import OUTPUT_ERRNOS, fsync_dir, fsync_file, refuse_non_regular
from .output_check import target_of
from .stale import clean_stale, remove, temp_name


@contextmanager
def atomic_paths(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Yields one temporary path per output in `paths` (all in one directory); on a clean
    exit every temporary file replaces its output."""
    targets = [target_of(Path(p)) for p in paths]
    for d in dict.fromkeys(t.parent for t in targets):
        clean_stale(d)
    tmps = [t.with_name(temp_name(t.name)) for t in targets]
    for tmp in tmps:
        remove(tmp)  # a killed process with our (reused) pid left it
    renamed: list[Path] = []
    try:
        yield tmps
        for tmp in tmps:
            fsync_file(tmp)
        for t in targets:
            refuse_non_regular(t)
        for tmp, t in zip(tmps, targets):
            os.replace(tmp, t)
            renamed.append(t)
        for d in dict.fromkeys(t.parent for t in targets):
            fsync_dir(d)
    except BaseException as e:
        if len(renamed) < len(targets):
            for t in renamed:  # never a partial set at the outputs
                remove(t)
        if isinstance(e, OSError) and (e.errno in OUTPUT_ERRNOS or e.filename in map(str, tmps)
                                       or e.filename in tmps):
            shown = next((t for tmp, t in zip(tmps, targets) if e.filename in (str(tmp), tmp)), targets[0])
            raise InputError(f"{shown}: cannot write the output ({e.strerror})") from e
        raise
    finally:
        for tmp in tmps:
            if os.path.lexists(tmp):
                remove(tmp)

"""Compile a plan's encoders in parallel child processes before the first tensor.

numba compiles one function at a time per process (a global compiler lock), so a plan
with two K-quant types compiles them one after the other on first use. Here each type
whose on-disk cache is missing is compiled in its own spawned child (which calls the
encoder once on one block, so numba writes its cache); the parent then loads from the
cache. Bytes never change: the children compile the same functions with the same flags.

Off unless QCONVERT_PARALLEL_COMPILE=1: on the shared 2-core machine it was measured not
to help (README "First run"). Used only where it cannot get in the way: a writable cache,
two or more types to compile, two or more CPUs. Anything that goes wrong in a child falls
back silently to the in-process compile; an interrupt terminates the children.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from typing import Iterable

import numpy as np

ENV = "QCONVERT_PARALLEL_COMPILE"


def enabled() -> bool:
    return os.environ.get(ENV, "") == "1"


def _dispatchers(type_name: str) -> list:
    from numba.core.dispatcher import Dispatcher

    from . import _MODULES

    mod = importlib.import_module(f"{__package__}.{_MODULES[type_name]}")
    # the module's own compiled encoders (encode, _encode_groups...), not the helpers it imports
    return [f for n, f in vars(mod).items() if isinstance(f, Dispatcher) and "encode" in n
            and f.py_func.__module__ == mod.__name__]


def needs_compile(type_name: str) -> bool:
    """True when the type's encoders have a writable cache location and none has a cache index yet.
    Anything unknown (no cache, numba internals changed) answers False: compile in-process."""
    try:
        found = _dispatchers(type_name)
        caches = [getattr(f, "_cache", None) for f in found]
        files = [getattr(c, "_cache_file", None) for c in caches]
        if not found or any(f is None for f in files):
            return False
        if not all(os.access(c._cache_path, os.W_OK) for c in caches if os.path.isdir(c._cache_path)):
            return False
        # none cached yet (a type with a separate importance encoder may have only one)
        return not any(os.path.exists(f._index_path) for f in files)
    except Exception:  # noqa: BLE001 - a guess about numba's private layout; never fatal
        return False


def _compile_one(type_name: str, with_importance: bool) -> str:
    """In a child: encode one block (with and without importance when the plan uses it)."""
    from . import IMPORTANCE_TYPES, encode
    from ..qtypes import qtype

    x = np.linspace(-1.0, 1.0, qtype(type_name).block_size, dtype=np.float32).reshape(1, -1)
    encode(type_name, x)
    if with_importance and type_name in IMPORTANCE_TYPES:
        encode(type_name, x, importance=np.ones_like(x), row_sigma2=np.ones(1, np.float32))
    return type_name


def warm(type_names: Iterable[str], with_importance: bool = False, force: bool = False) -> list[str]:
    """Compile the types that need it in parallel children; the names compiled there.
    `force` skips the QCONVERT_PARALLEL_COMPILE check (tests)."""
    from . import _MODULES

    if not (force or enabled()) or (os.cpu_count() or 1) < 2:
        return []
    todo = sorted({t for t in type_names if t in _MODULES and needs_compile(t)})
    if len(todo) < 2:
        return []
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(min(len(todo), os.cpu_count() or 1))
    try:
        return list(pool.starmap(_compile_one, [(t, with_importance) for t in todo]))
    except Exception:  # noqa: BLE001 - a failed child: the parent compiles in-process as before
        return []
    finally:
        pool.terminate()  # also on KeyboardInterrupt: no children left behind
        pool.join()

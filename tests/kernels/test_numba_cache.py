"""numba's on-disk cache of the kernels (kernels/flags.py): NUMBA_CACHE_DIR is where the
compiled kernels go when it is set, and an install where numba finds no writable cache
location still imports and encodes (uncached) instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ENCODE = ("import numpy as np\n"
          "from qconvert.kernels import encode\n"
          "x = np.linspace(-3, 3, 64 * 32, dtype=np.float32).reshape(-1, 32)\n"
          "print(encode('Q8_0', x).tobytes().hex())\n")


def _run(code: str, **env) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_numba_cache_dir_is_where_kernels_are_cached(tmp_path):
    cache = tmp_path / "numba-cache"
    first = _run(ENCODE, NUMBA_CACHE_DIR=str(cache))
    files = [p.name for p in cache.rglob("*")]
    assert any(n.startswith("q8_0.encode") and n.endswith(".nbi") for n in files), files
    assert any(n.endswith(".nbc") for n in files)
    assert _run(ENCODE, NUMBA_CACHE_DIR=str(cache)) == first  # loaded from that cache


def test_no_writable_cache_location_compiles_uncached(tmp_path):
    # numba's locators, emptied: what numba sees on a read-only install with no writable home
    nowhere = "import numba.core.caching as c\nc.CacheImpl._locator_classes = []\n"
    assert _run(nowhere + ENCODE) == _run(ENCODE, NUMBA_CACHE_DIR=str(tmp_path / "c"))

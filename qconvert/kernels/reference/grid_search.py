"""NumPy twin of kernels/grid_search.py: the neighbour search for many groups at once,
over a padded copy of the neighbour lists (one row per kmap entry)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..iq_grids import tables
from .kquant_common import F32


@lru_cache(maxsize=None)
def padded_neighbours(type_name: str) -> np.ndarray:
    """(kmap_size, max count) int64: each off-codebook entry's neighbour list, -1 padded."""
    t = tables(type_name)
    off = np.nonzero(t.kmap < 0)[0]
    starts = -t.kmap[off].astype(np.int64) - 1
    counts = t.neighbours[starts].astype(np.int64)
    out = np.full((len(t.kmap), counts.max()), -1, np.int64)
    for j in range(counts.max()):
        has = counts > j
        out[off[has], j] = t.neighbours[starts[has] + 1 + j]
    return out


def best_neighbours(type_name: str, u: np.ndarray, xval: np.ndarray, weight: np.ndarray,
                    scale: np.ndarray) -> np.ndarray:
    """For m off-codebook groups (kmap indices u (m,), values xval (m, w), weights (m, w),
    scales (m,)): the codebook index of each one's best listed neighbour, the first of
    equal errors, as C's strict `<` scan over the list."""
    grid = tables(type_name).grid
    cand = padded_neighbours(type_name)[u]  # (m, K)
    g = grid[np.maximum(cand, 0)].astype(F32)  # (m, K, w)
    diff = scale[:, None, None] * g - xval[:, None, :]
    terms = weight[:, None, :] * diff * diff
    d2 = np.zeros(cand.shape, F32)
    for i in range(terms.shape[2]):
        d2 = d2 + terms[:, :, i]
    d2 = np.where(cand >= 0, d2, np.inf)
    best = np.argmin(d2, axis=1)
    if not np.isfinite(d2[np.arange(len(u)), best]).all():
        raise ValueError("i-quant neighbour search found no finite error (weights too large or not finite)")
    return cand[np.arange(len(u)), best]


def levels_of(type_name: str, gi: np.ndarray) -> np.ndarray:
    """Codebook indices -> their levels (..., w)."""
    return (tables(type_name).grid[gi].astype(np.int64) - 1) // 2

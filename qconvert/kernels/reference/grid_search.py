"""NumPy twin of kernels/grid_search.py: the neighbour search for many groups at once,
over a padded copy of the neighbour lists (one row per kmap entry)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..iq_grids import tables
from .kquant_common import F32, nearest_int, seq_sum


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


def round_groups(type_name: str, xval: np.ndarray, id_: np.ndarray, scale: np.ndarray, waux: np.ndarray,
                 lmax: int, L: np.ndarray | None = None, only: np.ndarray | None = None):
    """Twin of round_group + best_neighbour over every group of every sub-block: levels
    round((id*x - 1)/2) in 0..lmax; a group off the codebook gets its best neighbour at
    `scale`. xval, waux (G, n); id_, scale (G,). Returns (levels (G, n), on-codebook
    (G, n/width)). With `only` (G, n/width), other groups keep their levels from L."""
    t = tables(type_name)
    width = t.grid.shape[1]
    bits = 3 if width == 4 else 2
    G, n = xval.shape
    l = np.clip(nearest_int(F32(0.5) * (id_[:, None] * xval - F32(1.0))), 0, lmax).reshape(G, n // width, width)
    u = (l << (bits * np.arange(width))).sum(axis=2)
    on = t.kmap[u] >= 0
    todo = ~on if only is None else (~on & only)
    if todo.any():
        r, k = np.nonzero(todo)
        best = best_neighbours(type_name, u[r, k], xval.reshape(G, -1, width)[r, k],
                               waux.reshape(G, -1, width)[r, k], scale[r])
        l[r, k] = levels_of(type_name, best)
    if only is not None:
        l = np.where(only[:, :, None], l, L.reshape(G, -1, width))
    return l.reshape(G, n), on


def split_signs(xb: np.ndarray, weight: np.ndarray, even: bool):
    """Twin of grid_search.split_signs for (G, n) sub-blocks: (xval, sign bits (G, n/8))."""
    neg = ~(xb >= 0)
    xval = np.where(neg, -xb, xb).astype(F32)
    g8 = neg.reshape(xb.shape[0], -1, 8)
    s = (g8.astype(np.int64) << np.arange(8)).sum(axis=2)
    if even:
        odd = g8.sum(axis=2) % 2 == 1
        imin = np.argmin((weight * xb * xb).reshape(g8.shape), axis=2)  # first of equal minima
        flip = np.zeros_like(g8)
        np.put_along_axis(flip, imin[:, :, None], odd[:, :, None], axis=2)
        xv = xval.reshape(g8.shape)
        xval = np.where(flip, -xv, xv).reshape(xb.shape)
        s = np.where(odd, s ^ (1 << imin), s) & 127
    return xval, s


def fit(weight: np.ndarray, xval: np.ndarray, L: np.ndarray):
    q = (2 * L + 1).astype(F32)
    return seq_sum(weight * xval * q), seq_sum(weight * q * q)


def largest(x: np.ndarray) -> np.ndarray:
    """Per row, C's running MAX(max, x[i])."""
    mx = x[:, 0]
    for i in range(1, x.shape[1]):
        mx = np.where(mx > x[:, i], mx, x[:, i])
    return mx


def group_indices(type_name: str, L: np.ndarray) -> np.ndarray:
    """(..., n) levels -> (..., n/width) codebook indices (every group must be on it)."""
    t = tables(type_name)
    width = t.grid.shape[1]
    bits = 3 if width == 4 else 2
    u = (L.reshape(*L.shape[:-1], -1, width) << (bits * np.arange(width))).sum(axis=-1)
    gi = t.kmap[u]
    if (gi < 0).any():
        raise ValueError("i-quant: a group ended off the codebook (llama.cpp aborts here too)")
    return gi

"""NumPy twin of kernels/iq1_common.py (the IQ1_S / IQ1_M searches, explained there): all
sub-blocks at once, the split candidates scanned in C's order so ties and rounding fall
as they do in ggml."""

from __future__ import annotations

import numpy as np

from ..iq_grids import tables
from .grid_search import padded_neighbours
from .kquant_common import F32, quiet, seq_sum

X_P = np.array([-1 + 0.125, 0.125, 1 + 0.125], F32)
X_M = np.array([-1 - 0.125, -0.125, 1 - 0.125], F32)
FLT_MAX = F32(3.4028234663852886e38)


def sigma2(x: np.ndarray) -> np.ndarray:
    return (F32(2.0) * seq_sum(x * x) / F32(256.0)).astype(F32)


def largest_abs(xb: np.ndarray) -> np.ndarray:
    mx = np.abs(xb[:, 0])
    for i in range(1, xb.shape[1]):
        a = np.abs(xb[:, i])
        mx = np.where(mx > a, mx, a)
    return mx


def prefix(xb, weight, idx):
    """Prefix sums of w*x and w over the sorted order, (G, n + 1) each."""
    w = np.take_along_axis(weight, idx, axis=1)
    wx = w * np.take_along_axis(xb, idx, axis=1)
    G, n = xb.shape
    sx = np.zeros((G, n + 1), F32)
    sw = np.zeros((G, n + 1), F32)
    for j in range(n):
        sx[:, j + 1] = sx[:, j] + wx[:, j]
        sw[:, j + 1] = sw[:, j] + w[:, j]
    return sx, sw


def levels_from_split(idx, i1, i2):
    """L[idx[j]] = 0 for j < i1, 1 for j < i2, else 2."""
    n = idx.shape[1]
    j = np.arange(n)
    lv = np.where(j < i1[:, None], 0, np.where(j < i2[:, None], 1, 2))
    L = np.empty_like(lv)
    np.put_along_axis(L, idx, lv, axis=1)
    return L


def group_codes(type_name, L):
    """(G, n) levels -> (G, n/8) kmap entries (negative: off the codebook)."""
    u = (L.reshape(L.shape[0], -1, 8) << (2 * np.arange(8))).sum(axis=2)
    return u, tables(type_name).kmap[u]


def best_neighbours(type_name, u, xb, weight, scale, xx):
    """Twin of iq1_common.best_neighbour for m groups: xb, weight (m, 8), scale (m,),
    xx (m, 3) level values of each group."""
    grid = tables(type_name).grid
    cand = padded_neighbours(type_name)[u]  # (m, K)
    lv = (grid[np.maximum(cand, 0)].astype(np.int64) - 1) // 2  # (m, K, 8)
    q = np.take_along_axis(xx, lv.reshape(len(u), -1), axis=1).reshape(lv.shape)
    diff = scale[:, None, None] * q - xb[:, None, :]
    terms = weight[:, None, :] * diff * diff
    d2 = np.zeros(cand.shape, F32)
    for i in range(8):
        d2 = d2 + terms[:, :, i]
    d2 = np.where(cand >= 0, d2, np.inf)
    best = np.argmin(d2, axis=1)
    if not (d2[np.arange(len(u)), best] < FLT_MAX).all():
        raise ValueError("i-quant neighbour search found no finite error (weights too large or not finite)")
    return cand[np.arange(len(u)), best]


def refit(type_name, index, xb, weight, xx_groups):
    """(sum w*q*x, sum w*q*q) over a sub-block's groups with the codebook points `index`
    (G, g) and each group's level values xx_groups (G, g, 3)."""
    lv = (tables(type_name).grid[index].astype(np.int64) - 1) // 2  # (G, g, 8)
    q = np.take_along_axis(xx_groups, lv, axis=2).reshape(xb.shape)
    return seq_sum(weight * q * xb), seq_sum(weight * q * q)


def scan_splits(sx, sw, n, combos):
    """C's scan over i1 <= i2 and the value combinations: (scale, i1, i2, combo) of the best
    (combo -1: nothing scored). `combos(sx, sw, i1, i2)` yields (sumqx, sumq2) per combo."""
    G = sx.shape[0]
    best_score = np.full(G, -FLT_MAX, F32)
    scale = np.zeros(G, F32)
    b1 = np.full(G, -1)
    b2 = np.full(G, -1)
    bk = np.full(G, -1)
    with quiet():
        for i1 in range(n + 1):
            for i2 in range(i1, n + 1):
                for k, (sumqx, sumq2) in enumerate(combos(sx, sw, i1, i2)):
                    upd = (sumq2 > 0) & (sumqx * sumqx > best_score * sumq2)
                    scale = np.where(upd, sumqx / sumq2, scale).astype(F32)
                    best_score = np.where(upd, scale * sumqx, best_score).astype(F32)
                    b1 = np.where(upd, i1, b1)
                    b2 = np.where(upd, i2, b2)
                    bk = np.where(upd, k, bk)
    return scale, b1, b2, bk

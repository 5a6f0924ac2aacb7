"""NumPy twin of kernels/iq3_common.py: every 32-weight sub-block searched at once, the
C loops over scales, groups and positions kept in order (the docstring there explains
the search)."""

from __future__ import annotations

import numpy as np

from ..iq_grids import tables
from .grid_search import best_neighbours, levels_of
from .kquant_common import F0, F1, F32, f16_bytes, nearest_int, quiet, seq_sum

EPS_XXS = F32(1e-8)
HALF = F32(0.5)


def _signs(xb, weight, xxs):
    """(xval, sign bytes (G, 4)) as C's sign pass: |x|, and for XXS an even count of
    negatives per 8 by flipping the least important weight's sign."""
    neg = ~(xb >= 0)
    xval = np.where(neg, -xb, xb).astype(F32)
    g8 = neg.reshape(-1, 4, 8)
    s = (g8.astype(np.int64) << np.arange(8)).sum(axis=2)
    if xxs:
        odd = g8.sum(axis=2) % 2 == 1
        imp = (weight * xb * xb).reshape(-1, 4, 8)
        imin = np.argmin(imp, axis=2)  # the first of equal minima, as C's strict `<`
        flip = np.zeros_like(g8)
        np.put_along_axis(flip, imin[:, :, None], odd[:, :, None], axis=2)
        xv = xval.reshape(-1, 4, 8)
        xval = np.where(flip, -xv, xv).reshape(xb.shape)
        s = np.where(odd, s ^ (1 << imin), s) & 127
    return xval, s


def _round(type_name, xval, id_, scale, waux, L=None, only=None):
    """Round every group at inverse scale id_ (G,), off-codebook groups to their best
    neighbour at `scale`; returns (levels (G, 32), on-codebook (G, 8)). With `only`
    (G, 8) bool, groups outside it keep their levels from L."""
    t = tables(type_name)
    G = xval.shape[0]
    l = np.clip(nearest_int(HALF * (id_[:, None] * xval - F1)), 0, 7).reshape(G, 8, 4)
    u = (l << (3 * np.arange(4))).sum(axis=2)
    gi = t.kmap[u]
    on = gi >= 0
    todo = ~on if only is None else (~on & only)
    if todo.any():
        r, k = np.nonzero(todo)
        xv = xval.reshape(G, 8, 4)[r, k]
        wv = waux.reshape(G, 8, 4)[r, k]
        best = best_neighbours(type_name, u[r, k], xv, wv, scale[r])
        l[r, k] = levels_of(type_name, best)
    if only is not None:
        l = np.where(only[:, :, None], l, L.reshape(G, 8, 4))
    return l.reshape(G, 32), on


def _fit(weight, xval, L):
    q = (2 * L + 1).astype(F32)
    return seq_sum(weight * xval * q), seq_sum(weight * q * q)


def search(type_name: str, x: np.ndarray, qw: np.ndarray | None, xxs: bool):
    """Per sub-block: (levels (G, 32), sign bytes (G, 4), scale (G,), written (G,))."""
    n = x.shape[0]
    sigma2 = F32(2.0) * seq_sum(x * x) / F32(256.0)
    xb = x.reshape(-1, 32)
    G = xb.shape[0]
    if qw is None:
        weight = xb * xb
    else:
        weight = (qw.reshape(-1, 32) * np.sqrt(np.repeat(sigma2, 8)[:, None] + xb * xb)).astype(F32)
    waux = np.sqrt(weight).astype(F32)
    xval, signs = _signs(xb, weight, xxs)
    mx = xval[:, 0]
    for i in range(1, 32):
        mx = np.where(mx > xval[:, i], mx, xval[:, i])
    written = ~(mx < EPS_XXS) if xxs else mx != 0
    L = np.zeros((G, 32), np.int64)
    on = np.full((G, 8), xxs)
    best = np.zeros(G, F32)
    nis = 15 if xxs else 9
    with quiet():
        scale = (mx / F32(15.0)).astype(F32)
        for is_ in range(-nis, nis + 1):
            id_ = ((F32(15.0) + F32(is_) * F32(0.2)) / mx).astype(F32)
            Laux, on_aux = _round(type_name, xval, id_, (F1 / id_).astype(F32), waux)
            sumqx, sumq2 = _fit(weight, xval, Laux)
            upd = written & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            scale = np.where(upd, sumqx / sumq2, scale).astype(F32)
            best = np.where(upd, scale * sumqx, best).astype(F32)
            L = np.where(upd[:, None], Laux, L)
            on = np.where(upd[:, None], on_aux, on)
        fix = written & (~on).any(axis=1) & (scale > 0)
        if fix.any():
            id_ = np.where(fix, F1 / scale, F0).astype(F32)
            only = (~on if xxs else np.ones_like(on)) & fix[:, None]
            L2, _ = _round(type_name, xval, id_, scale, waux, L, only)
            sumqx, sumq2 = _fit(weight, xval, L2)
            L = np.where(fix[:, None], L2, L)
            scale = np.where(fix & (sumq2 > 0), sumqx / sumq2, scale).astype(F32)
    flip = scale < 0
    scale = np.abs(scale).astype(F32)
    signs = np.where(flip[:, None], ~signs & (127 if xxs else 255), signs)
    L = np.where(written[:, None], L, 0)
    scale = np.where(written, scale, F0).astype(F32)
    return L.reshape(n, 8, 32), signs.reshape(n, 8, 4), scale.reshape(n, 8), written.reshape(n, 8)


def group_indices(type_name: str, L: np.ndarray) -> np.ndarray:
    """(..., 32) levels -> (..., 8) codebook indices (every group must be on it)."""
    u = (L.reshape(*L.shape[:-1], 8, 4) << (3 * np.arange(4))).sum(axis=-1)
    gi = tables(type_name).kmap[u]
    if (gi < 0).any():
        raise ValueError("i-quant: a group ended off the codebook (llama.cpp aborts here too)")
    return gi


def super_scale(scales: np.ndarray, fudge: float):
    """(d as stored fp16 bytes, 4-bit sub-block scales) from (n, 8) sub-block scales."""
    mx = scales[:, 0]
    for ib in range(1, 8):
        mx = np.where(mx > scales[:, ib], mx, scales[:, ib])
    d = (mx / F32(31.0)).astype(F32)
    with quiet():
        id_ = (F1 / d).astype(F32)
        ls = np.clip(nearest_int(HALF * (id_[:, None] * scales - F1)), 0, 15)
    return mx, f16_bytes((d * F32(fudge)).astype(F32)), ls

"""NumPy twin of kernels/iq3_common.py: every 32-weight sub-block searched at once, the
C loops over scales, groups and positions kept in order (the docstring there explains
the search)."""

from __future__ import annotations

import numpy as np

from .grid_search import fit, largest, round_groups, split_signs
from .kquant_common import F0, F1, F32, f16_bytes, nearest_int, quiet, seq_sum

EPS_XXS = F32(1e-8)
HALF = F32(0.5)


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
    xval, signs = split_signs(xb, weight, xxs)
    mx = largest(xval)
    written = ~(mx < EPS_XXS) if xxs else mx != 0
    L = np.zeros((G, 32), np.int64)
    on = np.full((G, 8), xxs)
    best = np.zeros(G, F32)
    nis = 15 if xxs else 9
    with quiet():
        scale = (mx / F32(15.0)).astype(F32)
        for is_ in range(-nis, nis + 1):
            id_ = ((F32(15.0) + F32(is_) * F32(0.2)) / mx).astype(F32)
            Laux, on_aux = round_groups(type_name, xval, id_, (F1 / id_).astype(F32), waux, 7)
            sumqx, sumq2 = fit(weight, xval, Laux)
            upd = written & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            scale = np.where(upd, sumqx / sumq2, scale).astype(F32)
            best = np.where(upd, scale * sumqx, best).astype(F32)
            L = np.where(upd[:, None], Laux, L)
            on = np.where(upd[:, None], on_aux, on)
        fix = written & (~on).any(axis=1) & (scale > 0)
        if fix.any():
            id_ = np.where(fix, F1 / scale, F0).astype(F32)
            only = (~on if xxs else np.ones_like(on)) & fix[:, None]
            L2, _ = round_groups(type_name, xval, id_, scale, waux, 7, L, only)
            sumqx, sumq2 = fit(weight, xval, L2)
            L = np.where(fix[:, None], L2, L)
            scale = np.where(fix & (sumq2 > 0), sumqx / sumq2, scale).astype(F32)
    flip = scale < 0
    scale = np.abs(scale).astype(F32)
    signs = np.where(flip[:, None], ~signs & (127 if xxs else 255), signs)
    L = np.where(written[:, None], L, 0)
    scale = np.where(written, scale, F0).astype(F32)
    return L.reshape(n, 8, 32), signs.reshape(n, 8, 4), scale.reshape(n, 8), written.reshape(n, 8)


def super_scale(scales: np.ndarray, fudge: float):
    """(d as stored fp16 bytes, 4-bit sub-block scales) from (n, 8) sub-block scales."""
    mx = largest(scales)
    d = (mx / F32(31.0)).astype(F32)
    with quiet():
        id_ = (F1 / d).astype(F32)
        ls = np.clip(nearest_int(HALF * (id_[:, None] * scales - F1)), 0, 15)
    return mx, f16_bytes((d * F32(fudge)).astype(F32)), ls

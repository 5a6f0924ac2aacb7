"""IQ1_S in plain NumPy (twin of kernels/iq1_s.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from .. import require_importance
from ..iq_grids import tables
from .iq1_common import (X_M, X_P, best_neighbours, group_codes, largest_abs, levels_from_split, prefix, refit,
                         scan_splits, sigma2)
from .kquant_common import F1, F32, f16_bytes, from_f16_bytes, nearest_int, quiet

EPS = F32(1e-12)


def _combos(sx, sw, i1, i2):
    for xx in (X_P, X_M):
        sumqx = (sx[:, i1] - sx[:, 0]) * xx[0] + (sx[:, i2] - sx[:, i1]) * xx[1] + (sx[:, 32] - sx[:, i2]) * xx[2]
        sumq2 = ((sw[:, i1] - sw[:, 0]) * xx[0] * xx[0] + (sw[:, i2] - sw[:, i1]) * xx[1] * xx[1]
                 + (sw[:, 32] - sw[:, i2]) * xx[2] * xx[2])
        yield sumqx, sumq2


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    require_importance("IQ1_S", importance)
    x = np.asarray(x, F32)
    n = x.shape[0]
    xb = x.reshape(-1, 32)
    G = len(xb)
    weight = (np.asarray(importance, F32).reshape(-1, 32)
              * np.sqrt(np.repeat(sigma2(x), 8)[:, None] + xb * xb)).astype(F32)
    idx = np.argsort(xb, axis=1, kind="stable")  # glibc's qsort merges: a stable order
    sx, sw = prefix(xb, weight, idx)
    scale, i1, i2, k = scan_splits(sx, sw, 32, _combos)
    live = ~(largest_abs(xb) < EPS) & (i1 >= 0) & (i2 >= 0) & (k >= 0)
    shift = np.where(k == 0, 1, -1)
    L = levels_from_split(idx, i1, i2)
    neg = scale < 0
    L = np.where(neg[:, None], 2 - L, L)
    scale = np.abs(scale).astype(F32)
    shift = np.where(neg, -shift, shift)
    xx = np.where((shift == 1)[:, None], X_P, X_M)  # (G, 3)
    u, gi = group_codes("IQ1_S", L)
    off = (gi < 0) & live[:, None]
    if off.any():
        r, g = np.nonzero(off)
        gi[r, g] = best_neighbours("IQ1_S", u[r, g], xb.reshape(G, 4, 8)[r, g], weight.reshape(G, 4, 8)[r, g],
                                   scale[r], xx[r])
    gi = np.where(live[:, None], gi, 0)
    with quiet():
        sumqx, sumq2 = refit("IQ1_S", gi, xb, weight, np.repeat(xx[:, None, :], 4, axis=1))
        scale = np.where(off.any(axis=1) & (sumqx > 0) & (sumq2 > 0), sumqx / sumq2, scale).astype(F32)
    scales = np.where(live, scale, 0).astype(F32).reshape(n, 8)
    shifts = np.where(live, shift, 1).reshape(n, 8)
    h = ((gi >> 8) << (3 * np.arange(4))).sum(axis=1).reshape(n, 8)
    mx = scales[:, 0]
    for ib in range(1, 8):
        mx = np.where(mx > scales[:, ib], mx, scales[:, ib])
    d = (mx / F32(15.0)).astype(F32)
    with quiet():
        l = np.clip(nearest_int(F32(0.5) * ((F1 / d)[:, None] * scales - F1)), 0, 7)
    l = np.where(shifts == -1, l | 8, l)
    zero = (mx == 0)[:, None]  # llama.cpp keeps the codes it wrote, with d = 0 and no scales
    qh = np.where(zero, h, h | (l << 12)).astype("<u2").view(np.uint8).reshape(n, 16)
    d16 = np.where(zero, 0, f16_bytes((d * F32(1.125)).astype(F32))).astype(np.uint8)
    return np.concatenate([d16, (gi & 255).astype(np.uint8).reshape(n, 32), qh], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    n = q.shape[0]
    d = from_f16_bytes(q[:, :2]).reshape(n, 1, 1)
    qh = np.ascontiguousarray(q[:, 34:50]).view("<u2").astype(np.int64)  # (n, 8)
    dl = d * (2 * ((qh >> 12) & 7) + 1).astype(F32)[:, :, None]
    delta = np.where(qh & 0x8000, -F32(0.125), F32(0.125)).astype(F32)[:, :, None]
    gi = q[:, 2:34].reshape(n, 8, 4).astype(np.int64) | (((qh[:, :, None] >> (3 * np.arange(4))) & 7) << 8)
    v = tables("IQ1_S").values[gi].reshape(n, 8, 32)
    return (dl * (v + delta)).reshape(n, 256)

"""IQ1_M in plain NumPy (twin of kernels/iq1_m.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ..half import f16_bits_to_f32_np, f32_to_f16_bits_np
from ..iq_grids import tables
from .iq1_common import (X_M, X_P, best_neighbours, group_codes, largest_abs, levels_from_split, refit,
                         scan_splits, sigma2)
from .kquant_common import F1, F32, nearest_int, quiet, seq_sum

EPS = F32(1e-7)
MASKS = np.array([0x00, 0x80, 0x08, 0x88])


def _weights(x, qw):
    xb = x.reshape(-1, 16)
    if qw is None:
        return xb, (xb * xb).astype(F32)
    return xb, (qw.reshape(-1, 16) * np.sqrt(np.repeat(sigma2(x), 16)[:, None] + xb * xb)).astype(F32)


def _half_prefix(xb, weight, idx):
    """px, pw (G, 2, 17): prefix sums over the sorted order, kept per half of the sub-block."""
    G = len(xb)
    w = np.take_along_axis(weight, idx, axis=1)
    wx = w * np.take_along_axis(xb, idx, axis=1)
    half = idx >= 8
    px = np.zeros((G, 2, 17), F32)
    pw = np.zeros((G, 2, 17), F32)
    for j in range(16):
        for h in range(2):
            mine = half[:, j] == h
            px[:, h, j + 1] = np.where(mine, px[:, h, j] + wx[:, j], px[:, h, j])
            pw[:, h, j + 1] = np.where(mine, pw[:, h, j] + w[:, j], pw[:, h, j])
    return px, pw


def _combos(px, pw, i1, i2):
    p2, m2 = X_P[2], X_M[2]
    cp1, cp2 = X_P[0] * X_P[0] - X_P[1] * X_P[1], X_P[1] * X_P[1] - X_P[2] * X_P[2]
    cm1, cm2 = X_M[0] * X_M[0] - X_M[1] * X_M[1], X_M[1] * X_M[1] - X_M[2] * X_M[2]
    qx_p, qx_m, q2_p, q2_m = [], [], [], []
    for h in range(2):
        sx = px[:, h, i1] + px[:, h, i2]
        qx_p.append(px[:, h, 16] * p2 - sx)
        qx_m.append(px[:, h, 16] * m2 - sx)
        q2_p.append(pw[:, h, 16] * p2 * p2 + pw[:, h, i1] * cp1 + pw[:, h, i2] * cp2)
        q2_m.append(pw[:, h, 16] * m2 * m2 + pw[:, h, i1] * cm1 + pw[:, h, i2] * cm2)
    yield qx_p[0] + qx_p[1], q2_p[0] + q2_p[1]
    yield qx_p[0] + qx_m[1], q2_p[0] + q2_m[1]
    yield qx_m[0] + qx_p[1], q2_m[0] + q2_p[1]
    yield qx_m[0] + qx_m[1], q2_m[0] + q2_m[1]


def _group_values(shift):
    """(G, 2, 3) level values of each sub-block's two groups for shift combinations 0..3."""
    first = np.where((shift < 2)[:, None], X_P, X_M)
    second = np.where((shift % 2 == 0)[:, None], X_P, X_M)
    return np.stack([first, second], axis=1)


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    n = x.shape[0]
    qw = None if importance is None else np.asarray(importance, F32)
    xb, weight = _weights(x, qw)
    G = len(xb)
    idx = np.argsort(xb, axis=1, kind="stable")
    px, pw = _half_prefix(xb, weight, idx)
    scale, i1, i2, k = scan_splits(px, pw, 16, _combos)
    live = ~(largest_abs(xb) < EPS) & (i1 >= 0) & (i2 >= 0) & (k >= 0)
    L = levels_from_split(idx, i1, i2)
    neg = scale < 0
    L = np.where(neg[:, None], 2 - L, L)
    scale = np.abs(scale).astype(F32)
    shift = np.where(neg, 3 - k, k)
    xx = _group_values(shift)
    u, gi = group_codes("IQ1_M", L)
    off = (gi < 0) & live[:, None]
    if off.any():
        r, g = np.nonzero(off)
        gi[r, g] = best_neighbours("IQ1_M", u[r, g], xb.reshape(G, 2, 8)[r, g], weight.reshape(G, 2, 8)[r, g],
                                   scale[r], xx[r, g])
    gi = np.where(live[:, None], gi, 0)
    with quiet():
        sumqx, sumq2 = refit("IQ1_M", gi, xb, weight, xx)
        scale = np.where(off.any(axis=1) & (sumqx > 0) & (sumq2 > 0), sumqx / sumq2, scale).astype(F32)
    scales = np.where(live, scale, 0).astype(F32).reshape(n, 16)
    shifts = np.where(live, shift, 0).reshape(n, 16)
    qs = (gi & 255).astype(np.uint8).reshape(n, 32)
    qh = ((gi[:, 0] >> 8) | ((gi[:, 1] >> 8) << 4)).reshape(n, 16)
    mx = scales[:, 0]
    for ib in range(1, 16):
        mx = np.where(mx > scales[:, ib], mx, scales[:, ib])
    d = (mx / F32(15.0)).astype(F32)
    with quiet():
        l = np.clip(nearest_int(F32(0.5) * ((F1 / d)[:, None] * scales - F1)), 0, 7)  # (n, 16)
    qh_m = qh | MASKS[shifts]
    # d refitted over the whole super-block at the 3-bit scales (C's last loop, in its order)
    lv = (tables("IQ1_M").grid[gi].astype(np.int64) - 1) // 2  # (G, 2, 8)
    q = np.take_along_axis(_group_values(shifts.reshape(-1)), lv, axis=2).reshape(n, 256)
    q = (q.reshape(n, 16, 16) * (2 * l + 1).astype(F32)[:, :, None]).reshape(n, 256)
    w = weight.reshape(n, 256)
    with quiet():
        sumqx = seq_sum(w * q * x)
        sumq2 = seq_sum(w * q * q)
        d = np.where(sumq2 > 0, sumqx / sumq2, d).astype(F32)
    s = f32_to_f16_bits_np((d * F32(1.1125)).astype(F32)).astype(np.int64)
    sc = np.zeros((n, 4), np.int64)
    for ib in range(16):
        sc[:, ib // 4] |= l[:, ib] << (3 * (ib % 4))
    sc |= ((s[:, None] >> (4 * np.arange(4))) & 0xF) << 12
    zero = (mx == 0)[:, None]  # llama.cpp keeps the codes it wrote, no shifts, no scales
    qh = np.where(zero, qh, qh_m).astype(np.uint8)
    sc = np.where(zero, 0, sc).astype("<u2").view(np.uint8).reshape(n, 8)
    return np.concatenate([qs, qh, sc], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    n = q.shape[0]
    sc = np.ascontiguousarray(q[:, 48:56]).view("<u2").astype(np.int64)  # (n, 4)
    bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0xF0) | ((sc[:, 2] >> 4) & 0xF00) | (sc[:, 3] & 0xF000)
    d = f16_bits_to_f32_np(bits.astype(np.uint16)).reshape(n, 1, 1)
    s = (sc[:, :, None] >> (3 * np.arange(4))) & 7  # (n, 4, 4) -> sub-block 4j + t
    dl = d * (2 * s.reshape(n, 16) + 1).astype(F32)[:, :, None]  # (n, 16, 1)
    nib = (q[:, 32:48, None].astype(np.int64) >> (4 * np.arange(2))) & 0xF  # (n, 16, 2)
    gi = q[:, :32].reshape(n, 16, 2).astype(np.int64) | ((nib & 7) << 8)
    delta = np.where(nib & 8, -F32(0.125), F32(0.125)).astype(F32)[:, :, :, None]
    v = tables("IQ1_M").values[gi]  # (n, 16, 2, 8)
    return (dl[:, :, :, None] * (v + delta)).reshape(n, 256)

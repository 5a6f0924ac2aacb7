"""Q2_K in plain NumPy (twin of kernels/q2_k.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from .kquant_common import (
    F0, F32, f16_bytes, from_f16_bytes, make_qkx_quants, make_qp_quants, nearest_int,
    pack_2bit, quiet, seq_sum, unpack_2bit,
)


def _running_max(v: np.ndarray) -> np.ndarray:
    best = np.zeros(v.shape[0], F32)
    for j in range(v.shape[1]):
        best = np.where(v[:, j] > best, v[:, j], best)
    return best


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    nb = x.shape[0]
    xs = x.reshape(-1, 16)
    if importance is None:
        L, scales, mins = make_qkx_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        q4 = F32(15)
        max_scale, max_min = _running_max(scales), _running_max(mins)
        with quiet():
            ls = nearest_int((q4 / max_scale)[:, None] * scales) & 0xFF
            lm = (nearest_int((q4 / max_min)[:, None] * mins) << 4) & 0xFF
        ls = np.where((max_scale > 0)[:, None], ls, 0)
        lm = np.where((max_min > 0)[:, None], lm, 0)
        sc_bytes = (ls | lm).astype(np.uint8)
        d = np.where(max_scale > 0, max_scale / q4, F0).astype(F32)
        dmin = np.where(max_min > 0, max_min / q4, F0).astype(F32)
    else:
        sigma2 = seq_sum(x * x) / F32(256)
        x3 = x.reshape(nb, 16, 16)
        qw = np.asarray(importance, F32).reshape(nb, 16, 16)
        weight = (qw * np.sqrt(sigma2[:, None, None] + x3 * x3)).reshape(-1, 16)
        sw = seq_sum(weight).reshape(nb, 16)
        L, scales, mins = make_qkx_quants(xs, weight, 3, -0.9, 0.05, 36, False)
        Ls, d = make_qp_quants(scales.reshape(nb, 16), 15, sw)
        Lm, dmin = make_qp_quants(mins.reshape(nb, 16), 15, sw)
        sc_bytes = (Ls | (Lm << 4)).astype(np.uint8)
    d_bytes, dmin_bytes = f16_bytes(d), f16_bytes(dmin)
    dd = from_f16_bytes(d_bytes) * (sc_bytes & 0xF).astype(F32)
    dm = from_f16_bytes(dmin_bytes) * (sc_bytes >> 4).astype(F32)
    with quiet():
        l = np.clip(nearest_int((x.reshape(nb, 16, 16) + dm[:, :, None]) / dd[:, :, None]), 0, 3)
    L = np.where((dd != 0)[:, :, None], l, L.reshape(nb, 16, 16)).reshape(nb, 256)
    return np.concatenate([sc_bytes, pack_2bit(L), d_bytes, dmin_bytes], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    nb = q.shape[0]
    d = from_f16_bytes(q[:, 80:82])
    dmin = from_f16_bytes(q[:, 82:84])
    dl = (d * (q[:, :16] & 0xF).astype(F32))[:, :, None]
    ml = (dmin * (q[:, :16] >> 4).astype(F32))[:, :, None]
    v = unpack_2bit(q[:, 16:80]).reshape(nb, 16, 16).astype(F32)
    return (dl * v - ml).reshape(nb, 256)

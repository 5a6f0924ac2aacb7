"""Q6_K in plain NumPy (twin of kernels/q6_k.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from .kquant_common import (
    F1, F32, GROUP_MAX_EPS, f16_bytes, from_f16_bytes, make_qx_quants, nearest_int, quiet,
)


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    nb = x.shape[0]
    qw = None if importance is None else np.asarray(importance, F32).reshape(-1, 16)
    L, scales = make_qx_quants(x.reshape(-1, 16), 32, qw)
    L, scales = L.reshape(nb, 256), scales.reshape(nb, 16)
    max_abs = np.zeros(nb, F32)
    max_scale = np.zeros(nb, F32)
    for j in range(16):  # first sub-block of largest |scale|, as C's strict `>`
        upd = np.abs(scales[:, j]) > max_abs
        max_abs = np.where(upd, np.abs(scales[:, j]), max_abs)
        max_scale = np.where(upd, scales[:, j], max_scale)
    zero = max_abs < GROUP_MAX_EPS
    with quiet():
        iscale = F32(-128) / max_scale
        d_bytes = f16_bytes(F1 / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales)).astype(np.int8)
        dd = from_f16_bytes(d_bytes) * sc.astype(F32)  # (nb, 16)
        l = np.clip(nearest_int(x.reshape(nb, 16, 16) / dd[:, :, None]), -32, 31) + 32
    L = np.where((dd != 0)[:, :, None], l, L.reshape(nb, 16, 16)).reshape(nb, 2, 4, 32)
    L = L.astype(np.uint8)
    lo, hi = L & 0xF, L >> 4
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    out = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.view(np.uint8), d_bytes],
                         axis=1)
    out[zero] = 0
    return out


def decode(q: np.ndarray) -> np.ndarray:
    nb = q.shape[0]
    ql = q[:, :128].reshape(nb, 2, 2, 32)  # (half, byte-row, l)
    qh = q[:, 128:192].reshape(nb, 2, 1, 32)
    lo = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    hi = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    v = ((lo | (hi << 4)).astype(np.int16) - 32).reshape(nb, 16, 16).astype(F32)
    sc = q[:, 192:208].view(np.int8).astype(F32)
    d = from_f16_bytes(q[:, 208:210])
    return ((d * sc)[:, :, None] * v).reshape(nb, 256)

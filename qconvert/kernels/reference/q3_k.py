"""Q3_K in plain NumPy (twin of kernels/q3_k.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from .kquant_common import (
    F0, F1, F32, f16_bytes, from_f16_bytes, make_q3_quants, make_qx_quants, nearest_int,
    pack_2bit, quiet, seq_sum, unpack_2bit,
)


def pack_scales(ls: np.ndarray) -> np.ndarray:
    """(nb, 16) values 0..63 -> (nb, 12) bytes."""
    ls = ls.astype(np.uint8)
    lo = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    hi = (ls >> 4).reshape(-1, 4, 4)  # [k-group of 4 sub-blocks, position]
    hi = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return np.concatenate([lo, hi], axis=1)


def unpack_scales(s: np.ndarray) -> np.ndarray:
    """(nb, 12) bytes -> (nb, 16) signed scales -32..31 (int64)."""
    lo = np.concatenate([s[:, :8] & 0xF, s[:, :8] >> 4], axis=1)
    hi = (s[:, 8:12].reshape(-1, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)) & 3
    return (lo | (hi.reshape(-1, 16) << 4)).astype(np.int64) - 32


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    nb = x.shape[0]
    xs = x.reshape(-1, 16)
    if importance is None:
        L, scales = make_q3_quants(xs, 4)
        scales = scales.reshape(nb, 16)
        amax = np.zeros(nb, F32)
        max_scale = np.zeros(nb, F32)
        for j in range(16):
            upd = np.abs(scales[:, j]) > amax
            amax = np.where(upd, np.abs(scales[:, j]), amax)
            max_scale = np.where(upd, scales[:, j], max_scale)
        nz = max_scale != 0
        with quiet():
            iscale = F32(-32) / max_scale
            l = nearest_int(iscale[:, None] * scales)
            l = ((l + 128) & 0xFF) - 128  # C keeps it in an int8 before clamping
            ls = np.where(nz[:, None], np.clip(l, -32, 31) + 32, 0)
            d = np.where(nz, F1 / iscale, F0).astype(F32)
    else:
        sigma2 = F32(2) * seq_sum(x * x) / F32(256)
        qw = np.asarray(importance, F32).reshape(nb, 16, 16)
        x3 = x.reshape(nb, 16, 16)
        weight = (qw * np.sqrt(sigma2[:, None, None] + x3 * x3)).reshape(-1, 16)
        sw = seq_sum(weight).reshape(nb, 16)
        L, scales = make_qx_quants(xs, 4, weight)
        ls, d = make_qx_quants(scales.reshape(nb, 16), 32, sw)
    scale_bytes = pack_scales(ls)
    d_bytes = f16_bytes(d)
    dd = from_f16_bytes(d_bytes) * unpack_scales(scale_bytes).astype(F32)
    with quiet():
        l = np.clip(nearest_int(x.reshape(nb, 16, 16) / dd[:, :, None]), -4, 3) + 4
    L = np.where((dd != 0)[:, :, None], l, L.reshape(nb, 16, 16)).reshape(nb, 256)
    high = (L > 3).reshape(nb, 8, 32).astype(np.uint8)  # weight 32k + l -> bit k of byte l
    hmask = np.zeros((nb, 32), np.uint8)
    for k in range(8):
        hmask |= high[:, k] << k
    L = np.where(L > 3, L - 4, L)
    return np.concatenate([hmask, pack_2bit(L), scale_bytes, d_bytes], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    nb = q.shape[0]
    d = from_f16_bytes(q[:, 108:110])
    dl = (d * unpack_scales(q[:, 96:108]).astype(F32))[:, :, None]
    hbit = (q[:, :32].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    v = unpack_2bit(q[:, 32:96]).astype(np.int64) - 4 * (1 - hbit.reshape(nb, 256).astype(np.int64))
    return (dl * v.reshape(nb, 16, 16).astype(F32)).reshape(nb, 256)

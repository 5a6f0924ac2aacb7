"""IQ4_XS in plain NumPy (twin of kernels/iq4_xs.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from .iq4_common import KVALUES_F, block_scales, levels, max_scale, pack_levels
from .kquant_common import F0, F1, F32, f16_bytes, from_f16_bytes, nearest_int, quiet


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    n = x.shape[0]
    scales = block_scales(x, importance)  # (n, 8)
    d = (-max_scale(scales) / F32(32.0)).astype(F32)
    with quiet():
        inv = np.where(d != 0, F1 / d, F0).astype(F32)
    ls = np.clip(nearest_int(inv[:, None] * scales), -32, 31)
    dl = (d[:, None] * ls.astype(F32)).astype(F32)
    L = levels(x.reshape(-1, 32), dl.reshape(-1)).reshape(n, 256)
    u = (ls + 32).astype(np.uint16)
    scales_l = ((u[:, 0::2] & 0xF) | ((u[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    scales_h = np.zeros(n, np.uint16)
    for k in range(8):
        scales_h |= (u[:, k] >> 4) << (2 * k)
    sh = scales_h.astype("<u2").view(np.uint8).reshape(n, 2)
    return np.concatenate([f16_bytes(d), sh, scales_l, pack_levels(L)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    n = q.shape[0]
    d = from_f16_bytes(q[:, :2])
    sh = np.ascontiguousarray(q[:, 2:4]).view("<u2").astype(np.int64)  # (n, 1)
    sl = q[:, 4:8].astype(np.int64)
    lo = np.stack([sl & 0xF, sl >> 4], axis=2).reshape(n, 8)
    hi = (sh >> (2 * np.arange(8))) & 3
    dl = d * ((lo | (hi << 4)) - 32).astype(F32)
    qs = q[:, 8:].reshape(n, 8, 16)
    idx = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # (n, 8, 32)
    return (dl[:, :, None] * KVALUES_F[idx]).reshape(n, 256)

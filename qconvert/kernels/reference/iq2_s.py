"""IQ2_S in plain NumPy (twin of kernels/iq2_s.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ..iq_grids import tables
from .grid_search import group_indices
from .iq2_common import search_xs, super_scale
from .kquant_common import F32, from_f16_bytes


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    n = x.shape[0]
    qw = None if importance is None else np.asarray(importance, F32)
    L, signs, scales, written = search_xs(x, qw, "IQ2_S")
    gi = np.where(written[:, None], group_indices("IQ2_S", L), 0).reshape(n, 32)
    sg = np.where(written[:, None], signs, 0).reshape(n, 32).astype(np.uint8)
    qh = ((gi >> 8).reshape(n, 8, 4) << (2 * np.arange(4))).sum(axis=2).astype(np.uint8)
    mx, d, ls = super_scale(scales.reshape(n, 16), 0.9875)
    zero = (mx == 0)[:, None]  # llama.cpp keeps the codes, with d and the scales 0
    d = np.where(zero, 0, d).astype(np.uint8)
    sc = np.where(zero, 0, ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    return np.concatenate([d, (gi & 255).astype(np.uint8), sg, qh, sc], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    n = q.shape[0]
    d = from_f16_bytes(q[:, :2]).reshape(n, 1, 1)
    sc = q[:, 74:82].astype(np.int64)
    sc = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(n, 16)
    db = d * (F32(0.5) + sc.astype(F32))[:, :, None] * F32(0.25)  # (n, 16, 1)
    qh = (q[:, 66:74, None].astype(np.int64) >> (2 * np.arange(4))) & 3  # (n, 8, 4)
    gi = q[:, 2:34].astype(np.int64) | (qh.reshape(n, 32) << 8)
    neg = ((q[:, 34:66, None] >> np.arange(8)) & 1).astype(bool).reshape(n, 16, 16)
    v = db * tables("IQ2_S").values[gi].reshape(n, 16, 16)
    return np.where(neg, -v, v).reshape(n, 256)

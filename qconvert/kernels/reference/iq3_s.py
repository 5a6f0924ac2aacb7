"""IQ3_S in plain NumPy (twin of kernels/iq3_s.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ..iq_grids import tables
from .grid_search import group_indices
from .iq3_common import search, super_scale
from .kquant_common import F32, from_f16_bytes


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    n = x.shape[0]
    L, signs, scales, written = search("IQ3_S", x, importance, False)
    gi = np.where(written[:, :, None], group_indices("IQ3_S", L), 0)  # (n, 8, 8)
    # llama.cpp fills qs/signs slots only for sub-blocks it wrote, in order (see
    # kernels/iq3_common.py); qh and the scales stay indexed by sub-block
    slot = np.cumsum(written, axis=1) - 1
    qs = np.zeros((n, 8, 8), np.uint8)
    sg = np.zeros((n, 8, 4), np.uint8)
    r, ib = np.nonzero(written)
    qs[r, slot[r, ib]] = gi[r, ib] & 255
    sg[r, slot[r, ib]] = signs[r, ib]
    qh = ((gi >> 8) << np.arange(8)).sum(axis=2).astype(np.uint8)
    mx, d, ls = super_scale(scales, 1.033)
    d = np.where((mx == 0)[:, None], 0, d).astype(np.uint8)
    ls = np.where((mx == 0)[:, None], 0, ls)
    sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    return np.concatenate([d, qs.reshape(n, 64), qh, sg.reshape(n, 32), sc], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    n = q.shape[0]
    d = from_f16_bytes(q[:, :2]).reshape(n, 1, 1)
    sc = q[:, 106:110].astype(np.int64)
    sc = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(n, 8)
    db = d * (1 + 2 * sc).astype(F32)[:, :, None]  # (n, 8, 1)
    qh = (q[:, 66:74, None].astype(np.int64) >> np.arange(8)) & 1  # (n, 8, 8)
    gi = q[:, 2:66].reshape(n, 8, 8).astype(np.int64) | (qh << 8)
    g = tables("IQ3_S").values[gi].reshape(n, 8, 32)
    neg = ((q[:, 74:106].reshape(n, 8, 4, 1) >> np.arange(8)) & 1).astype(bool).reshape(n, 8, 32)
    v = db * g
    return np.where(neg, -v, v).reshape(n, 256)

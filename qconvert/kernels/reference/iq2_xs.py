"""IQ2_XS in plain NumPy (twin of kernels/iq2_xs.py; layout drawn there)."""

from __future__ import annotations

import numpy as np
from gguf import quants as gq

from .. import require_importance
from ..iq_grids import tables
from .grid_search import group_indices
from .iq2_common import search_xs, super_scale
from .kquant_common import F32, from_f16_bytes

KSIGNS = np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8)


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    require_importance("IQ2_XS", importance)
    x = np.asarray(x, F32)
    n = x.shape[0]
    L, signs, scales, written = search_xs(x, np.asarray(importance, F32))
    gi = group_indices("IQ2_XS", L)  # (G, 2)
    qs = np.where(written[:, None], gi | (signs << 9), 0).astype("<u2").view(np.uint8).reshape(n, 64)
    mx, d, ls = super_scale(scales.reshape(n, 16))
    sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    out = np.concatenate([d, qs, sc], axis=1)
    out[mx == 0] = 0
    return out


def decode(q: np.ndarray) -> np.ndarray:
    n = q.shape[0]
    d = from_f16_bytes(q[:, :2]).reshape(n, 1, 1)
    sc = q[:, 66:74].astype(np.int64)
    sc = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(n, 16)
    db = d * (F32(0.5) + sc.astype(F32))[:, :, None] * F32(0.25)  # (n, 16, 1)
    v16 = np.ascontiguousarray(q[:, 2:66]).view("<u2").astype(np.int64).reshape(n, 16, 2)
    s = KSIGNS[v16 >> 9]
    neg = ((s[:, :, :, None] >> np.arange(8)) & 1).astype(bool).reshape(n, 16, 16)
    v = db * tables("IQ2_XS").values[v16 & 511].reshape(n, 16, 16)
    return np.where(neg, -v, v).reshape(n, 256)

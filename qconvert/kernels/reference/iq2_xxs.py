"""IQ2_XXS in plain NumPy (twin of kernels/iq2_xxs.py; layout drawn there)."""

from __future__ import annotations

import numpy as np
from gguf import quants as gq

from .. import require_importance
from ..iq_grids import tables
from .grid_search import group_indices
from .iq2_common import search_xxs, super_scale
from .kquant_common import F32, from_f16_bytes

KSIGNS = np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8)


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    require_importance("IQ2_XXS", importance)
    x = np.asarray(x, F32)
    n = x.shape[0]
    L, signs, scales, written = search_xxs(x, np.asarray(importance, F32))
    gi = np.where(written[:, None], group_indices("IQ2_XXS", L), 0).reshape(n, 8, 4)
    aux = np.where(written, (signs << (7 * np.arange(4))).sum(axis=1), 0).reshape(n, 8)
    mx, d, ls = super_scale(scales.reshape(n, 8))
    aux = (aux | (ls << 28)).astype("<u4").view(np.uint8).reshape(n, 8, 4)
    out = np.concatenate([d, np.concatenate([gi.astype(np.uint8), aux], axis=2).reshape(n, 64)], axis=1)
    out[mx == 0] = 0
    return out


def decode(q: np.ndarray) -> np.ndarray:
    n = q.shape[0]
    d = from_f16_bytes(q[:, :2]).reshape(n, 1, 1, 1)
    blk = q[:, 2:].reshape(n, 8, 8)
    aux = np.ascontiguousarray(blk[:, :, 4:]).view("<u4").astype(np.int64).reshape(n, 8)
    db = d * (F32(0.5) + (aux >> 28).astype(F32)).reshape(n, 8, 1, 1) * F32(0.25)
    s = KSIGNS[(aux[:, :, None] >> (7 * np.arange(4))) & 127]  # (n, 8, 4)
    neg = ((s[:, :, :, None] >> np.arange(8)) & 1).astype(bool)
    v = db * tables("IQ2_XXS").values[blk[:, :, :4]]  # (n, 8, 4, 8)
    return np.where(neg, -v, v).reshape(n, 256)

"""IQ3_XXS in plain NumPy (twin of kernels/iq3_xxs.py; layout drawn there)."""

from __future__ import annotations

import numpy as np
from gguf import quants as gq

from ..iq_grids import tables
from .grid_search import group_indices
from .iq3_common import search, super_scale
from .kquant_common import F32, from_f16_bytes

KSIGNS = np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8)


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    n = x.shape[0]
    L, signs, scales, written = search("IQ3_XXS", x, importance, True)
    qs = np.where(written[:, :, None], group_indices("IQ3_XXS", L), 0).astype(np.uint8).reshape(n, 64)
    sas = (signs << (7 * np.arange(4))).sum(axis=2)
    sas = np.where(written, sas, 0)
    mx, d, ls = super_scale(scales, 1.0125)
    sas = (sas | (ls << 28)).astype("<u4").view(np.uint8).reshape(n, 32)
    out = np.concatenate([d, qs, sas], axis=1)
    out[mx == 0] = 0  # llama.cpp clears a block whose sub-blocks all count as zero
    return out


def decode(q: np.ndarray) -> np.ndarray:
    n = q.shape[0]
    d = from_f16_bytes(q[:, :2]).reshape(n, 1, 1, 1)
    sas = np.ascontiguousarray(q[:, 66:98]).view("<u4").astype(np.int64)  # (n, 8)
    db = d * (F32(0.5) + (sas >> 28).astype(F32)).reshape(n, 8, 1, 1) * F32(0.5)
    s = KSIGNS[(sas[:, :, None] >> (7 * np.arange(4))) & 127]  # (n, 8, 4)
    neg = ((s[:, :, :, None] >> np.arange(8)) & 1).astype(bool)  # (n, 8, 4, 8)
    g = tables("IQ3_XXS").values[q[:, 2:66]].reshape(n, 8, 4, 8)
    v = db * g
    return np.where(neg, -v, v).reshape(n, 256)

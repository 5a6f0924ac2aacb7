"""IQ4_NL in plain NumPy (twin of kernels/iq4_nl.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from .iq4_common import KVALUES_F, block_scales, levels, pack_levels
from .kquant_common import F32, f16_bytes, from_f16_bytes


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x, F32)
    d = block_scales(x, importance)[:, 0]
    return np.concatenate([f16_bytes(d), pack_levels(levels(x, d))], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = from_f16_bytes(q[:, :2])
    qs = q[:, 2:]
    idx = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    return d * KVALUES_F[idx]

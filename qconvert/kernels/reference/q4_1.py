"""Q4_1 in plain NumPy (twin of kernels/q4_1.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ._blocks import (f16_bytes, from_f16_bytes, inverse, min_max, pack_nibbles, quiet, trunc_int,
                      unpack_nibbles)


@quiet
def encode(x: np.ndarray) -> np.ndarray:
    lo, hi = min_max(x)
    d = ((hi - lo) / np.float32(15.0)).astype(np.float32)
    v = (x - lo[:, None]) * inverse(d)[:, None] + np.float32(0.5)
    q = np.minimum(trunc_int(v), 15)
    return np.concatenate([f16_bytes(d), f16_bytes(lo), pack_nibbles(q)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = from_f16_bytes(q[:, 0:2])
    m = from_f16_bytes(q[:, 2:4])
    return unpack_nibbles(q[:, 4:]).astype(np.float32) * d + m

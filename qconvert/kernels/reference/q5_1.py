"""Q5_1 in plain NumPy (twin of kernels/q5_1.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ._blocks import (f16_bytes, from_f16_bytes, inverse, min_max, pack_high_bits,
                      pack_nibbles, quiet, trunc_int, unpack_high_bits, unpack_nibbles)


@quiet
def encode(x: np.ndarray) -> np.ndarray:
    lo, hi = min_max(x)
    d = ((hi - lo) / np.float32(31.0)).astype(np.float32)
    v = (x - lo[:, None]) * inverse(d)[:, None] + np.float32(0.5)
    q = trunc_int(v)  # no clamp, as in C (see kernels/q5_1.py)
    return np.concatenate([f16_bytes(d), f16_bytes(lo), pack_high_bits(q), pack_nibbles(q & 0x0F)],
                          axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = from_f16_bytes(q[:, 0:2])
    m = from_f16_bytes(q[:, 2:4])
    v = unpack_nibbles(q[:, 8:]) | unpack_high_bits(q[:, 4:8])
    return v.astype(np.float32) * d + m

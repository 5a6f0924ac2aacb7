"""Q5_0 in plain NumPy (twin of kernels/q5_0.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ._blocks import (f16_bytes, from_f16_bytes, inverse, pack_high_bits, pack_nibbles, quiet,
                      signed_absmax, trunc_int, unpack_high_bits, unpack_nibbles)


@quiet
def encode(x: np.ndarray) -> np.ndarray:
    d = (signed_absmax(x) / np.float32(-16.0)).astype(np.float32)
    v = x * inverse(d)[:, None] + np.float32(16.5)
    q = np.minimum(trunc_int(v), 31)
    return np.concatenate([f16_bytes(d), pack_high_bits(q), pack_nibbles(q & 0x0F)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = from_f16_bytes(q[:, 0:2])
    v = unpack_nibbles(q[:, 6:]) | unpack_high_bits(q[:, 2:6])
    return (v.astype(np.int32) - 16).astype(np.float32) * d

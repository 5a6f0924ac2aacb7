"""Q4_0 in plain NumPy (twin of kernels/q4_0.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ._blocks import (f16_bytes, from_f16_bytes, inverse, pack_nibbles, quiet, signed_absmax,
                      trunc_int, unpack_nibbles)


@quiet
def encode(x: np.ndarray) -> np.ndarray:
    d = (signed_absmax(x) / np.float32(-8.0)).astype(np.float32)
    v = x * inverse(d)[:, None] + np.float32(8.5)
    q = np.minimum(trunc_int(v), 15)
    return np.concatenate([f16_bytes(d), pack_nibbles(q)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = from_f16_bytes(q[:, :2])
    return (unpack_nibbles(q[:, 2:]).astype(np.int32) - 8).astype(np.float32) * d

"""Q8_0 in plain NumPy (twin of kernels/q8_0.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ._blocks import f16_bytes, from_f16_bytes, inverse, quiet


def roundf(v: np.ndarray) -> np.ndarray:
    """C's roundf: halves away from zero (np.round would round them to even).
    Values past 2**23, inf and NaN give 0, as x86 does for C's cast (see kernels/q8_0.py)."""
    a = np.abs(v)
    finite = a < np.float32(8388608.0)
    a = np.where(finite, a, np.float32(0.0))
    t = np.trunc(a)
    t = t + (a - t >= np.float32(0.5))
    return np.copysign(t, v)


@quiet
def encode(x: np.ndarray) -> np.ndarray:
    d = (np.abs(x).max(axis=1) / np.float32(127.0)).astype(np.float32)
    q = roundf(x * inverse(d)[:, None]).astype(np.int8)
    return np.concatenate([f16_bytes(d), q.view(np.uint8)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = from_f16_bytes(q[:, :2])
    return q[:, 2:].view(np.int8).astype(np.float32) * d

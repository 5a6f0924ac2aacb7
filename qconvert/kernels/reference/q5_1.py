"""Q5_1 in plain NumPy (twin of kernels/q5_1.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ._blocks import (f16_bytes, from_f16_bytes, importance_weights, inverse, min_max,
                      pack_high_bits, pack_nibbles, quiet, row_sigma2, trunc_int, unpack_high_bits,
                      unpack_nibbles)
from .kquant_common import make_qkx_quants


@quiet
def encode(x: np.ndarray, importance: np.ndarray | None = None,
           sigma2: np.ndarray | None = None) -> np.ndarray:
    if importance is not None:
        return _encode_imp(x, importance, sigma2)
    lo, hi = min_max(x)
    d = ((hi - lo) / np.float32(31.0)).astype(np.float32)
    v = (x - lo[:, None]) * inverse(d)[:, None] + np.float32(0.5)
    q = trunc_int(v)  # no clamp, as in C (see kernels/q5_1.py)
    return np.concatenate([f16_bytes(d), f16_bytes(lo), pack_high_bits(q), pack_nibbles(q & 0x0F)],
                          axis=1)


def _encode_imp(x: np.ndarray, imp: np.ndarray, sigma2: np.ndarray | None) -> np.ndarray:
    """llama.cpp's quantize_row_q5_1_impl (see kernels/q5_1.py)."""
    w = importance_weights(x, imp, row_sigma2(x) if sigma2 is None else sigma2)
    L, d, the_min = make_qkx_quants(x, w, 31, -0.9, 0.05, 36, False)
    return np.concatenate([f16_bytes(d), f16_bytes(-the_min), pack_high_bits(L), pack_nibbles(L & 0x0F)],
                          axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = from_f16_bytes(q[:, 0:2])
    m = from_f16_bytes(q[:, 2:4])
    v = unpack_nibbles(q[:, 8:]) | unpack_high_bits(q[:, 4:8])
    return v.astype(np.float32) * d + m

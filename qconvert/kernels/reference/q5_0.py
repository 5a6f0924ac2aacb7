"""Q5_0 in plain NumPy (twin of kernels/q5_0.py; layout drawn there)."""

from __future__ import annotations

import numpy as np

from ._blocks import (f16_bytes, from_f16_bytes, importance_weights, inverse, pack_high_bits,
                      pack_nibbles, quiet, row_sigma2, signed_absmax, trunc_int, unpack_high_bits,
                      unpack_nibbles)
from .kquant_common import make_qx_quants


@quiet
def encode(x: np.ndarray, importance: np.ndarray | None = None,
           sigma2: np.ndarray | None = None) -> np.ndarray:
    if importance is not None:
        return _encode_imp(x, importance, sigma2)
    d = (signed_absmax(x) / np.float32(-16.0)).astype(np.float32)
    v = x * inverse(d)[:, None] + np.float32(16.5)
    q = np.minimum(trunc_int(v), 31)
    return np.concatenate([f16_bytes(d), pack_high_bits(q), pack_nibbles(q & 0x0F)], axis=1)


def _encode_imp(x: np.ndarray, imp: np.ndarray, sigma2: np.ndarray | None) -> np.ndarray:
    """llama.cpp's quantize_row_q5_0_impl (see kernels/q5_0.py)."""
    w = importance_weights(x, imp, row_sigma2(x) if sigma2 is None else sigma2)
    L, d = make_qx_quants(x, 16, w)
    return np.concatenate([f16_bytes(d), pack_high_bits(L), pack_nibbles(L & 0x0F)], axis=1)


def decode(q: np.ndarray) -> np.ndarray:
    d = from_f16_bytes(q[:, 0:2])
    v = unpack_nibbles(q[:, 6:]) | unpack_high_bits(q[:, 2:6])
    return (v.astype(np.int32) - 16).astype(np.float32) * d

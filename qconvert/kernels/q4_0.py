"""Q4_0: 32 weights, one fp16 scale, 4-bit values. x ≈ d * (q - 8).

As llama.cpp's quantize_row_q4_0_ref: the signed value of largest magnitude `max`
sets d = max / -8, so that value lands exactly on q = 0 (level -8) and the
asymmetric range [-8, 7] is spent where the block's extreme lies. q is
(int8_t)(x * id + 8.5f) — truncation after adding 8.5, i.e. rounding half up — clamped
to 15."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import get_f16, inverse, put_f16, signed_absmax
from .flags import JIT, PARALLEL, njit, prange
from .reference import q4_0 as ref

BLOCK = 32
TYPE_SIZE = 18


@njit(**JIT)
def level(v, id_):
    return min(15, np.int64(v * id_ + np.float32(8.5)))


# Block layout (18 bytes):
#   off 0..1   d   fp16, little-endian
#   off 2..17  qs  byte 2 + j: low nibble = q[j], high nibble = q[j + 16]   (j = 0..15)
@njit(**PARALLEL)
def encode(x):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    for b in prange(n):
        d = signed_absmax(x, b) / np.float32(-8.0)
        id_ = inverse(d)
        put_f16(out, b, 0, d)
        for j in range(BLOCK // 2):
            lo = level(x[b, j], id_)
            hi = level(x[b, j + BLOCK // 2], id_)
            out[b, 2 + j] = np.uint8(lo | (hi << 4))
    return out


@njit(**PARALLEL)
def decode(q):
    n = q.shape[0]
    out = np.empty((n, BLOCK), dtype=np.float32)
    for b in prange(n):
        d = get_f16(q, b, 0)
        for j in range(BLOCK // 2):
            byte = np.int64(q[b, 2 + j])
            out[b, j] = np.float32((byte & 0x0F) - 8) * d
            out[b, j + BLOCK // 2] = np.float32((byte >> 4) - 8) * d
    return out


KERNELS.add("Q4_0", Kernel("Q4_0", encode, decode, ref.encode, ref.decode))

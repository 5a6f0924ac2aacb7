"""Q8_0: 32 weights, one fp16 scale, int8 values. x ≈ d * q with d = absmax / 127.

Follows llama.cpp's quantize_row_q8_0_ref step for step in float32: d = amax / 127,
id = 1/d (0 for an all-zero block), q = roundf(x * id), roundf rounding halves away
from zero. The scale is stored in fp16 but the values are divided by the float32 d,
exactly as C does."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import get_f16, inverse, put_f16
from .flags import JIT, PARALLEL, njit, prange
from .reference import q8_0 as ref

BLOCK = 32
TYPE_SIZE = 34


@njit(**JIT)
def roundf(v):
    """C's roundf: nearest integer, halves away from zero. For |v| < 2**23,
    v - trunc(v) is exact in float32, so the comparison with 0.5 is too.

    Larger, infinite or NaN v only arise when d is a float32 subnormal and 1/d
    overflows to inf (a block of magnitudes ~1e-38). C then casts inf/NaN to int8,
    which x86 turns into the "integer indefinite" 0x80000000, whose low byte is 0;
    we return 0 so the bytes match llama.cpp built for x86."""
    a = abs(v)
    a = a if a < np.float32(8388608.0) else np.float32(0.0)
    t = np.float32(np.int32(a))  # truncation
    # select, not branch: keeps the loop free of jumps (about 2x faster here)
    t = t + (np.float32(1.0) if a - t >= np.float32(0.5) else np.float32(0.0))
    i = np.int32(t)
    return -i if v < 0 else i


# Block layout (34 bytes):
#   off 0..1   d   fp16, little-endian
#   off 2..33  qs  int8 x 32, weight j at byte 2 + j
@njit(**PARALLEL)
def encode(x):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    for b in prange(n):
        amax = np.float32(0.0)
        for j in range(BLOCK):
            amax = max(amax, abs(x[b, j]))
        d = amax / np.float32(127.0)
        id_ = inverse(d)
        put_f16(out, b, 0, d)
        for j in range(BLOCK):
            out[b, 2 + j] = np.uint8(roundf(x[b, j] * id_) & 0xFF)  # int8 two's complement
    return out


@njit(**PARALLEL)
def decode(q):
    n = q.shape[0]
    out = np.empty((n, BLOCK), dtype=np.float32)
    for b in prange(n):
        d = get_f16(q, b, 0)
        for j in range(BLOCK):
            out[b, j] = np.float32(np.int8(q[b, 2 + j])) * d
    return out


KERNELS.add("Q8_0", Kernel("Q8_0", encode, decode, ref.encode, ref.decode))

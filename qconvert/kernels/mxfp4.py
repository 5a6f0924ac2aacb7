"""MXFP4 (OCP microscaling FP4): 32 weights, one power-of-two scale, 4-bit E2M1 values.
x ≈ 2**(e - 128) * K[q], K = the E2M1 values doubled (0, ±1, ±2, ±3, ±4, ±6, ±8, ±12).

As llama.cpp's quantize_row_mxfp4_ref: the exponent comes from the block's largest
magnitude, e = floor(log2(amax)) - 2 + 127, so amax lands in [4, 8) x the half-scale
and the top code 12 is reached only by rounding; each value then takes the code of
least |K[q] * d - x|, the lowest code on ties (so +0 before -0, and the smaller
magnitude of two equidistant codes). This is also gpt-oss's on-disk expert format
(there with the two nibbles of a byte holding neighbouring values; see arch/gpt_oss.py)."""

from __future__ import annotations

import math

import numpy as np

from . import KERNELS, Kernel
from .flags import JIT, PARALLEL, njit, prange
from .reference import mxfp4 as ref

BLOCK = 32
TYPE_SIZE = 17
KVALUES = ref.KVALUES


@njit(**JIT)
def e8m0_half(e):
    """2**(e - 128) as float32; e = 0, 1 give the subnormals 2**-128, 2**-127."""
    bits = np.uint32(0x00200000) << np.uint32(e) if e < 2 else np.uint32(e - 1) << np.uint32(23)
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


@njit(**JIT)
def exponent_byte(amax):
    if not amax > 0:
        return np.uint8(0)
    lg = np.float32(math.log2(np.float64(amax)))  # log2f, correctly rounded
    e = np.int64(math.floor(lg)) - 2 + 127
    return np.uint8(e & 0xFF)  # x86's (uint8_t) of a negative float: the int32's low byte


@njit(**JIT)
def best_code(v, d, kv):
    best = 0
    best_err = abs(kv[0] * d - v)
    for i in range(1, 16):
        err = abs(kv[i] * d - v)
        if err < best_err:
            best = i
            best_err = err
    return best


# Block layout (17 bytes):
#   off 0      e   E8M0 exponent byte: scale 2**(e - 127), half-scale d = 2**(e - 128)
#   off 1..16  qs  byte 1 + j: low nibble = code of x[j], high nibble = code of x[j + 16]
@njit(**PARALLEL)
def encode(x):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    kv = KVALUES
    for b in prange(n):
        amax = np.float32(0.0)
        for j in range(BLOCK):
            a = abs(x[b, j])
            if amax < a:
                amax = a
        e = exponent_byte(amax)
        d = e8m0_half(e)
        out[b, 0] = e
        for j in range(BLOCK // 2):
            lo = best_code(x[b, j], d, kv)
            hi = best_code(x[b, j + BLOCK // 2], d, kv)
            out[b, 1 + j] = np.uint8(lo | (hi << 4))
    return out


@njit(**PARALLEL)
def decode(q):
    n = q.shape[0]
    out = np.empty((n, BLOCK), dtype=np.float32)
    kv = KVALUES
    for b in prange(n):
        d = e8m0_half(q[b, 0])
        for j in range(BLOCK // 2):
            byte = q[b, 1 + j]
            out[b, j] = kv[byte & 0x0F] * d
            out[b, j + BLOCK // 2] = kv[byte >> 4] * d
    return out


KERNELS.add("MXFP4", Kernel("MXFP4", encode, decode, ref.encode, ref.decode))

"""Pieces shared by the legacy block kernels (Q4_0 … Q8_0), numba side.

Each helper reproduces one loop of llama.cpp's quantize_row_*_ref exactly, including
which element wins a tie, because that element's sign becomes the scale's sign."""

from __future__ import annotations

import numpy as np

from .flags import JIT, PARALLEL, njit, prange
from .half import f16_bits_to_f32, f32_to_f16_bits


@njit(**JIT)
def signed_absmax(x, b):
    """The value of largest magnitude in block row b, sign kept; the first one wins a
    tie (C updates only on a strictly larger |v|), and an all-zero block gives +0.0."""
    amax = np.float32(0.0)
    vmax = np.float32(0.0)
    for j in range(x.shape[1]):
        v = x[b, j]
        if amax < abs(v):
            amax = abs(v)
            vmax = v
    return vmax


@njit(**JIT)
def min_max(x, b):
    """(min, max) of block row b, each the first of equal values (matters for ±0.0)."""
    lo = np.float32(np.finfo(np.float32).max)
    hi = -lo
    for j in range(x.shape[1]):
        v = x[b, j]
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return lo, hi


@njit(**JIT)
def inverse(d):
    """1/d in float32, 0 for d == 0 (C: `d ? 1.0f/d : 0.0f`)."""
    if d != np.float32(0.0):
        return np.float32(1.0) / d
    return np.float32(0.0)


@njit(**JIT)
def put_f16(out, b, off, v):
    """Store float32 v as a little-endian fp16 at out[b, off:off+2]."""
    h = np.int64(f32_to_f16_bits(v))
    out[b, off] = np.uint8(h & 0xFF)
    out[b, off + 1] = np.uint8(h >> 8)


@njit(**JIT)
def get_f16(q, b, off):
    """The little-endian fp16 at q[b, off:off+2], as float32."""
    return f16_bits_to_f32(np.int64(q[b, off]) | (np.int64(q[b, off + 1]) << 8))


@njit(**JIT)
def put_u32(out, b, off, v):
    """Store the low 32 bits of v little-endian at out[b, off:off+4]."""
    for k in range(4):
        out[b, off + k] = np.uint8((v >> (8 * k)) & 0xFF)


@njit(**JIT)
def get_u32(q, b, off):
    v = np.int64(0)
    for k in range(4):
        v |= np.int64(q[b, off + k]) << (8 * k)
    return v


# ---- importance weighting of the 32-wide types (llama.cpp's quantize_row_q*_impl) ----


@njit(**PARALLEL)
def row_sigma2(rows):
    """Per row, the mean square sum(x*x)/width, summed left to right in float32 as C's
    `sum_x2 += x[j]*x[j]` over the whole row does."""
    n, width = rows.shape
    out = np.empty(n, np.float32)
    for r in prange(n):
        s = np.float32(0.0)
        for j in range(width):
            s += rows[r, j] * rows[r, j]
        out[r] = s / np.float32(width)
    return out


@njit(**JIT)
def importance_weights(x, qw, sigma2, b, out):
    """llama.cpp's weight for value j of block b: qw[j] * sqrtf(sigma2 + x[j]*x[j]) —
    the imatrix entry scaled by the value's size, with the row's mean square keeping
    small values from counting for nothing."""
    for j in range(x.shape[1]):
        out[j] = qw[b, j] * np.sqrt(sigma2[b] + x[b, j] * x[b, j])

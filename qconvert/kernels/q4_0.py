"""Q4_0: 32 weights, one fp16 scale, 4-bit values. x ≈ d * (q - 8).

As llama.cpp's quantize_row_q4_0_ref: the signed value of largest magnitude `max`
sets d = max / -8, so that value lands exactly on q = 0 (level -8) and the
asymmetric range [-8, 7] is spent where the block's extreme lies. q is
(int8_t)(x * id + 8.5f) — truncation after adding 8.5, i.e. rounding half up — clamped
to 15."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from ._blocks import get_f16, importance_weights, inverse, put_f16, row_sigma2, signed_absmax
from .flags import JIT, PARALLEL, njit, prange
from .kquant_common import make_qx_quants
from .reference import q4_0 as ref

BLOCK = 32
CHUNK = 64  # blocks per parallel work item of the importance path
TYPE_SIZE = 18


@njit(**JIT)
def level(v, id_):
    return min(15, np.int64(v * id_ + np.float32(8.5)))


# Block layout (18 bytes):
#   off 0..1   d   fp16, little-endian
#   off 2..17  qs  byte 2 + j: low nibble = q[j], high nibble = q[j + 16]   (j = 0..15)
@njit(**PARALLEL)
def _encode(x):
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


# With importance (llama.cpp's quantize_row_q4_0_impl, used whenever an imatrix is
# given): d comes from make_qx_quants' weighted search over 18 scales around
# max/-8, the weights being importance_weights; L is that search's levels (an
# all-zero block gets d = 0 and level 0, not 8). Same layout as above.
@njit(**PARALLEL)
def _encode_imp(x, imp, sigma2):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), dtype=np.uint8)
    # blocks in chunks, scratch allocated once per chunk (allocating per block from
    # several threads cost more than the search on 2 cores)
    for c in prange((n + CHUNK - 1) // CHUNK):
        weight = np.empty(BLOCK, np.float32)
        w = np.empty(BLOCK, np.float32)
        wx = np.empty(BLOCK, np.float32)
        L = np.empty(BLOCK, np.int8)
        for b in range(c * CHUNK, min(n, c * CHUNK + CHUNK)):
            importance_weights(x, imp, sigma2, b, weight)
            d = make_qx_quants(BLOCK, 8, x[b], L, weight, True, w, wx)
            put_f16(out, b, 0, d)
            for j in range(BLOCK // 2):
                out[b, 2 + j] = np.uint8(L[j] | (L[j + BLOCK // 2] << 4))
    return out


def encode(x, importance=None, sigma2=None):
    """Plain rounding, or llama.cpp's importance-weighted search when `importance`
    (n_blocks, 32) is given; `sigma2` (n_blocks,) is the mean square of each block's
    row (kernels.encode passes it; each block counts as its own row without it)."""
    if importance is None:
        return _encode(x)
    if sigma2 is None:
        sigma2 = row_sigma2(x)
    return _encode_imp(x, importance, sigma2)


KERNELS.add("Q4_0", Kernel("Q4_0", encode, decode, ref.encode, ref.decode))

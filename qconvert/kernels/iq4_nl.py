"""IQ4_NL: 32 weights, one fp16 scale, 4-bit indices into 16 non-uniform levels
(iq4_common.KVALUES); 4.5 bits per weight. Same search as llama.cpp's quantize_iq4_nl,
with or without importance (iq4_common explains it).

Block layout (18 bytes):
  off 0..1   d   fp16, little-endian
  off 2..17  qs  byte 2 + j: low nibble = index of weight j, high nibble = of weight j + 16
A weight decodes to d * KVALUES[index]."""

from __future__ import annotations

import numpy as np

from . import KERNELS, Kernel
from .flags import PARALLEL, njit, prange
from .iq4_common import KVALUES_F, encode_nl_block
from .kquant_common import get_f16
from .reference import iq4_nl as ref

BLOCK = 32
TYPE_SIZE = 18


@njit(**PARALLEL)
def _encode(x, imp, has_imp):
    n = x.shape[0]
    out = np.empty((n, TYPE_SIZE), np.uint8)
    for b in prange(n):
        encode_nl_block(x[b], imp[b] if has_imp else x[b], has_imp, out[b])
    return out


@njit(**PARALLEL)
def decode(q):
    n = q.shape[0]
    y = np.empty((n, BLOCK), np.float32)
    for b in prange(n):
        d = get_f16(q[b], 0)
        for j in range(16):
            byte = q[b, 2 + j]
            y[b, j] = d * KVALUES_F[byte & 0xF]
            y[b, j + 16] = d * KVALUES_F[byte >> 4]
    return y


def encode(x: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    if importance is None:
        return _encode(x, x, False)
    return _encode(x, importance, True)


KERNELS.add("IQ4_NL", Kernel("IQ4_NL", encode, decode, ref.encode, ref.decode))

"""Q8_0 in plain NumPy (twin of kernels/q8_0.py; layout drawn there): gguf-py's own
quantizer, which is bit-exact with ggml's quantize_row_q8_0_ref (roundf halves away from
zero; an all-zero block gets d = 0). tests/kernels check it byte for byte against
llama.cpp and the numba kernel, so no second copy is kept here.

gguf-py also quantizes Q4_0, Q4_1, Q5_0 and Q5_1, but not bit-exactly: on blocks of signed
zeros it takes the sign of d from a different element than ggml's scan does, so those types
keep their own twins (tests/kernels/test_gguf_py_twins.py measures the difference)."""

from __future__ import annotations

import numpy as np
from gguf.quants import Q8_0

from ._blocks import quiet


@quiet  # a subnormal d makes 1/d inf; the cast of inf to int8 is the x86 result, as in ggml
def encode(x: np.ndarray) -> np.ndarray:
    return Q8_0.quantize_blocks(np.asarray(x, dtype=np.float32))


def decode(q: np.ndarray) -> np.ndarray:
    return Q8_0.dequantize_blocks(q)

"""Numba flags for every kernel, in one place. fastmath stays off: the encoders must
round exactly as llama.cpp's C does, and reassociated float sums would change bytes."""

import numba

# error_model="numpy": a division by zero gives inf/nan as in C instead of raising,
# which the K-quant scale searches rely on (llama.cpp divides first and checks after).
JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
PARALLEL = dict(JIT, parallel=True)

njit = numba.njit
prange = numba.prange

"""Numba flags for every kernel, in one place. fastmath stays off: the encoders must
round exactly as llama.cpp's C does, and reassociated float sums would change bytes."""

import numba

JIT = dict(cache=True, fastmath=False, nogil=True)
PARALLEL = dict(JIT, parallel=True)

njit = numba.njit
prange = numba.prange

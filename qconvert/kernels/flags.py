"""Numba flags for every kernel, in one place. fastmath stays off: the encoders must
round exactly as llama.cpp's C does, and reassociated float sums would change bytes.

Compiled kernels are cached on disk (cache=True): numba writes them beside the sources
(`__pycache__`), or, where that is read-only (a system site-packages), under
NUMBA_CACHE_DIR or the user's cache directory (~/.cache/numba); NUMBA_CACHE_DIR, when set,
comes first. Where no location is writable at all, numba refuses cache=True outright;
`njit` then compiles the kernel uncached instead of failing the import."""

import numba

# error_model="numpy": a division by zero gives inf/nan as in C instead of raising,
# which the K-quant scale searches rely on (llama.cpp divides first and checks after).
JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
PARALLEL = dict(JIT, parallel=True)

prange = numba.prange


def njit(*args, **flags):
    """numba.njit, falling back to cache=False where numba finds no writable cache
    location (it raises RuntimeError when the function is decorated)."""
    if args and callable(args[0]):  # bare @njit
        return njit(**flags)(args[0])

    def decorate(fn):
        try:
            return numba.njit(*args, **flags)(fn)
        except RuntimeError:
            if not flags.get("cache"):
                raise
            return numba.njit(*args, **dict(flags, cache=False))(fn)

    return decorate

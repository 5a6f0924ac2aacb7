"""llama.cpp's own quantizer as a test oracle: ggml_quantize_chunk from the libggml
that llama-cpp-python builds and ships. This is the function llama-quantize calls for
every tensor, so bytes equal to its bytes are the bytes llama.cpp would write."""

from __future__ import annotations

import ctypes
import glob
import os
from functools import lru_cache
from typing import Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


@lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    import llama_cpp  # noqa: F401  (loads libllama and its libggml dependencies)

    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    cands = sorted(glob.glob(os.path.join(libdir, "libggml-base.*"))) or sorted(
        glob.glob(os.path.join(libdir, "libggml.*"))
    )
    if not cands:
        raise RuntimeError(f"no libggml-base in {libdir}")
    lib = ctypes.CDLL(cands[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    return lib


def ggml_quantize(type_name: str, x: np.ndarray, imatrix: Optional[np.ndarray] = None) -> np.ndarray:
    """Quantize a 2-D float32 matrix (rows, n_per_row) with llama.cpp; uint8 bytes out."""
    t = GGMLQuantizationType[type_name]
    bs, ts = GGML_QUANT_SIZES[t]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    nrows, n_per_row = x.shape
    assert n_per_row % bs == 0
    out = np.zeros(nrows * (n_per_row // bs) * ts, dtype=np.uint8)
    lib = _lib()
    lib.ggml_quantize_init(int(t))
    imp = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert imatrix.shape == (n_per_row,)
        imp = imatrix.ctypes.data
    n = lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, imp)
    assert n == out.nbytes, (n, out.nbytes)
    return out.reshape(nrows * (n_per_row // bs), ts)

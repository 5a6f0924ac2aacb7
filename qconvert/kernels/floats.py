"""Float output types: F32, F16 and BF16 from float32 arrays."""

from __future__ import annotations

import numpy as np


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, rounding to nearest even as torch and ggml do; NaNs stay
    quiet NaNs (a plain round could carry a NaN's payload into infinity)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def encode_float(type_name: str, x: np.ndarray) -> np.ndarray:
    if type_name == "F32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if type_name == "F16":
        # beyond 65504 is Inf: the writer refuses such weights first (sink/gguf.check_holds)
        # unless --allow-nonfinite asked for it, so numpy's overflow warning is no news
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(x, dtype=np.float32).astype(np.float16)
    if type_name == "BF16":
        return to_bf16_bits(x)
    raise ValueError(type_name)

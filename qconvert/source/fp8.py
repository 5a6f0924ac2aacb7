"""8-bit floats as checkpoints store them (safetensors F8_E4M3, F8_E5M2), decoded to
float32 through a 256-entry table (numpy only; torch is not needed to read them).

    E4M3 ("e4m3fn", what DeepSeek-V3 and Qwen3-FP8 ship):  s eeee mmm, bias 7
        e = 0: subnormal, (m / 8) * 2^-6;  otherwise (1 + m / 8) * 2^(e - 7)
        no infinities: s 1111 111 is NaN, s 1111 110 is the largest, 448
    E5M2:  s eeeee mm, bias 15: exactly the high byte of an IEEE half (F16)

Both are exact in float32, so decoding loses nothing."""

from __future__ import annotations

import numpy as np


def _e4m3_table() -> np.ndarray:
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e, m = (b >> 3) & 0xF, b & 0x7
    mag = np.where(e == 0, m / 8.0 * 2.0**-6, (1 + m / 8.0) * 2.0 ** (e - 7.0))
    mag = np.where((e == 0xF) & (m == 0x7), np.nan, mag)
    return (sign * mag).astype(np.float32)


def _e5m2_table() -> np.ndarray:
    return (np.arange(256, dtype=np.uint16) << 8).view(np.float16).astype(np.float32)


TABLES = {"F8_E4M3": _e4m3_table(), "F8_E5M2": _e5m2_table()}
FP8_DTYPES = tuple(TABLES)


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored bytes (uint8, any shape) -> float32 of the same shape (a new array)."""
    return TABLES[dtype][np.asarray(raw, dtype=np.uint8)]

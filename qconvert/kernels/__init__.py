"""Block encoders and decoders, one module per ggml type.

The contract (checked here, at the boundary, and nowhere else):
  encode(x: float32 (n_blocks, block_size)) -> uint8 (n_blocks, type_size)
  decode(q: uint8 (n_blocks, type_size))    -> float32 (n_blocks, block_size)
Every numba kernel has a plain NumPy twin under `reference/`; tests compare the two
bit for bit and both with llama.cpp's own quantizer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import InputError, ShapeError
from ..qtypes import qtype
from ..registry import Registry

Encoder = Callable[..., np.ndarray]
Decoder = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Kernel:
    name: str
    encode: Encoder  # numba, parallel over blocks
    decode: Decoder
    encode_ref: Encoder  # NumPy twin
    decode_ref: Decoder


KERNELS: Registry[Kernel] = Registry("quantization kernel")

# types whose encoders take per-weight importance (llama.cpp's imatrix path); the others
# round the same way with or without it (llama.cpp ignores an imatrix for them too)
IMPORTANCE_TYPES = frozenset({"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                              "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S",
                              "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"})
# types llama.cpp quantizes only with an importance matrix (ggml_quantize_requires_imatrix;
# their encoders assert it)
REQUIRES_IMPORTANCE = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S"})
# of the importance types, those whose weighting also uses the mean square of the whole row
# (llama.cpp's quantize_row_q4_0_impl ... q5_1_impl), not of one block
ROW_SIGMA2_TYPES = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1"})

# module name under qconvert.kernels for each type; imported lazily so that numba
# compiles only what a run uses.
_MODULES = {
    "Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1",
    "Q2_K": "q2_k", "Q3_K": "q3_k", "Q4_K": "q4_k", "Q5_K": "q5_k", "Q6_K": "q6_k",
    "MXFP4": "mxfp4", "IQ4_NL": "iq4_nl", "IQ4_XS": "iq4_xs",
    "IQ3_XXS": "iq3_xxs", "IQ3_S": "iq3_s", "IQ2_XXS": "iq2_xxs", "IQ2_XS": "iq2_xs",
    "IQ2_S": "iq2_s", "IQ1_S": "iq1_s", "IQ1_M": "iq1_m",
}


def kernel(name: str) -> Kernel:
    if name not in KERNELS:
        mod = _MODULES.get(name.upper())
        if mod is not None:
            importlib.import_module(f"{__name__}.{mod}")
    return KERNELS.get(name)


def require_importance(name: str, importance) -> None:
    if importance is None:
        raise InputError(f"{name} needs importance statistics, as in llama.cpp: give --imatrix FILE or "
                         f"--calibration TEXT, and tensors without statistics (the embedding, the output) "
                         f"another type")


def _check_in(name: str, x: np.ndarray, width: int, dtype) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] != width:
        raise ShapeError(f"{name}: expected (n_blocks, {width}) array, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=dtype)


def encode(name: str, x: np.ndarray, *, reference: bool = False,
           importance: Optional[np.ndarray] = None, row_sigma2: Optional[np.ndarray] = None) -> np.ndarray:
    """Quantize a float array whose rows are whole blocks.

    `x` may be any shape whose size is a multiple of the block size; it is viewed as
    (n_blocks, block_size), its last axis being the tensor's rows. `importance`, when
    given, has one weight per value of x (per-column statistics already broadcast) and is
    used by IMPORTANCE_TYPES; the others ignore it, as llama.cpp does. `row_sigma2`
    (one per row of x) replaces the rows' mean squares for ROW_SIGMA2_TYPES when x holds
    only part of each row (GPTQ encodes one block column at a time).
    """
    qt = qtype(name)
    k = kernel(name)
    if x.size % qt.block_size:
        raise ShapeError(f"{name}: {x.size} values is not a whole number of {qt.block_size}-value blocks")
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, qt.block_size)
    fn = k.encode_ref if reference else k.encode
    if qt.name in REQUIRES_IMPORTANCE:
        require_importance(qt.name, importance)
    if importance is not None and qt.name in IMPORTANCE_TYPES:
        if np.size(importance) != x.size:
            raise ShapeError(f"{name}: {np.size(importance)} importance weights for {x.size} values")
        imp = np.ascontiguousarray(importance, dtype=np.float32).reshape(-1, qt.block_size)
        if qt.name in ROW_SIGMA2_TYPES:
            return fn(flat, imp, _block_sigma2(x, qt.block_size, reference, row_sigma2))
        return fn(flat, imp)
    return fn(_check_in(name, flat, qt.block_size, np.float32))


def _block_sigma2(x: np.ndarray, block: int, reference: bool, row_sigma2: Optional[np.ndarray]) -> np.ndarray:
    """The mean square of each block's row, repeated per block."""
    width = x.shape[-1] if x.ndim else 1
    if row_sigma2 is None:
        from ._blocks import row_sigma2 as fast
        from .reference._blocks import row_sigma2 as slow

        rows = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, width)
        row_sigma2 = (slow if reference else fast)(rows)
    s = np.ascontiguousarray(row_sigma2, dtype=np.float32).reshape(-1)
    if s.size * width != x.size:
        raise ShapeError(f"row_sigma2: {s.size} values for {x.size // width} rows")
    return np.repeat(s, width // block)


def decode(name: str, q: np.ndarray, *, reference: bool = False) -> np.ndarray:
    qt = qtype(name)
    k = kernel(name)
    if q.size % qt.type_size:
        raise ShapeError(f"{name}: {q.size} bytes is not a whole number of {qt.type_size}-byte blocks")
    flat = np.ascontiguousarray(q, dtype=np.uint8).reshape(-1, qt.type_size)
    fn = k.decode_ref if reference else k.decode
    return fn(_check_in(name, flat, qt.type_size, np.uint8))

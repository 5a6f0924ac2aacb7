"""A tensor's GGUF encoding as a sequence of pieces, one per slice of rows
(source/row_chunks.py): each piece is a call that encodes a slice already read. The writer
reads pieces in one thread and calls them in another (routes/gguf_file.py), so reading,
encoding and writing overlap and memory holds a few slices, never a whole tensor.

Importance statistics stay one weight per column (or per expert and column); a slice's
weights are broadcast to that slice only.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator, Optional

import numpy as np

from ..plan.tensor_plan import TensorPlan
from ..source.finite import RangeError, abs_max
from ..source.row_chunks import row_chunks
from ..source.source_tensor import SourceTensor
from .gguf import check_holds, encode

Piece = Callable[[], np.ndarray]


def pieces(tp: TensorPlan, s: SourceTensor, importance: Optional[np.ndarray] = None,
           scale_search: str = "llama") -> Iterator[Piece]:
    """Read s slice by slice (reading happens as this iterator advances); each item
    encodes its slice when called, to the bytes `encode` gives for that slice."""
    imp = None if importance is None else np.asarray(importance, dtype=np.float32)
    for start, stop, x in row_chunks(s):
        whole = start == 0 and stop == (s.shape[0] if s.shape else 1)
        part = imp
        # per-expert statistics (n_expert, cols) of a stacked (n_expert, rows, cols) tensor
        if part is not None and part.ndim == 2 and len(tp.shape) == 3 and getattr(tp, "slab", None) is None:
            part = part[start:stop]
        yield partial(_encode_slice, tp, s, x, part, whole, scale_search)


def _encode_slice(tp: TensorPlan, s: SourceTensor, x: np.ndarray, imp, whole: bool,
                  scale_search: str = "llama") -> np.ndarray:
    try:
        return encode(tp, x, imp, scale_search)
    except RangeError:
        if whole:
            raise
        # name the tensor's largest value, not this slice's, as a whole-tensor check would
        amax = max(abs_max(c) for _, _, c in row_chunks(s))
        check_holds(tp.name, tp.qtype, np.array([amax], dtype=np.float32))
        raise


def staged(data: np.ndarray) -> Iterator[Piece]:
    """Bytes already encoded (GPTQ's staged blocks), as pieces of at most a slice each."""
    flat = data.reshape(-1) if data.flags.c_contiguous else np.ascontiguousarray(data).reshape(-1)
    step = 32 << 20
    if flat.size <= step:
        yield lambda: flat
        return
    for i in range(0, flat.size, step):
        yield partial(_copy, flat, i, i + step)


def _copy(flat: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.array(flat[i:j])

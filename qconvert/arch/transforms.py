"""Named tensor transforms an adapter lists as data.

A transform maps the stored array to what llama.cpp expects. A `TensorRule` says which HF
tensors (by name suffix) get which transform, built from the adapter (for head counts):

    class SmolLM3Adapter(ArchAdapter):
        tensor_rules = ROPE_PERMUTE

Most transforms keep the shape, so the plan is made from shapes alone; a split
(`rows`) changes it, and the adapter states the part's shape when it builds the
SourceTensor (`split_rows`); a join (`stacked`) makes one GGUF tensor of several HF ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import FormatError
from ..source.safetensors_file import TensorHandle
from ..source.source_tensor import SourceTensor, Transform


def unpermute_rope(n_head: int) -> Transform:
    """HF stores q/k rows in rotate-half order (all first halves of a head, then all
    second halves); llama.cpp's Llama graph rotates interleaved pairs. Reorder rows:
    (n_head, 2, half, ...) -> (n_head, half, 2, ...)."""

    def t(w: np.ndarray, full_rows: int | None = None) -> np.ndarray:
        # full_rows: w is a slice of whole heads of a tensor with that many rows
        shape = w.shape
        half = (shape[0] if full_rows is None else full_rows) // n_head // 2
        return np.ascontiguousarray(w.reshape(-1, 2, half, *shape[1:]).swapaxes(1, 2).reshape(shape))

    t.row_group = lambda shape: shape[0] // n_head  # a head's rows (source/source_tensor.py)
    return t


def add_one(w: np.ndarray, full_rows: int | None = None) -> np.ndarray:
    """Gemma's RMSNorm multiplies by (1 + weight); llama.cpp multiplies by weight."""
    return w + np.float32(1.0)


add_one.row_group = lambda shape: 1  # elementwise


def rows(start: int, stop: int) -> Transform:
    """Rows start..stop-1 of a fused tensor (q of a fused qkv, gate of a fused gate_up)."""

    def t(w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w[start:stop])

    t.row_range = (start, stop)  # read by rows (source/source_tensor.py)
    return t


def split_rows(base: SourceTensor, parts: Sequence[tuple[str, int]]) -> list[SourceTensor]:
    """One fused HF tensor as several GGUF tensors: `parts` lists (GGUF name, row count)
    in storage order; each part loads only its rows (then the base's transforms)."""
    if sum(n for _, n in parts) != base.shape[0]:
        raise ValueError(f"{base.hf_name}: parts of {sum(n for _, n in parts)} rows do not "
                         f"split {base.shape[0]}")
    out, start = [], 0
    for name, n in parts:
        out.append(SourceTensor(name, base.hf_name, (n, *base.shape[1:]), base.src_dtype, base.handle,
                                [rows(start, start + n), *base.transforms]))
        start += n
    return out


def stacked(name: str, parts: Sequence[tuple[str, TensorHandle]]) -> SourceTensor:
    """Several HF tensors of one shape as one GGUF tensor with a new leading axis, in the
    order given (per-head norms stored one module per head). Row i of the result is part
    i, so the writer reads it a slice of parts at a time (source/row_chunks.py)."""
    first_name, first = parts[0]
    for hf_name, h in parts:
        if tuple(h.shape) != tuple(first.shape):
            raise FormatError(f"{h.source}: {hf_name} has shape {tuple(h.shape)}, unlike {first_name} "
                              f"{tuple(first.shape)}; they should stack into {name}")
    shape = (len(parts), *first.shape)

    def rows(start: int, stop: int) -> np.ndarray:
        return np.stack([h.load() for _, h in parts[start:stop]]).reshape(stop - start, *first.shape)

    handle = TensorHandle(name, first.dtype, shape, lambda: rows(0, len(parts)), first.source, rows)
    return SourceTensor(name, f"{first_name} (+{len(parts) - 1} stacked)", shape, first.dtype, handle)


@dataclass(frozen=True)
class TensorRule:
    """A transform for the HF tensors whose names end with one of `suffixes`."""

    name: str  # for docs and the registry listing
    suffixes: tuple[str, ...]
    make: Callable[[Any], Transform]  # adapter -> transform (base imports this module, not back)

    def applies(self, hf_name: str) -> bool:
        return hf_name.endswith(self.suffixes)


# llama.cpp's NORM-rope graphs (llama, granite, smollm3, mistral3...) rotate interleaved
# pairs; HF's Llama-style checkpoints store q/k for rotate-half
ROPE_PERMUTE = (
    TensorRule("q/k rope permutation", ("q_proj.weight", "q_proj.bias"), lambda a: unpermute_rope(a.hp.n_head)),
    TensorRule("q/k rope permutation", ("k_proj.weight", "k_proj.bias"), lambda a: unpermute_rope(a.hp.n_head_kv)),
)
# Gemma's norms store w for x * (1 + w)
NORM_PLUS_ONE = (TensorRule("norm weight +1", ("norm.weight",), lambda a: add_one),)

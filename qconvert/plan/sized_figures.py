"""The figures of a sized plan (plan/sized.py): what was asked, what the solver chose and
what it predicts, as one value the CLI prints and the tests check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .model_shape import ModelShape


@dataclass(frozen=True)
class TensorPick:
    type: str
    nbytes: int  # padded to the file's alignment
    loss: float  # measured (importance-weighted) loss at that type


@dataclass
class SizedFigures:
    target: str  # "size", "bpw" or "vram"
    header_bytes: int  # padded
    alignment: int
    target_size: Optional[int] = None  # bytes
    target_bpw: Optional[float] = None
    target_vram: Optional[int] = None  # bytes
    context: Optional[int] = None
    kv_type: Optional[str] = None
    kv_bytes: Optional[int] = None
    shape: Optional[ModelShape] = None
    weight_budget: int = 0
    weights_bytes: int = 0
    predicted_file_size: int = 0
    loss: float = 0.0
    lower_bound: float = 0.0
    gap: float = 0.0
    exact: bool = False
    lam: float = 0.0
    measured: int = 0  # sensitivity measurements made (the rest came from the cache)
    tensors: dict[str, TensorPick] = field(default_factory=dict)
    bits_per_weight: float = 0.0
    overhead_bytes: Optional[int] = None  # vram: runtime overhead
    vram_total: Optional[int] = None  # vram: weights + KV cache + overhead

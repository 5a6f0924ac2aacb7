"""What `qconvert.quantize` returns: one result type per output format, with typed fields
(no attribute that only some routes set)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .plan.sized_figures import SizedFigures
from .plan.tensor_plan import Plan

if TYPE_CHECKING:
    from .sink.safetensors_out import SafetensorsPlan


@dataclass
class GGUFResult:
    output: Optional[Path]  # None after a dry run
    plan: Plan
    seconds: float = 0.0
    file_size: int = 0
    tokenizer: Optional[object] = None
    notes: list[str] = field(default_factory=list)
    stats: dict[str, dict] = field(default_factory=dict)  # GPTQ: per-tensor err / rtn_err
    budget: Optional[SizedFigures] = None  # a sized plan's figures
    files: list[Path] = field(default_factory=list)  # every file written: [output], or a split set's members


@dataclass
class SafetensorsResult:
    output: Optional[Path]  # the checkpoint directory; None after a dry run
    plan: "SafetensorsPlan"
    label: str  # W4A16-G128 ...
    seconds: float = 0.0
    file_size: int = 0  # bytes of the .safetensors shards
    notes: list[str] = field(default_factory=list)
    stats: dict[str, dict] = field(default_factory=dict)  # GPTQ: per-tensor err / rtn_err


QuantizeResult = GGUFResult | SafetensorsResult

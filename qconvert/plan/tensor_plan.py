"""The plan is a value: one `TensorPlan` per output tensor, made from shapes alone.
`--dry-run` prints it, budgets are enforced on it, the writer lays out the file from it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from ..qtypes import QType


@dataclass
class TensorPlan:
    name: str  # GGUF tensor name
    shape: tuple[int, ...]  # numpy order (row width last)
    src_dtype: str
    qtype: QType
    reason: str  # the rule that chose the type
    fallback: str = ""  # non-empty when the wanted type could not be used, and why
    scheme: str = "rtn"  # how values are rounded: rtn, importance (imatrix-weighted)...
    # set on the per-expert entries the writer makes from a stacked (n_expert, rows, cols)
    # entry (source/expert_stack.py): which slab this is; shape is then the slab's
    slab: Optional[int] = None

    @property
    def n_params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.qtype.nbytes(self.shape)

    def slab_plan(self, i: int) -> "TensorPlan":
        """The entry for slab i of a stacked 3-D tensor (one expert), encoded on its own."""
        return replace(self, shape=tuple(self.shape[1:]), slab=i)


@dataclass
class Plan:
    tensors: list[TensorPlan] = field(default_factory=list)
    ftype: str = "F16"  # what the file as a whole is called (general.file_type)

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return self.nbytes * 8 / max(1, self.n_params)

    @property
    def fallbacks(self) -> list[TensorPlan]:
        return [t for t in self.tensors if t.fallback]

    def by_type(self) -> dict[str, tuple[int, int, int]]:
        """type -> (tensor count, parameters, bytes)"""
        out: dict[str, list[int]] = {}
        for t in self.tensors:
            row = out.setdefault(t.qtype.name, [0, 0, 0])
            row[0] += 1
            row[1] += t.n_params
            row[2] += t.nbytes
        return {k: (v[0], v[1], v[2]) for k, v in out.items()}

"""The importance-weighted scheme for GGUF: K-quant scale searches weighted by the mean
squared activation of each input channel (llama.cpp's importance matrix). The plan marks
which tensors use it; tensors without statistics, or of types whose llama.cpp encoder
ignores them, stay round-to-nearest and the plan says so."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import InputError, ShapeError
from ..kernels import IMPORTANCE_TYPES
from ..plan.tensor_plan import Plan


def load_importance(path: str | Path):
    from ..calib.imatrix import ImportanceMatrix

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: importance matrix file not found (--imatrix)")
    return ImportanceMatrix.load(p)


def mark_plan(plan: Plan, imatrix, source: str = "--imatrix") -> list[str]:
    """Set scheme="importance" on every tensor the statistics can serve; return notes on
    what stays plain. Shapes are checked here, before any weight is read."""
    notes, missing, plain_types = [], 0, set()
    for tp in plan.tensors:
        if not tp.qtype.quantized:
            continue
        imp = imatrix.get(tp.name)
        if imp is None:
            missing += 1
            continue
        if imp.ndim != 1 or imp.shape[0] != tp.shape[-1]:
            raise ShapeError(f"{source}: statistics for {tp.name} have {imp.shape[-1]} channels; "
                             f"the tensor's rows are {tp.shape[-1]} wide (imatrix of another model?)")
        if tp.qtype.name in IMPORTANCE_TYPES:
            tp.scheme = "importance"
        else:
            plain_types.add(tp.qtype.name)
    if missing:
        notes.append(f"{missing} quantized tensors have no importance statistics (e.g. token_embd/output); "
                     "they are rounded to nearest")
    if plain_types:
        notes.append(f"importance is not used for {', '.join(sorted(plain_types))} "
                     "(qconvert's encoders for these types have no importance path)")
    return notes


def importance_for(imatrix, name: str) -> Optional[object]:
    return None if imatrix is None else imatrix.get(name)

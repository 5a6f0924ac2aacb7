"""The importance-weighted scheme for GGUF: K-quant and 32-wide legacy scale searches
weighted by the mean squared activation of each input channel (llama.cpp's importance
matrix). A new plan marks which tensors use it; tensors without statistics, or of types
whose llama.cpp encoder ignores them, stay round-to-nearest and the plan says so."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..errors import InputError, ShapeError
from ..kernels import IMPORTANCE_TYPES, REQUIRES_IMPORTANCE
from ..plan.tensor_plan import Plan
from ..source.input_file import checked_input_file


def load_importance(path: str | Path):
    from ..calib.imatrix import ImportanceMatrix

    return ImportanceMatrix.load(checked_input_file(path, "importance matrix (--imatrix)"))


def check_importance(plan: Plan, imatrix, source: str = "--imatrix") -> int:
    """Statistics made for this model: each entry for a quantized tensor as wide as its
    rows, and at least one such entry (a file whose names match nothing is another model's,
    and would change nothing). Returns how many quantized tensors have no statistics."""
    missing, matched = [], 0
    for tp in plan.tensors:
        if not tp.qtype.quantized:
            continue
        imp = imatrix.get(tp.name)
        if imp is None:
            missing.append(tp.name)
            continue
        matched += 1
        if imp.shape[-1] != tp.shape[-1]:
            raise ShapeError(f"{source}: statistics for {tp.name} have {imp.shape[-1]} channels; "
                             f"the tensor's rows are {tp.shape[-1]} wide (imatrix of another model?)")
        # an expert stack (n_expert, rows, cols) has one row of statistics per expert
        want = (tp.shape[0], tp.shape[-1]) if len(tp.shape) == 3 else (tp.shape[-1],)
        if imp.shape != want:
            raise ShapeError(f"{source}: statistics for {tp.name} have shape {list(imp.shape)}; the tensor "
                             f"{list(tp.shape)} needs {list(want)} (one row per expert for an expert stack)")
    if missing and not matched:
        names = list(getattr(imatrix, "names", lambda: [])())
        theirs = f" (its first entry: {names[0]!r})" if names else ""
        example = next((n for n in missing if n.startswith("blk.")), missing[0])
        raise ShapeError(f"{source}: no statistics for any quantized tensor of this model, such as {example!r}"
                         f"{theirs}; imatrix of another model?")
    return len(missing)


def importance_plan(plan: Plan, imatrix, source: str = "--imatrix") -> tuple[Plan, list[str]]:
    """A new plan with scheme="importance" on every tensor the statistics can serve, and
    notes on what stays plain. Shapes are checked here, before any weight is read."""
    missing = check_importance(plan, imatrix, source)
    notes, plain_types, tensors = [], set(), []
    for tp in plan.tensors:
        tensors.append(tp)
        if tp.qtype.name in REQUIRES_IMPORTANCE and imatrix.get(tp.name) is None:
            # llama.cpp's encoder asserts here; refuse before any weight is read
            raise InputError(f"{source}: no statistics for {tp.name}, planned as {tp.qtype.name}, which cannot be "
                             f"written without them; give it another type (--tensor-type '{tp.name}=IQ4_XS')")
        if not tp.qtype.quantized or imatrix.get(tp.name) is None:
            continue
        if tp.qtype.name in IMPORTANCE_TYPES:
            tensors[-1] = replace(tp, scheme="importance")
        else:
            plain_types.add(tp.qtype.name)
    if missing:
        notes.append(f"{missing} quantized tensors have no importance statistics (e.g. token_embd/output); "
                     "they are rounded to nearest")
    if plain_types:
        notes.append(f"importance is not used for {', '.join(sorted(plain_types))} "
                     "(llama.cpp's encoders for these types ignore it too)")
    return replace(plan, tensors=tensors), notes


def importance_for(imatrix, name: str) -> Optional[object]:
    return None if imatrix is None else imatrix.get(name)

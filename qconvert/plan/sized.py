"""A plan sized for a target: --target-size (file bytes), --target-bpw (bits per weight of
the tensors) or --target-vram: weights + KV cache at --context (default 4096) + runtime
overhead, totalled by memory.memory_needed, the function estimate-memory reports, so the
largest weight budget w with memory_needed(w) <= VRAM is found by bisection.

The preset plan (Q4_K_M) decides what is never quantized (vectors, norms, tables llama.cpp
keeps dense) and what a row width forces; every other tensor gets the type the budget
solver (budget.py) picks from its candidates (sensitivity.py), subject to floors:

- output.weight (or a tied token_embd) not below Q5_K: its error lands directly on the
  logits, and llama.cpp keeps it at Q6_K in every K mix; one step lower leaves the solver
  room at tight budgets.
- token_embd not below Q3_K: its rows are looked up, not summed over the hidden state, so
  it tolerates coarse types (llama.cpp's Q3_K mixes store it at Q3_K).
- without importance statistics, or with them when its width forces a fallback type:
  output.weight not below Q6_K's bits where the budget allows (Q8_0 for a fallback); and without
  statistics
  the losses of attn_v, attn_output and ffn_down counted ROLE_WEIGHT times (see below).

Bytes are counted as the writer lays them out: each tensor's size from qtypes padded to the
file's data alignment, plus the header (metadata + tensor infos, whose size does not depend
on the chosen types) padded the same way, so the predicted file size is the written one.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

from ..errors import BudgetError, InputError
from ..qtypes import qtype
from ..source import finite
from .budget import Option, solve
from .memory import (ModelShape, is_gguf, kv_cache_bytes_for, memory_needed, model_shape_from_dir, parse_bytes,
                     read_gguf_model)
from .sensitivity import CANDIDATES, candidate_set, candidates_for, measure
from .sized_figures import SizedFigures, TensorPick
from .tensor_plan import Plan, TensorPlan

FLOORS = {"output.weight": "Q5_K", "token_embd.weight": "Q3_K"}
TIED_OUTPUT_FLOOR = "Q5_K"
# without statistics every input column weighs alike, so the measured loss cannot see that
# the logits take output.weight's error unmixed: the solver gave it Q5_K and lost to the
# preset (KL 1.19x Q4_K_M's on examples/tiny-llama). Then llama.cpp's Q6_K is its floor
# where the budget allows it (FLOORS' Q5_K otherwise).
PLAIN_OUTPUT_FLOOR = "Q6_K"
# ...and cannot see that attn_v, attn_output and ffn_down (the two that write the residual
# stream and the values attn_output mixes) pass their error on less diluted than q, k, gate,
# up: llama.cpp's mixes give exactly these more bits. Without statistics their losses count
# ROLE_WEIGHT times (measured on examples/tiny-llama, KL vs the preset at its size:
# Q4_K_M 1.05x -> 0.92x, Q3_K_M 1.12x -> 0.97x; llama_narrow Q4_K_M 0.77x -> 0.74x).
ROLE_WEIGHT = 2.0
WEIGHTED_ROLES = ("attn_v", "attn_output", "ffn_down")
MIX_NAME = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def floor_for(name: str, tied: bool) -> Optional[str]:
    if tied and name == "token_embd.weight":
        return TIED_OUTPUT_FLOOR
    return FLOORS.get(name)


def candidate_types(tp: TensorPlan, tied: bool, candidates=CANDIDATES) -> list[str]:
    """Candidate types for a tensor the preset quantizes (empty: keep the preset's type):
    every candidate whose block fits its rows, so a width the K-quants do not divide
    (576, 320...) still chooses among the 32-wide types."""
    if not tp.qtype.quantized and not tp.fallback:
        return []
    types = candidates_for(tp.shape[-1], candidates)
    fl = floor_for(tp.name, tied)
    if fl is not None:
        types = [t for t in types if qtype(t).bits_per_weight >= qtype(fl).bits_per_weight]
    return types


def model_shape(src) -> ModelShape:
    """The KV-cache shape estimate-memory would use for this input."""
    if is_gguf(src.path):
        m = read_gguf_model(src.path)
        if m.shape is None:
            raise InputError(f"{src.path}: cannot size the KV cache ({m.shape_problem}); use --target-size")
        return m.shape
    return model_shape_from_dir(src.path)


def weight_budget_for_vram(vram: int, shape: ModelShape, context: int, kv_type: str) -> int:
    """The most weight bytes w with memory_needed(w, ...) <= vram (the same total
    estimate-memory reports); negative when KV cache and overhead alone exceed vram.
    Bisection: memory_needed is non-decreasing in w."""
    def need(w: int) -> int:
        return memory_needed(w, shape, context, kv_type)

    if need(0) > vram:
        return vram - need(0)
    lo, hi = 0, vram + 1  # need(lo) <= vram < need(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if need(mid) <= vram:
            lo = mid
        else:
            hi = mid
    return lo


def sized_plan(src, base: Plan, *, header_bytes: int, alignment: int, target_size=None, target_bpw=None,
               target_vram=None, context: Optional[int] = None, kv_type: str = "F16", imatrix=None,
               sensitivity_cache=None, write_cache: bool = True, families=None) -> tuple[Plan, SizedFigures]:
    """(plan, its figures). Exactly one target must be given. write_cache False (a dry
    run): the sensitivity cache is read but not written. families: the candidate type
    families (sensitivity.FAMILIES; default all)."""
    given = [k for k, v in (("size", target_size), ("bpw", target_bpw), ("vram", target_vram)) if v is not None]
    if len(given) != 1:
        raise InputError("give one of --target-size, --target-bpw, --target-vram")
    kind = given[0]
    tied = not any(t.name == "output.weight" for t in base.tensors)
    # tensors the checkpoint stores in a ggml type the plan keeps (gpt-oss's MXFP4 experts)
    # are copied, not re-chosen: requantizing them needs --allow-requantize
    kept = {s.name for s in getattr(src, "tensors", ()) if s.packed_type}
    pool = candidate_set(families, importance=imatrix is not None)
    cands = {tp.name: [] if tp.name in kept else candidate_types(tp, tied, pool) for tp in base.tensors}
    variable = {n: c for n, c in cands.items() if c}
    fixed_bytes = sum(pad(tp.nbytes, alignment) for tp in base.tensors if tp.name not in variable)
    header = pad(header_bytes, alignment)
    n_params = base.n_params
    report = SizedFigures(kind, header, alignment)
    kv = None
    if kind == "size":
        total = parse_bytes(target_size, "--target-size")
        weight_budget = total - header
        report.target_size = total
    elif kind == "bpw":
        bpw = float(target_bpw)
        if not bpw > 0:
            raise InputError(f"--target-bpw {target_bpw}: must be a positive number of bits")
        weight_budget = int(bpw * n_params // 8)
        report.target_bpw = bpw
    else:
        if context is None:
            context = 4096
        if context < 1:
            raise InputError(f"--context {context}: must be a positive number of tokens")
        vram = parse_bytes(target_vram, "--target-vram")
        kv_type = str(kv_type).upper()
        if kv_type not in ("F16", "Q8_0", "F32", "BF16"):
            raise InputError(f"--kv-type {kv_type}: choose f16 or q8_0")
        shape = model_shape(src)
        kv = kv_cache_bytes_for(shape, context, kv_type)
        weight_budget = weight_budget_for_vram(vram, shape, context, kv_type)
        report.target_vram, report.context, report.kv_type, report.kv_bytes, report.shape = (
            vram, context, kv_type, kv, shape)

    losses, measured = measure(src, variable, imatrix=imatrix, cache_path=sensitivity_cache, save=write_cache)
    options = {n: usable_options(n, [Option(t, pad(qtype(t).nbytes(_shape(base, n)), alignment), losses[(n, t)])
                                     for t in c]) for n, c in variable.items()}
    if imatrix is None:
        options = {n: weighted_by_role(n, o) for n, o in options.items()}
    sol = None
    out_name = "token_embd.weight" if tied else "output.weight"
    # With statistics the floor stays Q5_K (raising it lost at Q4_K_M on examples/tiny-llama,
    # 0.83x -> 1.04x the preset's KL), except for an output whose width the K-quants do not
    # divide: there Q5_K's floor let the solver take Q5_1 where the preset falls back to Q8_0,
    # and a SmolLM-shaped model (hidden 192, tied) lost 4.5x the preset's KL for it.
    out_fallback = any(tp.name == out_name and tp.fallback for tp in base.tensors)
    if (imatrix is None or out_fallback) and out_name in options:
        raised = raise_floor(options, out_name, PLAIN_OUTPUT_FLOOR)
        if raised is not None:
            try:
                sol = solve(raised, weight_budget - fixed_bytes)
                options = raised
            except BudgetError:
                sol = None  # too tight for it: the usual floors
    if sol is None:
        try:
            sol = solve(options, weight_budget - fixed_bytes)
        except BudgetError as e:
            smallest_w = e.smallest + fixed_bytes
            raise _unmet(kind, report, smallest_w, n_params) from None

    tensors, per = [], {}
    for tp in base.tensors:
        o = sol.picks.get(tp.name)
        if o is None:
            tensors.append(tp)
            continue
        smaller = [x for x in options[tp.name] if x.nbytes < o.nbytes]
        prev = max(smaller, key=lambda x: x.nbytes) if smaller else None
        reason = f"budget: {o.type} (loss {o.loss:.3g}" + (
            f", Δloss {o.loss - prev.loss:+.3g} vs {prev.type})" if prev else ")")
        tensors.append(TensorPlan(tp.name, tp.shape, tp.src_dtype, qtype(o.type), reason))
        per[tp.name] = TensorPick(o.type, o.nbytes, o.loss)
    plan = Plan(tensors, ftype=dominant_mix(tensors))
    weights = sum(pad(t.nbytes, alignment) for t in plan.tensors)
    report = replace(report, weight_budget=weight_budget, weights_bytes=weights, predicted_file_size=header + weights,
                     loss=sol.loss, lower_bound=sol.lower_bound, gap=sol.gap, exact=sol.exact, lam=sol.lam,
                     measured=measured, tensors=per, bits_per_weight=plan.bits_per_weight)
    if kind == "vram":
        report.vram_total = memory_needed(weights, shape, context, kv_type)
        report.overhead_bytes = report.vram_total - weights - kv
    return plan, report


def weighted_by_role(name: str, options: list[Option]) -> list[Option]:
    """`options` with the losses of a WEIGHTED_ROLES tensor (blk.N.ffn_down.weight,
    blk.N.ffn_down_exps.weight...) scaled by ROLE_WEIGHT; others unchanged."""
    parts = name.split(".")
    role = parts[2] if len(parts) > 3 and parts[0] == "blk" else ""
    if not any(role == r or role.startswith(r + "_") for r in WEIGHTED_ROLES):
        return options
    return [replace(o, loss=o.loss * ROLE_WEIGHT) for o in options]


def raise_floor(options: dict, name: str, floor: str) -> Optional[dict]:
    """`options` with `name` limited to types of at least `floor`'s bits; None when that
    leaves it nothing (a width the floor's block does not divide) or changes nothing."""
    bits = qtype(floor).bits_per_weight
    kept = [o for o in options[name] if qtype(o.type).bits_per_weight >= bits]
    if not kept or len(kept) == len(options[name]):
        return None
    return {**options, name: kept}


def usable_options(name: str, options: list[Option]) -> list[Option]:
    """The options a tensor can take: not those whose loss is not finite (a type too narrow
    for its largest weight, sensitivity.py). When none is left the tensor is refused like
    any too-large weight, unless --allow-nonfinite: then every option is alike (loss 0)."""
    ok = [o for o in options if math.isfinite(o.loss)]
    if ok:
        return ok
    if not finite.allowed():
        types = ", ".join(o.type for o in options)
        raise finite.RangeError(f"tensor {name!r}: no type a sized plan chooses from ({types}) holds its "
                                f"largest weight without Inf; quantize with a preset and --tensor-type "
                                f"'{name}=BF16', or pass --allow-nonfinite")
    return [replace(o, loss=0.0) for o in options]


def _shape(plan: Plan, name: str):
    return next(t.shape for t in plan.tensors if t.name == name)


def dominant_mix(tensors: list[TensorPlan]) -> str:
    """The llama.cpp file type named after the quantized type holding most parameters."""
    count: dict[str, int] = {}
    for t in tensors:
        if t.qtype.quantized:
            count[t.qtype.name] = count.get(t.qtype.name, 0) + t.n_params
    if not count:
        return "F16"
    top = min(count, key=lambda k: (-count[k], k))
    return MIX_NAME.get(top, top)


def _unmet(kind: str, report: SizedFigures, smallest_weights: int, n_params: int) -> BudgetError:
    if kind == "size":
        need = smallest_weights + report.header_bytes
        msg = (f"--target-size {report.target_size:,} bytes cannot be met: the smallest allowed types "
               f"give a file of {need:,} bytes ({need / 1e9:.3f} GB)")
    elif kind == "bpw":
        need = smallest_weights * 8 / n_params
        msg = (f"--target-bpw {report.target_bpw} cannot be met: the smallest allowed types give "
               f"{need:.3f} bits per weight")
    else:
        need = memory_needed(smallest_weights, report.shape, report.context, report.kv_type)
        msg = (f"--target-vram {report.target_vram:,} bytes cannot be met at context {report.context}: "
               f"the smallest allowed types need {need:,} bytes ({need / 1e9:.3f} GB: weights "
               f"{smallest_weights:,}, KV cache {report.kv_bytes:,}, overhead "
               f"{need - smallest_weights - report.kv_bytes:,})")
    err = BudgetError(msg)
    err.smallest = need
    return err

"""Per-tensor type policy for a single target type: an ordered list of rules, first
match wins, and the winning rule is recorded on the plan. Presets with per-tensor mixes
build on the same `Rule` shape."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..errors import ShapeError, UnsupportedError
from ..qtypes import QType, qtype
from .tensor_plan import Plan, TensorPlan

# a rule looks at (gguf name, shape) and returns a type name, or None to pass
Chooser = Callable[[str, tuple[int, ...]], Optional[str]]


@dataclass(frozen=True)
class Rule:
    reason: str
    choose: Chooser


def keep_f32_1d() -> Rule:
    # norms, biases and rope factors are tiny and precision-sensitive; llama.cpp
    # requires F32 for most of them.
    return Rule("1-D tensors stay F32", lambda n, s: "F32" if len(s) <= 1 else None)


def pattern(regex: str, type_name: str, reason: str | None = None) -> Rule:
    rx = re.compile(regex)
    return Rule(reason or f"{regex}={type_name}", lambda n, s: type_name if rx.search(n) else None)


def everything(type_name: str, reason: str) -> Rule:
    return Rule(reason, lambda n, s: type_name)


# the type to use when a row width does not split into a type's blocks
FALLBACK_F16 = "F16"


def resolve(name: str, shape: tuple[int, ...], src_dtype: str, rules: Sequence[Rule],
            no_fallback: bool = False) -> TensorPlan:
    for rule in rules:
        t = rule.choose(name, shape)
        if t is None:
            continue
        qt = qtype(t)
        if qt.fits(shape[-1] if shape else 1):
            return TensorPlan(name, shape, src_dtype, qt, rule.reason)
        why = f"row width {shape[-1]} is not a multiple of {qt.name}'s block size {qt.block_size}"
        if no_fallback:
            raise ShapeError(f"tensor {name} {list(shape)}: {why} (fallback refused by --no-fallback)")
        return TensorPlan(name, shape, src_dtype, qtype(FALLBACK_F16), rule.reason,
                          fallback=f"{qt.name} -> {FALLBACK_F16}: {why}")
    raise UnsupportedError(f"no rule chose a type for tensor {name}")


def single_type_rules(type_name: str) -> list[Rule]:
    qt: QType = qtype(type_name)
    return [keep_f32_1d(), everything(qt.name, f"--type {qt.name}")]


def make_plan(tensors: Sequence[tuple[str, tuple[int, ...], str]], rules: Sequence[Rule],
              ftype: str, no_fallback: bool = False) -> Plan:
    return Plan([resolve(n, s, d, rules, no_fallback) for n, s, d in tensors], ftype=ftype)

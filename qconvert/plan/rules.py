"""Per-tensor type policy: an ordered list of rules, first match wins, and the winning
rule is recorded on the plan. A single `--type` is two rules; llama-quantize's preset
mixes (`presets.py`) are longer lists of the same `Rule` shape.

A rule sees a `TensorInfo`: the tensor's name and shape, plus the model-wide facts and
running counters that llama.cpp's mixes depend on (layer, GQA ratio, expert count, how
many attn_v tensors came before). Plain rules ignore everything but name and shape."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from ..errors import ShapeError, UnsupportedError
from ..qtypes import QType, qtype
from .tensor_plan import Plan, TensorPlan


@dataclass(frozen=True)
class ModelFacts:
    """Model-wide numbers a mix may consult (llama-quantize reads them from the header)."""

    arch: str = ""  # GGUF arch name: llama, qwen2, gemma3, falcon...
    n_layers: int = 0
    n_head: int = 0
    n_head_kv: int = 0
    n_expert: int = 0
    tied_embeddings: bool = False  # no output.weight: token_embd doubles as the output
    n_attn_v: int = 0  # tensors of the attn_v kind (attn_v, attn_qkv, attn_kv_b) in the file
    has_imatrix: bool = False  # importance statistics given: some i-quant mixes differ with them

    @property
    def n_gqa(self) -> int:
        """Query heads per KV head (llama.cpp: 0 when n_head_kv is 0)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


@dataclass(frozen=True)
class TensorInfo:
    """What a rule may look at for one tensor."""

    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order: row width last
    src_dtype: str = ""
    model: ModelFacts = ModelFacts()
    category: str = ""  # see llama_rules.category
    layer: Optional[int] = None  # N of blk.N., None for global tensors
    # llama.cpp's running counters: how many tensors of this kind went through the mix
    # rules before this one (tensors pinned by an override or --pure do not count)
    i_attn_v: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0

    @property
    def row(self) -> int:
        return int(self.shape[-1]) if self.shape else 1


# a rule looks at a tensor and returns a type name, or None to pass
Chooser = Callable[[TensorInfo], Optional[str]]


@dataclass(frozen=True)
class Rule:
    reason: str
    choose: Chooser


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    """Dimensions as ggml counts them: trailing ggml dims of size 1 (leading in numpy order)
    do not count, so Qwen2-MoE's (1, n_embd) shared-expert gate is a vector to llama.cpp
    (ggml_n_dims), which therefore never quantizes it."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return len(shape)


def keep_f32_1d() -> Rule:
    # norms, biases and rope factors are tiny and precision-sensitive; llama.cpp
    # requires F32 for most of them.
    return Rule("1-D tensors stay F32", lambda t: "F32" if ggml_n_dims(t.shape) <= 1 else None)


def keep_f32_bias() -> Rule:
    # llama.cpp quantizes only `*weight` tensors; a bias with a row per expert (gpt-oss's
    # ffn_*_exps.bias, 2-D) is added by an op that takes F32 only
    return Rule("biases stay F32", lambda t: "F32" if t.name.endswith(".bias") else None)


def pattern(regex: str, type_name: str, reason: str | None = None) -> Rule:
    rx = re.compile(regex)
    return Rule(reason or f"{regex}={type_name}", lambda t: type_name if rx.search(t.name) else None)


def everything(type_name: str, reason: str) -> Rule:
    return Rule(reason, lambda t: type_name)


# What llama.cpp uses when a row does not split into the wanted type's blocks: a
# 256-wide K-quant steps down to the 32-wide legacy type of about the same size; a
# 32-wide type, or a step-down that still does not fit, becomes F16.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
            # every 256-wide i-quant steps down to the 32-wide non-linear 4-bit type
            **dict.fromkeys(("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"), "IQ4_NL")}
LAST_RESORT = "F16"


def fallback_for(want: QType, row: int) -> tuple[QType, str]:
    """The type a row of this width can use instead of `want`, and why."""
    why = f"row width {row} is not a multiple of {want.name}'s block size {want.block_size}"
    step = FALLBACK.get(want.name)
    if step is not None:
        st = qtype(step)
        if st.fits(row):
            return st, why
        why += f", nor of {st.name}'s {st.block_size}"
    return qtype(LAST_RESORT), why


def first_match(info: TensorInfo, rules: Sequence[Rule]) -> tuple[int, Rule, QType]:
    """(index of the winning rule, the rule, the type it chose)."""
    for i, rule in enumerate(rules):
        t = rule.choose(info)
        if t is not None:
            return i, rule, qtype(t)
    raise UnsupportedError(f"no rule chose a type for tensor {info.name}")


def plan_tensor(info: TensorInfo, rule: Rule, want: QType, no_fallback: bool = False) -> TensorPlan:
    """The TensorPlan for a chosen type, demoted (and the demotion recorded) when the
    row does not split into its blocks."""
    if want.fits(info.row):
        return TensorPlan(info.name, info.shape, info.src_dtype, want, rule.reason)
    used, why = fallback_for(want, info.row)
    if no_fallback:
        raise ShapeError(f"tensor {info.name} {list(info.shape)}: {why} (fallback refused by --no-fallback)")
    return TensorPlan(info.name, info.shape, info.src_dtype, used, rule.reason,
                      fallback=f"{want.name} -> {used.name}: {why}")


def resolve(name: str, shape: tuple[int, ...], src_dtype: str, rules: Sequence[Rule],
            no_fallback: bool = False) -> TensorPlan:
    info = TensorInfo(name, tuple(shape), src_dtype)
    _, rule, want = first_match(info, rules)
    return plan_tensor(info, rule, want, no_fallback)


def keep_stored(keep: Mapping[str, str]) -> Rule:
    """Tensors the checkpoint already stores in a ggml block type keep it: their bytes are
    copied (arch/gpt_oss.py), since decoding and rounding again only adds error. open_hf
    leaves `keep` empty under --allow-requantize."""
    types = ", ".join(sorted(set(keep.values())))
    return Rule(f"stored as {types} in the checkpoint: copied, not requantized (--allow-requantize to requantize)",
                lambda t: keep.get(t.name))


def single_type_rules(type_name: str, keep: Mapping[str, str] | None = None) -> list[Rule]:
    qt: QType = qtype(type_name)
    return [keep_f32_1d(), keep_f32_bias(), *([keep_stored(keep)] if keep else []),
            everything(qt.name, f"--type {qt.name}")]


def make_plan(tensors: Sequence[tuple[str, tuple[int, ...], str]], rules: Sequence[Rule],
              ftype: str, no_fallback: bool = False) -> Plan:
    return Plan([resolve(n, s, d, rules, no_fallback) for n, s, d in tensors], ftype=ftype)

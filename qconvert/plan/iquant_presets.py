"""llama-quantize's i-quant file types (IQ1_S … IQ4_XS) and Q2_K_S as rule lists, the
same shape as presets.py's K-quant mixes. They restate the i-quant branches of llama.cpp's
`llama_tensor_get_type_impl` (src/llama-quant.cpp), which differ from the K-quant mixes in
three ways:

- the 1- and 2-bit types (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M) have a branch of
  their own that decides every tensor: attn_v at Q4_K with GQA >= 4 or >= 4 experts, the
  first eighth of ffn_down (by running count, also for MoE) one step up, and none of the
  8-expert Q8_0 bumps the other mixes share;
- some choices depend on whether importance statistics are given at all (IQ3_XXS's attn_v
  and ffn_down, IQ4_NL/IQ4_XS's first ffn_down, Q4_0/Q5_0's first ffn_down);
- the output matrix is Q5_K for the 1-, 2- and IQ3_XXS types, Q6_K for the others.

A tensor whose final type is IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S or IQ3_XXS (or Q2_K
in a Q2_K_S file) needs importance statistics, except token_embd and output
(`missing_importance`)."""

from __future__ import annotations

from typing import Optional

from ..qtypes import qtype
from . import llama_rules as L
from .llama_rules import ATTN_K, ATTN_OUTPUT, ATTN_V_LIKE, FFN_DOWN, FFN_GATE, FFN_UP, TOKEN_EMBD, on
from .rules import Rule, TensorInfo
from .tensor_plan import Plan, TensorPlan

# file type -> the type of every tensor no rule singles out (llama.cpp's default type)
BASE = {"IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S", "IQ1_S": "IQ1_S",
        "IQ1_M": "IQ1_M", "IQ3_XXS": "IQ3_XXS", "IQ3_XS": "IQ3_S", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S",
        "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "Q2_K_S": "Q2_K"}
LOW_BITS = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M")
OUTPUT_Q5K = frozenset(LOW_BITS + ("IQ3_XXS",))
SUMMARY = {
    "IQ1_S": "1.56 bpw; needs importance statistics", "IQ1_M": "1.75 bpw; needs importance statistics",
    "IQ2_XXS": "2.06 bpw; needs importance statistics", "IQ2_XS": "2.31 bpw; needs importance statistics",
    "IQ2_S": "2.5 bpw mix of IQ2_XS/IQ3_S; needs importance statistics",
    "IQ2_M": "2.7 bpw mix of IQ2_S/IQ3_S; needs importance statistics",
    "IQ3_XXS": "3.06 bpw; needs importance statistics", "IQ3_XS": "3.3 bpw mix of IQ3_S/IQ3_XXS",
    "IQ3_S": "3.44 bpw", "IQ3_M": "3.66 bpw mix of IQ3_S/Q4_K", "IQ4_NL": "4.5 bpw, 32-wide blocks",
    "IQ4_XS": "4.25 bpw", "Q2_K_S": "Q2_K with fewer bumps; needs importance statistics",
}
# types llama.cpp will not write without importance statistics (outside token_embd/output)
NEEDS_IMPORTANCE = frozenset({"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"})


def _output(name: str, base: str) -> list[Rule]:
    output_like = L.output_like
    bs = qtype(base).block_size
    top = "Q5_K" if name in OUTPUT_Q5K else "Q6_K"
    return [
        Rule("falcon: output at Q8_0", lambda t: "Q8_0" if output_like(t) and L.falcon(t) else None),
        Rule(f"output: row width not a multiple of {base}'s block size {bs}, so Q8_0",
             lambda t: "Q8_0" if output_like(t) and t.row % bs else None),
        Rule(f"{name}: output / tied token_embd at {top}", lambda t: top if output_like(t) else None),
    ]


def _token_embd(name: str) -> list[Rule]:
    typ = {"IQ2_XXS": "Q2_K", "IQ2_XS": "Q2_K", "IQ1_S": "Q2_K", "IQ1_M": "Q2_K",
           "IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S", "IQ3_XXS": "IQ3_S"}.get(name)
    if typ is None:
        return []
    return [Rule(f"{name}: token_embd at {typ}",
                 lambda t: typ if t.category == TOKEN_EMBD and not t.model.tied_embeddings else None)]


def _low_bits(name: str) -> list[Rule]:
    """The IQ1/IQ2 branch."""
    up = "IQ3_S" if name in ("IQ2_S", "IQ2_M") else "Q2_K"
    attn_out = {"IQ1_S": "IQ2_XXS", "IQ1_M": "IQ2_XXS", "IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S"}.get(name)
    rules = [
        on(ATTN_V_LIKE, "Q4_K", f"{name}: attn_v at Q4_K (n_gqa >= 4 or >= 4 experts)", L.gqa4_or_experts4),
        on(ATTN_V_LIKE, up, f"{name}: attn_v at {up}"),
        on(ATTN_K, "Q4_K", f"{name}: 8-expert attn_k at Q4_K", L.experts8),
        on(FFN_DOWN, up, f"{name}: ffn_down in the first 1/8 (by count) at {up}", L.down_counter_first8),
        on(ATTN_OUTPUT, "Q5_K", f"{name}: 8-expert attn_output at Q5_K", L.experts8),
    ]
    if attn_out:
        rules.append(on(ATTN_OUTPUT, attn_out, f"{name}: attn_output at {attn_out}"))
    return rules


def _big70_gqa4(t: TensorInfo) -> bool:
    return L.gqa4(t) and L.big70(t)


def _mid(name: str) -> list[Rule]:
    """IQ3_*, IQ4_* and Q2_K_S: the general branches, with the 8-expert bumps."""
    rules = [on(ATTN_V_LIKE, "Q8_0", "8-expert model: attn_v at Q8_0", L.experts8),
             on(ATTN_K, "Q8_0", "8-expert model: attn_k at Q8_0", L.experts8)]
    if name in ("Q2_K_S", "IQ3_XXS", "IQ3_XS", "IQ3_S"):
        rules += [on(ATTN_V_LIKE, "Q5_K", f"{name}: attn_v of a 70B model at Q5_K (n_gqa >= 4)", _big70_gqa4),
                  on(ATTN_V_LIKE, "Q4_K", f"{name}: attn_v at Q4_K (n_gqa >= 4)", L.gqa4)]
    if name == "IQ3_XXS":
        rules.append(on(ATTN_V_LIKE, "IQ3_S", "IQ3_XXS without importance: attn_v at IQ3_S", L.no_imatrix))
    if name == "IQ3_M":
        rules += [on(ATTN_V_LIKE, "Q5_K", "IQ3_M: attn_v of a 70B model at Q5_K", L.big70),
                  on(ATTN_V_LIKE, "Q4_K", "IQ3_M: attn_v at Q4_K")]
    if name in ("IQ4_NL", "IQ4_XS"):
        rules.append(on(ATTN_V_LIKE, "Q5_K", f"{name}: attn_v at Q5_K (n_gqa >= 4)", L.gqa4))
    smaller = {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(name)
    if smaller:
        rules += [on(ATTN_K, smaller, f"{name}: attn_k at {smaller}"),
                  on(L.ATTN_Q, smaller, f"{name}: attn_q at {smaller}")]
    first8 = L.down_first(1, 8)
    if name == "Q2_K_S":
        rules.append(on(FFN_DOWN, "Q4_K", "Q2_K_S: ffn_down in the first 1/8 of layers at Q4_K", first8))
    if name == "IQ3_XXS":
        rules += [on(FFN_DOWN, "Q4_K", "IQ3_XXS without importance: first 1/8 of ffn_down at Q4_K",
                     L.both(L.no_imatrix, first8)),
                  on(FFN_DOWN, "Q3_K", "IQ3_XXS without importance: ffn_down at Q3_K", L.no_imatrix)]
    if name == "IQ3_M":
        rules.append(on(FFN_DOWN, "Q4_K", "IQ3_M: ffn_down in the first 1/8 (8 experts: use_more_bits) at Q4_K",
                        lambda t: first8(t) or (L.experts8(t) and L.down_more_bits(t))))
    if name in ("IQ4_NL", "IQ4_XS"):
        rules.append(on(FFN_DOWN, "Q5_K", f"{name} without importance: first 1/8 of ffn_down at Q5_K",
                        L.both(L.no_imatrix, first8)))
    if name != "Q2_K_S":
        rules.append(on(ATTN_OUTPUT, "Q5_K", f"{name}: 8-expert attn_output at Q5_K",
                        L.both(L.not_falcon, L.experts8)))
    attn_out = {"IQ3_XXS": "IQ3_S", "IQ3_M": "Q4_K"}.get(name)
    if attn_out:
        rules.append(on(ATTN_OUTPUT, attn_out, f"{name}: attn_output at {attn_out}", L.not_falcon))
    if name == "IQ3_XS":
        rules.append(on(frozenset({FFN_GATE, FFN_UP}), "IQ3_XXS",
                        "IQ3_XS: ffn_gate/ffn_up outside the first and last 1/8 at IQ3_XXS", L.gate_up_middle))
    return rules


def mix(name: str) -> tuple[str, tuple[Rule, ...]]:
    """(base type, rules) of an i-quant file type or Q2_K_S."""
    base = BASE[name]
    body = _low_bits(name) if name in LOW_BITS else _mid(name)
    return base, tuple(_output(name, base) + _token_embd(name) + body)


def missing_importance(plan: Plan) -> Optional[TensorPlan]:
    """The first tensor llama.cpp would refuse to write without importance statistics, or
    None. Its `reason` says which rule (a preset's, or an option such as --tensor-type)
    chose the type."""
    for tp in plan.tensors:
        if tp.name in ("token_embd.weight", "output.weight"):
            continue
        t = tp.qtype.name
        if t in NEEDS_IMPORTANCE or (t == "Q2_K" and plan.ftype == "Q2_K_S"):
            return tp
    return None

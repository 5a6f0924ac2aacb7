"""llama-quantize's file types (Q4_K_M, Q5_K_S...) as data: each preset is a base type
plus an ordered rule list that picks other types for sensitive tensors, first match
wins. The rules restate llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for
the non-imatrix presets; tests check the result against llama.cpp's own quantizer.

The list `preset_plan` evaluates for each tensor, in order:
  1. never-quantized tensors keep a float type (norms, vectors, routers: F32)
  2. --token-embedding-type, --output-tensor-type
  3. --tensor-type PATTERN=TYPE overrides (regex search on the GGUF name)
  4. --pure: the base type everywhere
  5. the preset's mix (output/embeddings, attn_v, ffn_down, attn_output...)
  6. the base type
then a type whose blocks do not fit the row is demoted (llama.cpp's fallback), and
the demotion is recorded on the plan."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import InputError
from ..qtypes import QTYPES, qtype
from ..registry import Registry
from . import llama_rules as L
from .llama_rules import ATTN_K, ATTN_OUTPUT, ATTN_V_LIKE, FFN_DOWN, OUTPUT, TOKEN_EMBD, on
from . import iquant_presets as iq
from .rules import ModelFacts, Rule, TensorInfo, everything, first_match, keep_stored, plan_tensor
from .tensor_plan import Plan


@dataclass(frozen=True)
class Preset:
    name: str
    base: str  # the type of every tensor no rule singles out
    rules: tuple[Rule, ...]  # the mix, tried before the base type
    summary: str

    @property
    def quantized(self) -> bool:
        return qtype(self.base).quantized


PRESETS: Registry[Preset] = Registry("preset")

# --bits N -> preset
BITS_TO_PRESET = {2: "Q2_K", 3: "Q3_K_M", 4: "Q4_K_M", 5: "Q5_K_M", 6: "Q6_K", 8: "Q8_0", 16: "F16", 32: "F32"}


# -- the mixes ------------------------------------------------------------------------------
def _common(base: str) -> list[Rule]:
    """Rules every quantized preset shares: the output matrix (and a tied token_embd) at
    Q6_K (Q8_0 where Q8_0 is the base, where the base's blocks do not fit the row, and
    for Falcon), and 8-expert models' attn_v / attn_k at Q8_0 (about 128 MB on Mixtral)."""
    bs = qtype(base).block_size
    rules = [
        Rule("falcon: output at Q8_0", lambda t: "Q8_0" if L.output_like(t) and L.falcon(t) else None),
        Rule(f"output: row width not a multiple of {base}'s block size {bs}, so Q8_0",
             lambda t: "Q8_0" if L.output_like(t) and t.row % bs else None),
    ]
    if base != "Q8_0":
        rules.append(Rule("output / tied token_embd at Q6_K", lambda t: "Q6_K" if L.output_like(t) else None))
    return rules + [
        on(ATTN_V_LIKE, "Q8_0", "8-expert model: attn_v at Q8_0", L.experts8),
        on(ATTN_K, "Q8_0", "8-expert model: attn_k at Q8_0", L.experts8),
    ]


def _attn_out_moe_q5k(name: str) -> Rule:
    return on(ATTN_OUTPUT, "Q5_K", f"{name}: 8-expert attn_output at Q5_K", L.both(L.not_falcon, L.experts8))


_MIXES: dict[str, list[Rule]] = {
    "Q2_K": [
        on(ATTN_V_LIKE, "Q5_K", "Q2_K: attn_v of a 70B model at Q5_K", L.big70),
        on(ATTN_V_LIKE, "Q4_K", "Q2_K: attn_v at Q4_K (n_gqa >= 4)", L.gqa4),
        on(ATTN_V_LIKE, "Q3_K", "Q2_K: attn_v at Q3_K"),
        on(FFN_DOWN, "Q3_K", "Q2_K: ffn_down at Q3_K"),
        _attn_out_moe_q5k("Q2_K"),
        on(ATTN_OUTPUT, "Q3_K", "Q2_K: attn_output at Q3_K", L.not_falcon),
    ],
    "Q3_K_S": [
        on(ATTN_V_LIKE, "Q5_K", "Q3_K_S: attn_v of a 70B model at Q5_K", L.big70),
        _attn_out_moe_q5k("Q3_K_S"),
    ],
    "Q3_K_M": [
        on(ATTN_V_LIKE, "Q5_K", "Q3_K_M: first 2 attn_v at Q5_K", L.attn_v_first(2)),
        on(ATTN_V_LIKE, "Q5_K", "Q3_K_M: attn_v of a 70B model at Q5_K", L.big70),
        on(ATTN_V_LIKE, "Q4_K", "Q3_K_M: attn_v at Q4_K"),
        on(FFN_DOWN, "Q5_K", "Q3_K_M: ffn_down in the first 1/16 of layers at Q5_K", L.down_first(1, 16)),
        on(FFN_DOWN, "Q4_K", "Q3_K_M: ffn_down at Q4_K", L.not_falcon),
        on(FFN_DOWN, "Q4_K", "Q3_K_M: falcon ffn_down in use_more_bits layers at Q4_K", L.down_more_bits),
        _attn_out_moe_q5k("Q3_K_M"),
        on(ATTN_OUTPUT, "Q4_K", "Q3_K_M: attn_output at Q4_K", L.not_falcon),
    ],
    "Q3_K_L": [
        on(ATTN_V_LIKE, "Q5_K", "Q3_K_L: attn_v at Q5_K"),
        on(FFN_DOWN, "Q4_K", "Q3_K_L: falcon ffn_down at Q4_K", L.falcon),
        on(FFN_DOWN, "Q5_K", "Q3_K_L: ffn_down at Q5_K"),
        on(ATTN_OUTPUT, "Q4_K", "Q3_K_L: falcon attn_output at Q4_K", L.falcon),
        # llama.cpp leaves an 8-expert model's attn_output at the base type here
        on(ATTN_OUTPUT, "Q5_K", "Q3_K_L: attn_output at Q5_K", lambda t: not L.experts8(t)),
    ],
    "Q4_K_S": [
        on(ATTN_V_LIKE, "Q5_K", "Q4_K_S: first 4 attn_v at Q5_K", L.attn_v_first(4)),
        on(ATTN_V_LIKE, "Q5_K", "Q4_K_S: attn_v of a 70B model at Q5_K", L.big70),
        on(FFN_DOWN, "Q5_K", "Q4_K_S: ffn_down in the first 1/8 of layers at Q5_K",
           L.both(L.not_falcon, L.down_first(1, 8))),
        _attn_out_moe_q5k("Q4_K_S"),
    ],
    "Q4_K_M": [
        on(ATTN_V_LIKE, "Q6_K", "Q4_K_M: attn_v in use_more_bits slots at Q6_K", L.attn_v_more_bits),
        on(ATTN_V_LIKE, "Q5_K", "Q4_K_M: attn_v of a 70B model at Q5_K", L.big70),
        on(FFN_DOWN, "Q6_K", "Q4_K_M: falcon ffn_down in the first 1/16 of layers at Q6_K",
           L.both(L.falcon, L.down_first(1, 16))),
        on(FFN_DOWN, "Q5_K", "Q4_K_M: falcon ffn_down in use_more_bits layers at Q5_K",
           L.both(L.falcon, L.down_more_bits)),
        on(FFN_DOWN, "Q6_K", "Q4_K_M: ffn_down in use_more_bits layers at Q6_K",
           L.both(L.not_falcon, L.down_more_bits)),
        _attn_out_moe_q5k("Q4_K_M"),
    ],
    "Q5_K_S": [],
    "Q5_K_M": [
        on(ATTN_V_LIKE, "Q6_K", "Q5_K_M: attn_v in use_more_bits slots at Q6_K", L.attn_v_more_bits),
        on(FFN_DOWN, "Q6_K", "Q5_K_M: ffn_down in use_more_bits layers at Q6_K", L.down_more_bits),
    ],
    "Q6_K": [], "Q8_0": [], "Q4_1": [], "Q5_1": [],
    # with importance statistics llama.cpp guards the first ffn_down layers of Q4_0 / Q5_0
    # with the _1 type (without, it keeps the plain type, so old files stay reproducible)
    "Q4_0": [on(FFN_DOWN, "Q4_1", "Q4_0 with importance: first 1/8 of ffn_down at Q4_1",
                L.both(L.has_imatrix, L.down_first(1, 8)))],
    "Q5_0": [on(FFN_DOWN, "Q5_1", "Q5_0 with importance: first 1/8 of ffn_down at Q5_1",
                L.both(L.has_imatrix, L.down_first(1, 8)))],
}

_BASE = {"Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K",
         "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K"}

_SUMMARY = {
    "Q2_K": "Q2_K; attn_v Q3_K/Q4_K, ffn_down and attn_output Q3_K",
    "Q3_K_S": "Q3_K everywhere but output",
    "Q3_K_M": "Q3_K; attn_v, attn_output, ffn_down Q4_K (first layers Q5_K)",
    "Q3_K_L": "Q3_K; attn_v, attn_output, ffn_down Q5_K",
    "Q4_K_S": "Q4_K; first attn_v and ffn_down Q5_K",
    "Q4_K_M": "Q4_K; half of attn_v and ffn_down Q6_K",
    "Q5_K_S": "Q5_K everywhere but output",
    "Q5_K_M": "Q5_K; half of attn_v and ffn_down Q6_K",
}

for _name, _mix in _MIXES.items():
    _base = _BASE.get(_name, _name)
    PRESETS.add(_name, Preset(_name, _base, tuple(_common(_base) + _mix),
                              _SUMMARY.get(_name, f"{_base} everywhere but output (Q6_K)")))
for _name in iq.BASE:
    _base, _rules = iq.mix(_name)
    PRESETS.add(_name, Preset(_name, _base, _rules, iq.SUMMARY[_name]))
for _name in ("F32", "F16", "BF16"):
    PRESETS.add(_name, Preset(_name, _name, (), f"{_name} for every matrix, vectors F32"))
# llama-quantize's MXFP4_MOE: 3-D expert stacks MXFP4, every other matrix (output and token
# embeddings too) Q8_0
PRESETS.add("MXFP4_MOE", Preset("MXFP4_MOE", "Q8_0", (
    Rule("MXFP4_MOE: expert stacks at MXFP4", lambda t: "MXFP4" if len(t.shape) == 3 and t.shape[0] > 1 else None),
), "expert stacks MXFP4, every other matrix Q8_0"))


# -- the plan ------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[str, str]:
    """`PATTERN=TYPE` (llama-quantize's --tensor-type) -> (pattern, TYPE)."""
    pat, sep, typ = text.rpartition("=")
    if not sep or not pat or not typ:
        raise InputError(f"--tensor-type {text!r}: expected PATTERN=TYPE, e.g. attn_v=Q8_0")
    return pat, option_type(f"--tensor-type {pat}=", typ)


def option_type(option: str, name: str) -> str:
    """A tensor type given on the command line, by its registered name ("q8-0 " is Q8_0);
    an unknown one is the user's input error, listing what exists."""
    if name in QTYPES:
        return QTYPES.get(name).name
    sep = "" if option.endswith("=") else " "
    raise InputError(f"{option}{sep}{name!r}: unknown tensor type; use one of {', '.join(QTYPES.names())}")


def _option_rules(p: Preset, overrides: Sequence[tuple[str, str]], output_type: str | None,
                  embd_type: str | None, pure: bool, keep: Mapping[str, str] | None = None) -> list[Rule]:
    """Steps 1-4 of the module docstring. Tensors these rules decide skip the mix and do
    not advance llama.cpp's counters."""
    kept_2d = p.base if not p.quantized else "F16"
    rules = [
        Rule("never quantized: vectors, norms and routing tables stay F32",
             lambda t: "F32" if not L.quantizable(t.name, t.shape)
             and L.kept_type(t.name, t.shape, kept_2d) == "F32" else None),
        Rule(f"never quantized by llama.cpp: kept at {kept_2d}",
             lambda t: kept_2d if not L.quantizable(t.name, t.shape) else None),
    ]
    if embd_type:
        embd_type = option_type("--token-embedding-type", embd_type)
        rules.append(on(TOKEN_EMBD, embd_type, f"--token-embedding-type {embd_type}"))
    if output_type:
        output_type = option_type("--output-tensor-type", output_type)
        rules.append(on(OUTPUT, output_type, f"--output-tensor-type {output_type}"))
    for pat, typ in overrides:
        typ = option_type(f"--tensor-type {pat}=", typ)
        try:
            # llama-quantize lower-cases patterns; GGUF names are lower case
            rx = re.compile(pat, re.IGNORECASE)
        except re.error as e:
            raise InputError(f"--tensor-type {pat}={typ}: bad regular expression: {e}") from None
        except (RecursionError, OverflowError, MemoryError):  # Python's compiler recurses per nesting level
            raise InputError(f"--tensor-type {pat[:60]}...={typ}: regular expression too deeply nested or too "
                             "large to compile") from None
        rules.append(Rule(f"--tensor-type {pat}={typ.upper()}",
                          lambda t, rx=rx, typ=typ.upper(): typ if rx.search(t.name) else None))
    if keep:
        rules.append(keep_stored(keep))
    if pure:
        rules.append(everything(p.base, f"--pure: {p.base} for every matrix"))
    return rules


def preset_plan(
    tensors: Sequence[tuple[str, tuple[int, ...], str]],
    preset: str,
    *,
    n_layers: int,
    n_head: int,
    n_head_kv: int,
    n_expert: int = 0,
    arch_name: str,
    overrides: Sequence[tuple[str, str]] = (),
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    pure: bool = False,
    no_fallback: bool = False,
    keep: Mapping[str, str] | None = None,
    has_imatrix: bool = False,
) -> Plan:
    """Plan a file of llama-quantize file type `preset` (Q4_K_M, Q8_0, F16...).

    tensors: (GGUF name, numpy-order shape, source dtype), in any order; the plan keeps
    that order. The model facts are what llama.cpp reads from the GGUF header (block
    count, head counts, expert count, arch name). Overrides are (regex, type) pairs,
    first match wins; unlike llama-quantize they also apply to F16/BF16/F32 presets.
    keep: tensor name -> the block type the checkpoint already stores it in (gpt-oss's
    MXFP4 experts): kept, unless an override names the tensor (see keep_stored).
    has_imatrix: importance statistics will weight the rounding (some mixes differ)."""
    p = PRESETS.get(preset)
    if output_tensor_type:
        output_tensor_type = option_type("--output-tensor-type", output_tensor_type)
    names = [n for n, _, _ in tensors]
    cats = {n: L.category(n) for n in names}
    model = ModelFacts(arch=arch_name, n_layers=int(n_layers), n_head=int(n_head), n_head_kv=int(n_head_kv),
                       n_expert=int(n_expert or 0), tied_embeddings="output.weight" not in cats,
                       n_attn_v=sum(c in ATTN_V_LIKE for c in cats.values()), has_imatrix=bool(has_imatrix))
    head = _option_rules(p, overrides, output_tensor_type, token_embedding_type, pure, keep)
    mix: list[Rule] = []
    if p.quantized and output_tensor_type:
        # llama.cpp gives a tied token_embd the output's type inside the mix, so an
        # override or --pure comes first here
        mix.append(Rule(f"tied token_embd follows --output-tensor-type {output_tensor_type.upper()}",
                        lambda t: output_tensor_type.upper()
                        if t.category == TOKEN_EMBD and t.model.tied_embeddings else None))
    if p.quantized:
        mix += p.rules
    rules = head + mix + [everything(p.base, f"{p.name}: base type {p.base}")]

    out: list = [None] * len(tensors)
    i_attn_v = i_ffn_down = i_ffn_gate = i_ffn_up = 0
    for i in sorted(range(len(tensors)), key=lambda k: L.llama_order(names[k])):
        name, shape, dtype = tensors[i]
        info = TensorInfo(name, tuple(int(d) for d in shape), dtype, model, cats[name], L.layer_of(name),
                          i_attn_v, i_ffn_down, i_ffn_gate, i_ffn_up)
        k, rule, want = first_match(info, rules)
        if k >= len(head) and p.quantized:  # the tensor went through the mix: counters advance
            i_attn_v += info.category in ATTN_V_LIKE
            i_ffn_down += info.category == FFN_DOWN
            i_ffn_gate += info.category == L.FFN_GATE
            i_ffn_up += info.category == L.FFN_UP
        out[i] = plan_tensor(info, rule, want, no_fallback)
    return Plan(out, ftype=p.name)

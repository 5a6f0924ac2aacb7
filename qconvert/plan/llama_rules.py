"""The facts llama-quantize's mixes are written in (llama.cpp src/llama-quant.cpp):
tensor categories, the tensors it never quantizes, `use_more_bits`, the order in which
its counters run, and which models it treats as "70B". `presets.py` builds the mixes
from these; nothing here picks a type by itself."""

from __future__ import annotations

import re
from typing import Callable, Optional

from ..errors import FormatError
from .rules import ModelFacts, Rule, TensorInfo, ggml_n_dims

# -- categories ---------------------------------------------------------------------------
# llama.cpp sorts a tensor into one broad category by substring, first hit wins; the
# order matters ("attn_qkv" before "attn_v", "ffn_up" before "ffn_gate").
OUTPUT, TOKEN_EMBD = "output", "token_embd"
ATTN_QKV, ATTN_KV_B, ATTN_V, ATTN_K, ATTN_Q = "attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q"
ATTN_OUTPUT, FFN_UP, FFN_GATE, FFN_DOWN, OTHER = "attn_output", "ffn_up", "ffn_gate", "ffn_down", "other"

_BY_SUBSTRING = [
    ("attn_qkv.weight", ATTN_QKV), ("attn_kv_b.weight", ATTN_KV_B), ("attn_v.weight", ATTN_V),
    ("attn_k.weight", ATTN_K), ("attn_q.weight", ATTN_Q), ("attn_output.weight", ATTN_OUTPUT),
    ("ffn_up", FFN_UP), ("ffn_gate", FFN_GATE), ("ffn_down", FFN_DOWN),
]

# the categories llama.cpp treats like attn_v (small, sensitive, shared by GQA heads).
# Because it tests this set before its attn_qkv branch, a fused attn_qkv follows the
# attn_v rules and the attn_qkv-specific branch never runs; we reproduce that.
ATTN_V_LIKE = frozenset({ATTN_V, ATTN_QKV, ATTN_KV_B})


def category(name: str) -> str:
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for sub, cat in _BY_SUBSTRING:
        if sub in name:
            return cat
    return OTHER


_BLK = re.compile(r"^blk\.(\d+)\.")


def layer_of(name: str) -> Optional[int]:
    m = _BLK.match(name)
    return int(m.group(1)) if m else None


def llama_order(name: str) -> tuple[int, str]:
    """The order llama-quantize walks tensors in (its weights map: layer number, with
    global tensors first as layer -1, then name). Its counters run in this order."""
    layer = layer_of(name)
    return (-1 if layer is None else layer, name)


# -- tensors llama.cpp never quantizes -------------------------------------------------
# substrings of names it copies as they are: router/gating tables, tiny Gemma-3n
# altup/laurel matrices, conv kernels of SSMs, RWKV's small mixing weights, T5's
# relative bias, vision/audio position and patch embeddings, codebooks.
NEVER_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
    *(f"time_mix_{s}.weight" for s in ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2",
                                        "g1", "g2", "decay_w1", "decay_w2", "lerp_fused")),
)
NEVER_NAMES = ("position_embd.weight", "token_types.weight")

# of those, the ones llama.cpp's converter always stores as F32 (so F32 is what
# llama-quantize finds and keeps); the others keep the model's float type
F32_SUBSTRINGS = ("_norm.weight", "ffn_gate_inp", "ssm_conv1d", "shortconv.conv", "time_mix_first",
                  "time_mix_w1", "time_mix_w2", "time_mix_decay_w1", "time_mix_decay_w2",
                  "time_mix_lerp_fused", "altup_correct_coef", "altup_predict_coef")
F32_NAMES = NEVER_NAMES


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp's test: a 2-D or 3-D `*weight` that is not on its never-quantize list."""
    if ggml_n_dims(shape) < 2 or not name.endswith("weight") or name in NEVER_NAMES:
        return False
    return not any(s in name for s in NEVER_SUBSTRINGS)


def kept_type(name: str, shape: tuple[int, ...], float_type: str) -> str:
    """The type of a tensor that is never quantized: F32 for vectors, norms and what the
    converter pins to F32; the model's float type for the rest."""
    if ggml_n_dims(shape) <= 1 or not name.endswith(".weight") or name in F32_NAMES \
            or any(s in name for s in F32_SUBSTRINGS):
        return "F32"
    return float_type


# -- layer position ------------------------------------------------------------------------
def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's pick of layers that get more bits: the first and last eighth, and
    every third layer in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def ffn_down_position(t: TensorInfo) -> tuple[int, int]:
    """(i, n) for ffn_down rules. Dense models use the running counter; MoE models read
    the layer from the name, since llama.cpp found expert tensors are not stored in
    layer order."""
    n = t.model.n_layers
    if t.model.n_expert > 1:
        if t.layer is None or not 0 <= t.layer < n:
            raise FormatError(f"tensor {t.name}: cannot tell its layer (expected blk.N. with N < {n}); "
                              "llama.cpp's MoE rules need it")
        return t.layer, n
    return t.i_ffn_down, n


# models llama.cpp labels 70B (their attn_v gets more bits): layer count per arch,
# and for llama only when it uses GQA (LLaMA-1 65B also has 80 layers)
_70B_LAYERS = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}


def is_70b(m: ModelFacts) -> bool:
    if _70B_LAYERS.get(m.arch) != m.n_layers:
        return False
    return m.arch != "llama" or (m.n_head != m.n_head_kv and m.n_expert != 8)


# -- predicates and a rule maker -------------------------------------------------------------
Pred = Callable[[TensorInfo], bool]


def output_like(t: TensorInfo) -> bool:
    """The output matrix, or a tied token_embd (which is also the output matrix, so it
    gets the output's type)."""
    return t.category == OUTPUT or (t.model.tied_embeddings and t.category == TOKEN_EMBD)


def falcon(t: TensorInfo) -> bool:
    return t.model.arch == "falcon"


def not_falcon(t: TensorInfo) -> bool:
    return t.model.arch != "falcon"


def experts8(t: TensorInfo) -> bool:
    return t.model.n_expert == 8


def gqa4(t: TensorInfo) -> bool:
    return t.model.n_gqa >= 4


def big70(t: TensorInfo) -> bool:
    return is_70b(t.model)


def down_first(num: int, den: int) -> Pred:
    """ffn_down in the first num/den of the layers (i < n*num/den, integer division
    as in llama.cpp: n/8, n/16)."""
    return lambda t: (lambda i, n: i < n * num // den)(*ffn_down_position(t))


def gate_up_position(t: TensorInfo) -> tuple[int, int]:
    """(i, n) for ffn_gate / ffn_up rules: like ffn_down's, with their own counters."""
    n = t.model.n_layers
    if t.model.n_expert > 1:
        return ffn_down_position(t)
    return (t.i_ffn_gate if t.category == FFN_GATE else t.i_ffn_up), n


def gate_up_middle(t: TensorInfo) -> bool:
    """ffn_gate / ffn_up outside the first and last eighth of the layers (IQ3_XS)."""
    i, n = gate_up_position(t)
    return n // 8 <= i < 7 * n // 8


def down_counter_first8(t: TensorInfo) -> bool:
    """The IQ1/IQ2 mixes' ffn_down test: the running counter (even for MoE models) against
    an eighth of the layer count."""
    return t.i_ffn_down < t.model.n_layers // 8


def has_imatrix(t: TensorInfo) -> bool:
    return t.model.has_imatrix


def no_imatrix(t: TensorInfo) -> bool:
    return not t.model.has_imatrix


def gqa4_or_experts4(t: TensorInfo) -> bool:
    return t.model.n_gqa >= 4 or t.model.n_expert >= 4


def down_more_bits(t: TensorInfo) -> bool:
    return use_more_bits(*ffn_down_position(t))


def attn_v_first(k: int) -> Pred:
    return lambda t: t.i_attn_v < k


def attn_v_more_bits(t: TensorInfo) -> bool:
    return use_more_bits(t.i_attn_v, t.model.n_attn_v)


def both(*preds: Pred) -> Pred:
    return lambda t: all(p(t) for p in preds)


def on(cats: str | frozenset, type_name: str, reason: str, when: Pred | None = None) -> Rule:
    """Choose `type_name` for tensors of the given categories when `when` holds."""
    cs = frozenset({cats}) if isinstance(cats, str) else cats
    return Rule(reason, lambda t: type_name if t.category in cs and (when is None or when(t)) else None)

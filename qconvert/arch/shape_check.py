"""The config checked against the tensors it describes.

A config value that disagrees with the checkpoint would be written into the GGUF as is,
and llama.cpp would refuse the file (or, for head counts, compute nonsense). So before
anything is written: the decoder layers present must be exactly 0..num_hidden_layers-1
(checked on the HF names, before gguf-py builds its per-layer name table), and each
standard tensor's shape must be what hidden_size, the head counts, head_dim,
intermediate_size and vocab_size say. Errors name the key, its value and the tensor's
shape.

vocab_size is the embedding's row count, as in transformers; the tokenizer may hold
fewer tokens (the GGUF token list is padded to the rows, as llama.cpp's converter does)."""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

from ..errors import FormatError
from ..source.source_tensor import SourceTensor
from .hparams import HParams

# an HF layer's tensors: model.layers.N. (also language_model.model.layers.N.; BERT's
# encoder.layer.N.); at most 9 digits, so a hostile name never reaches int() with thousands
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d{1,9})\.")


class Dim(NamedTuple):
    label: str  # the config key(s), as the file spells them
    text: str  # their values, e.g. "4 x 64 = 256"
    size: int


def check_layer_count(hp: HParams, names: Iterable[str]) -> None:
    n = hp.n_layers
    found: dict[int, str] = {}
    for name in names:
        m = _LAYER.search(name)
        if m:
            found.setdefault(int(m.group(1)), name)
    label = hp.label("n_layers")
    if not found:
        raise FormatError(f"{hp.source}: {label} is {n}, but no tensor belongs to a decoder layer "
                          "(no names like model.layers.0.*)")
    top = max(found)
    if top >= n:
        raise FormatError(f"{hp.source}: {label} is {n}, but the checkpoint holds layer {top} "
                          f"({found[top]!r}); the config does not match the weights")
    missing = [i for i in range(n) if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FormatError(f"{hp.source}: {label} is {n}, but the checkpoint has no tensors for layer(s) "
                          f"{shown} (incomplete download, or a config of another model?)")


def dims(hp: HParams) -> dict[str, Dim]:
    """The sizes a config names, by symbol: E hidden, V vocab, F feed-forward, D head, H and
    HKV the head counts, Q all query heads, KV all key/value heads; F2 and QKV are fused
    tensors' row counts."""
    e, h, kv, d, f, v = hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ff, hp.vocab_size
    d_label = "head_dim" if hp.get("head_dim") is not None else \
        f"head_dim ({hp.label('n_embd')} / {hp.label('n_head')})"
    q_label, kv_label = f"{hp.label('n_head')} x {d_label}", f"{hp.label('n_head_kv')} x {d_label}"
    return {
        "E": Dim(hp.label("n_embd"), str(e), e),
        "V": Dim(hp.label("vocab_size"), str(v), v),
        "F": Dim(hp.label("n_ff"), str(f), f),
        "F2": Dim(f"2 x {hp.label('n_ff')}", f"2 x {f} = {2 * f}", 2 * f),
        "D": Dim(d_label, str(d), d),
        "H": Dim(hp.label("n_head"), str(h), h),
        "HKV": Dim(hp.label("n_head_kv"), str(kv), kv),
        "Q": Dim(q_label, f"{h} x {d} = {h * d}", h * d),
        "KV": Dim(kv_label, f"{kv} x {d} = {kv * d}", kv * d),
        "QKV": Dim(f"({q_label}) + 2 x ({kv_label})", f"{h * d} + 2 x {kv * d} = {(h + 2 * kv) * d}",
                   (h + 2 * kv) * d),
    }


# GGUF tensor name (without blk.N.) -> numpy-order shape in the symbols of `dims`, for the
# tensors every decoder of these families has; an adapter overrides entries (fused tensors,
# norms over all heads at once) with its `shape_overrides`
SHAPES: dict[str, tuple[str, ...]] = {
    "token_embd.weight": ("V", "E"), "output.weight": ("V", "E"),
    "attn_q.weight": ("Q", "E"), "attn_q.bias": ("Q",),
    "attn_k.weight": ("KV", "E"), "attn_k.bias": ("KV",),
    "attn_v.weight": ("KV", "E"), "attn_v.bias": ("KV",),
    "attn_qkv.weight": ("QKV", "E"), "attn_qkv.bias": ("QKV",),
    "attn_output.weight": ("E", "Q"),
    "ffn_gate.weight": ("F", "E"), "ffn_up.weight": ("F", "E"), "ffn_down.weight": ("E", "F"),
    "attn_q_norm.weight": ("D",), "attn_k_norm.weight": ("D",),
    **{f"{norm}.weight": ("E",) for norm in ("output_norm", "attn_norm", "ffn_norm", "post_attention_norm",
                                             "post_ffw_norm")},
}


def expected_shapes(hp: HParams, overrides: dict[str, tuple[str, ...]] | None = None) -> dict[str, tuple[Dim, ...]]:
    """GGUF tensor name (without blk.N.) -> expected numpy-order shape."""
    d = dims(hp)
    return {name: tuple(d[s] for s in syms) for name, syms in {**SHAPES, **(overrides or {})}.items()}


def check_shapes(hp: HParams, tensors: Iterable[SourceTensor],
                 overrides: dict[str, tuple[str, ...]] | None = None) -> None:
    table = expected_shapes(hp, overrides)
    for s in tensors:
        dims = table.get(re.sub(r"^blk\.\d+\.", "", s.name))
        if dims is None:
            continue
        want = tuple(x.size for x in dims)
        if tuple(s.shape) == want:
            continue
        which = s.hf_name if s.hf_name == s.name else f"{s.hf_name} ({s.name})"
        shape = "(" + ", ".join(map(str, s.shape)) + ")"
        expected = "(" + ", ".join(map(str, want)) + ")"
        if len(s.shape) == len(want):
            i = next(i for i, (a, b) in enumerate(zip(s.shape, want)) if a != b)
            x = dims[i]
            raise FormatError(f"{hp.source}: {x.label} is {x.text}, but tensor {which} has shape {shape} "
                              f"where the config implies {expected} (dimension {i}); the config does not "
                              "match the weights")
        raise FormatError(f"{hp.source}: tensor {which} has shape {shape}, but the config implies {expected} "
                          f"({', '.join(x.label for x in dims)})")

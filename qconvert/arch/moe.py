"""Mixture-of-experts machinery shared by the MoE families (qwen_moe.py, mixtral.py,
deepseek.py): per-expert checkpoint weights stacked into llama.cpp's 3-D expert tensors,
and the routed-expert metadata keys.

Checkpoints store one 2-D weight per expert and projection:

    model.layers.3.mlp.experts.17.gate_proj.weight        (n_ff_exp, n_embd)   Qwen, DeepSeek
    model.layers.3.block_sparse_moe.experts.17.w1.weight  (n_ff_exp, n_embd)   Mixtral (w1 gate, w3 up, w2 down)

llama.cpp wants one tensor per layer and projection, experts along the slowest axis
(numpy shape (n_expert, rows, cols); GGML ne = {cols, rows, n_expert}), named as gguf-py
names the expert-less HF name `...experts.gate_proj.weight` -> `blk.3.ffn_gate_exps.weight`.
Its converter stacks experts in index order; so do we, after checking every index
0..n_expert-1 is present exactly once with one shape. The stack stays lazy
(source/expert_stack.py): the writer pulls one expert at a time, and each expert a slice
of rows at a time (source/row_chunks.py), also from a stack the checkpoint stores whole
(Llama 4's gate_up_proj, 128 experts x 5120 x 16384: one expert's gate is 168 MB as
float32)."""

from __future__ import annotations

import re
from functools import partial
from typing import Iterator

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..source.expert_stack import ExpertStack
from ..source.safetensors_file import TensorHandle
from ..source.source_tensor import SourceTensor
from .base import ArchAdapter, _order

# `<stem>.experts.<index>.<projection>.weight`; the index has at most 6 digits so a hostile
# name never reaches int() with thousands of them
_EXPERT = re.compile(r"^(?P<stem>.+\.experts)\.(?P<index>\d{1,6})\.(?P<proj>[A-Za-z0-9_]+)\.weight$")


# a layer's experts stored already stacked: `<stem>.experts.gate_up_proj` / `.down_proj` (3-D)
_FUSED = re.compile(r"^(?P<stem>.+\.experts)\.(?P<param>gate_up_proj|down_proj)(?:\.weight)?$")


def expert_key(hf_name: str) -> tuple[str, int] | None:
    """(stacked HF name, expert index) of one expert's weight, else None:
    'm.layers.0.mlp.experts.5.up_proj.weight' -> ('m.layers.0.mlp.experts.up_proj.weight', 5)."""
    m = _EXPERT.match(hf_name)
    if m is None:
        return None
    return f"{m['stem']}.{m['proj']}.weight", int(m["index"])


class MoEAdapter(ArchAdapter):
    """An adapter whose feed-forward blocks hold routed experts. Subclasses set gguf_arch
    and may add checks (`check_routing`) and metadata (`write_moe_metadata`)."""

    # the config keys of the routed expert count, top-k and one expert's FFN width
    expert_count_keys: tuple[str, ...] = ("num_experts", "num_local_experts", "n_routed_experts")
    expert_used_keys: tuple[str, ...] = ("num_experts_per_tok",)
    expert_ff_keys: tuple[str, ...] = ("moe_intermediate_size",)

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        self.n_expert = hp.integer(*self.expert_count_keys, lo=1, hi=1 << 16)
        self.n_expert_used = hp.integer(*self.expert_used_keys, lo=1, hi=self.n_expert)
        self.n_ff_exp = hp.integer(*self.expert_ff_keys, lo=1, hi=1 << 22) if self.expert_ff_keys else hp.n_ff
        self.check_routing()

    def check_routing(self) -> None:
        """Refuse routing llama.cpp's graph for this arch computes differently."""

    def flag(self, key: str, default: bool) -> bool:
        v = self.hp.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.hp.bad(key, v, "true or false")
        return v

    def refuse(self, why: str) -> UnsupportedError:
        return UnsupportedError(f"{self.hp.source}: {why}; llama.cpp's {self.arch_name} graph cannot express it")

    # -- metadata -----------------------------------------------------------------------
    def write_metadata(self, w) -> None:
        super().write_metadata(w)
        self.write_expert_metadata(w)

    def write_expert_metadata(self, w) -> None:
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        if self.expert_ff_keys:
            w.add_expert_feed_forward_length(self.n_ff_exp)
        self.write_moe_metadata(w)

    def write_moe_metadata(self, w) -> None:
        """What a family adds: shared-expert width, gating function, weight scale..."""

    # -- tensors --------------------------------------------------------------------------
    # checkpoints storing each layer's experts stacked (Llama 4): gate_up_proj (n, 2 x ff, hidden)
    # and down_proj (n, hidden, ff), or with the last two axes swapped when this is set
    fused_transposed: bool = False

    def skip(self, hf_name: str) -> bool:
        # per-expert weights are not tensors of the GGUF by themselves: tensors() stacks them
        if expert_key(hf_name) is not None:
            return True
        if _FUSED.match(hf_name) and len(self.ckpt.handles[hf_name].shape) == 3:
            return True  # split into gate / up and restacked by expert_stacks()
        return super().skip(hf_name)

    def tensors(self) -> list[SourceTensor]:
        out = super().tensors() + list(self.expert_stacks())
        return sorted(out, key=lambda s: _order(s.name))

    def expert_stacks(self) -> Iterator[ExpertStack]:
        groups: dict[str, dict[int, str]] = {}
        for hf_name in self.ckpt.handles:
            key = expert_key(hf_name)
            if key is not None and not super().skip(hf_name):
                groups.setdefault(key[0], {})[key[1]] = hf_name
        for stacked, members in groups.items():
            yield self.stack(stacked, members)
        for hf_name, h in self.ckpt.handles.items():
            m = _FUSED.match(hf_name)
            if m and len(h.shape) == 3 and not super().skip(hf_name):
                projs = ("gate_proj", "up_proj") if m["param"] == "gate_up_proj" else ("down_proj",)
                for k, proj in enumerate(projs):
                    yield self.fused_stack(f"{m['stem']}.{proj}.weight", hf_name, h, k, len(projs))

    def fused_stack(self, stacked: str, hf_name: str, h, k: int, n_parts: int) -> ExpertStack:
        """Part k of n_parts (gate, up) of a stored stack, one lazy slab per expert."""
        name = self.gguf_name(stacked)
        if name is None:
            raise FormatError(f"{h.source}: expert weights {hf_name!r} have no llama.cpp name for {self.hf_arch}")
        if h.shape[0] != self.n_expert:
            raise FormatError(f"{self.hp.source}: the config gives {self.n_expert} experts, but {hf_name!r} "
                              f"stacks {h.shape[0]}; the config does not match the weights")
        out, cols = (h.shape[2], h.shape[1]) if self.fused_transposed else (h.shape[1], h.shape[2])
        if out % n_parts:
            raise FormatError(f"{h.source}: {hf_name!r} {list(h.shape)} does not split into gate and up")
        shape = (out // n_parts, cols)
        self.check_expert_shape(name, hf_name, shape)
        parts = []
        for e in range(self.n_expert):
            rows = None if h.region is None else partial(_fused_rows, h, e, k * shape[0], self.fused_transposed)
            load = partial(_fused_slab, h, e, k, n_parts, self.fused_transposed) if rows is None \
                else partial(rows, 0, shape[0])
            handle = TensorHandle(f"{hf_name}[{e}]", h.dtype, shape, load, h.source, rows)
            parts.append(SourceTensor(name, f"{hf_name}[{e}]", shape, h.dtype, handle, self.transforms(name, stacked)))
        return ExpertStack.of(name, hf_name, parts)

    def stack(self, stacked: str, members: dict[int, str]) -> ExpertStack:
        src = self.hp.source
        name = self.gguf_name(stacked)
        first = self.ckpt.handles[next(iter(members.values()))]
        if name is None:
            raise FormatError(f"{first.source}: expert weights {stacked!r} have no llama.cpp name for "
                              f"{self.hf_arch}; the checkpoint may be of another architecture")
        missing = [i for i in range(self.n_expert) if i not in members]
        extra = sorted(i for i in members if i >= self.n_expert)
        if missing or extra:
            what = (f"no expert {', '.join(map(str, missing[:5]))}" if missing
                    else f"expert {extra[0]} beyond the count")
            raise FormatError(f"{src}: the config gives {self.n_expert} experts, but {stacked!r} has {what} "
                              "(incomplete download, or a config of another model?)")
        parts = []
        for i in range(self.n_expert):
            hf_name = members[i]
            h = self.ckpt.handles[hf_name]
            if h.shape != first.shape:
                raise FormatError(f"{h.source}: expert weight {hf_name!r} has shape {list(h.shape)}, expert 0 "
                                  f"has {list(first.shape)}; experts of one layer must match")
            parts.append(SourceTensor(name, hf_name, h.shape, h.dtype, h, self.transforms(name, hf_name)))
        self.check_expert_shape(name, members[0], first.shape)
        return ExpertStack.of(name, stacked.replace(".experts.", f".experts.{{0..{self.n_expert - 1}}}."), parts)

    def check_expert_shape(self, name: str, hf_name: str, shape: tuple[int, ...]) -> None:
        """One expert's weight against the config: (n_ff_exp, n_embd) for gate/up,
        (n_embd, n_ff_exp) for down."""
        e, f = self.hp.n_embd, self.n_ff_exp
        want = (e, f) if "ffn_down" in name else (f, e)
        if tuple(shape) != want:
            ff_key = self.hp.key_name(self.hp.find(*self.expert_ff_keys)[0] or "intermediate_size") \
                if self.expert_ff_keys else self.hp.label("n_ff")
            raise FormatError(f"{self.hp.source}: tensor {hf_name} has shape {list(shape)}, but "
                              f"{self.hp.label('n_embd')} {e} and {ff_key} {f} imply {list(want)}; "
                              "the config does not match the weights")


def _fused_rows(h, e: int, first: int, transposed: bool, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of expert e's part whose first row is stored row `first` (gate's
    rows, then up's), reading only those: a stack stored (n, out, in) gives them as
    stored rows, one stored transposed (n, in, out) as columns of every stored row."""
    if transposed:
        return h.region(e, slice(None), slice(first + start, first + stop), transpose=True)
    return h.region(e, slice(first + start, first + stop), slice(None))


def _fused_slab(h, e: int, k: int, n_parts: int, transposed: bool) -> np.ndarray:
    """Expert e's part k (rows of gate, then of up) of a stored stack, as (rows, cols), for
    a handle that cannot read regions (loaded a whole expert at a time)."""
    slab = h.rows(e, e + 1)[0] if h.rows is not None else h.load()[e]
    if transposed:
        slab = slab.T
    n = slab.shape[0] // n_parts
    return np.ascontiguousarray(slab[k * n:(k + 1) * n])


def refuse_per_expert_safetensors(ckpt) -> None:
    """Safetensors output (compressed-tensors) of a checkpoint storing one weight per expert
    is refused: transformers 5 merges those into its 3-D expert parameters while loading,
    and that merge finds nothing in a compressed-tensors checkpoint (measured on Qwen3-MoE:
    'Concatenate on tensors destined for ...experts.gate_up_proj. Ckpt contains: 0'), so
    the output would not load. gpt-oss, which stores experts stacked, is not affected."""
    example = next((n for n in ckpt.handles if expert_key(n) is not None), None)
    if example is not None:
        raise UnsupportedError(f"{ckpt.dir}: safetensors output of a mixture-of-experts model with per-expert "
                               f"weights ({example}) is not supported (transformers cannot load it back); "
                               "convert it to GGUF instead")

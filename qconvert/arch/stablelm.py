"""StableLM 2 (`StableLmForCausalLM`): GGUF arch `stablelm`.

LayerNorms with biases, optional q/k/v biases (`use_qkv_bias`), NEOX rope over part of
each head (`partial_rotary_factor`, 0.25): nothing permuted. The 12B model adds parallel
residual blocks (no post-attention norm) and per-head q/k LayerNorms, which transformers
keeps as one module per head (`q_layernorm.norms.{h}.weight`); llama.cpp wants one
(heads, head_dim) tensor per layer, so they are stacked on the way out."""

from __future__ import annotations

import re
from typing import Iterator

import gguf

from ..errors import UnsupportedError
from ..source.source_tensor import SourceTensor
from . import ARCHS
from .base import ArchAdapter
from .transforms import stacked

_PER_HEAD = re.compile(r"^model\.layers\.(\d+)\.self_attn\.([qk])_layernorm\.norms\.(\d+)\.weight$")


@ARCHS.register("StableLmForCausalLM")
class StableLmAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.STABLELM
    description = "StableLM 2: LayerNorm, partial rope; the 12B's parallel blocks and per-head q/k norms (stacked)"
    norm = "layer"
    shape_overrides = {"attn_output.weight": ("E", "E"), "attn_q_norm.weight": ("H", "D"),
                       "attn_k_norm.weight": ("HKV", "D")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        if hp.head_dim * hp.n_head != hp.n_embd or hp.tied_embeddings:
            raise UnsupportedError(f"{hp.source}: head_dim {hp.head_dim} x {hp.n_head} heads vs hidden_size "
                                   f"{hp.n_embd}, tied embeddings {hp.tied_embeddings}; llama.cpp's stablelm graph "
                                   "needs heads splitting the hidden size and its own output matrix")
        self.parallel = bool(hp.flag("use_parallel_residual"))

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        w.add_parallel_residual(self.parallel)

    def skip(self, hf_name: str) -> bool:
        return bool(_PER_HEAD.match(hf_name)) or super().skip(hf_name)

    def extra_tensors(self) -> Iterator[SourceTensor]:
        yield from super().extra_tensors()
        groups: dict[tuple[int, str], dict[int, tuple[str, object]]] = {}
        for hf_name, h in self.ckpt.handles.items():
            m = _PER_HEAD.match(hf_name)
            if m:
                groups.setdefault((int(m.group(1)), m.group(2)), {})[int(m.group(3))] = (hf_name, h)
        hp = self.hp
        for (layer, qk), heads in sorted(groups.items()):
            want = hp.n_head if qk == "q" else hp.n_head_kv
            if sorted(heads) != list(range(want)):
                raise UnsupportedError(f"{hp.source}: layer {layer} has {qk}_layernorm norms for heads "
                                       f"{sorted(heads)[:8]}, not 0..{want - 1}")
            kind = gguf.MODEL_TENSOR.ATTN_Q_NORM if qk == "q" else gguf.MODEL_TENSOR.ATTN_K_NORM
            name = gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"
            yield stacked(name, [heads[i] for i in range(want)])

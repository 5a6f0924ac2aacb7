"""Dense families that are their GGUF architecture's plain reading of a checkpoint: the
tensor names come from gguf-py's map and nothing is transformed but what is listed.

- ERNIE 4.5 dense: rope already in interleaved pairs (NORM rope), nothing permuted.
- Arcee AFM: a Llama whose MLP is up/down with squared ReLU; q/k permuted like Llama's.
- Seed-OSS: q/k/v biases, NEOX rope.
- StarCoder 2: LayerNorm with biases, GELU MLP with biases, NEOX rope.
- Nemotron (Minitron): LayerNorm1P (x * (1 + w) + b: +1 on the way out, as for Gemma),
  squared-ReLU up/down MLP, NEOX rope over part of each head.
"""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .transforms import NORM_PLUS_ONE, ROPE_PERMUTE


@ARCHS.register("Ernie4_5ForCausalLM")
class Ernie45Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.ERNIE4_5
    description = "ERNIE 4.5 dense (0.3B)"


@ARCHS.register("ArceeForCausalLM")
class ArceeAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.ARCEE
    description = "Arcee AFM: a Llama with a squared-ReLU up/down MLP"
    tensor_rules = ROPE_PERMUTE


@ARCHS.register("SeedOssForCausalLM")
class SeedOssAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.SEED_OSS
    description = "ByteDance Seed-OSS: q/k/v biases"


@ARCHS.register("Starcoder2ForCausalLM")
class Starcoder2Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.STARCODER2
    description = "StarCoder 2: LayerNorm and linear biases, GELU MLP"
    norm = "layer"
    shape_overrides = {"attn_output.weight": ("E", "E")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        if hp.flag("use_bias") is False:
            raise UnsupportedError(f"{hp.source}: use_bias is false; llama.cpp's starcoder2 graph needs the "
                                   "norm and linear biases")


@ARCHS.register("NemotronForCausalLM")
class NemotronAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.NEMOTRON
    description = "NVIDIA Nemotron / Minitron: LayerNorm1P (norms +1), squared-ReLU MLP, partial rope"
    norm = "layer"
    tensor_rules = NORM_PLUS_ONE
    shape_overrides = {"attn_output.weight": ("E", "E")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        if hp.head_dim * hp.n_head != hp.n_embd or hp.tied_embeddings:
            raise UnsupportedError(f"{hp.source}: head_dim {hp.head_dim} x {hp.n_head} heads vs hidden_size "
                                   f"{hp.n_embd}, tied embeddings {hp.tied_embeddings}; llama.cpp's nemotron graph "
                                   "needs heads splitting the hidden size and its own output matrix")

"""Phi-1.5 / Phi-2 (`PhiForCausalLM`): GGUF arch `phi2`.

Parallel blocks over one LayerNorm (with bias), q/k/v and the GELU MLP with biases, an
output layer with a bias, NEOX rope over part of each head (`partial_rotary_factor`, 0.4
in Phi-2): nothing permuted. llama.cpp's phi2 graph has one KV head per query head and no
q/k LayerNorms; configs asking for either are refused."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter


@ARCHS.register("PhiForCausalLM")
class Phi2Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.PHI2
    description = "Phi-1.5 / Phi-2: parallel blocks, LayerNorm and biases everywhere, partial rope"
    norm = "layer"
    shape_overrides = {"attn_output.weight": ("E", "E")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        if hp.n_head_kv != hp.n_head or hp.head_dim * hp.n_head != hp.n_embd:
            raise UnsupportedError(f"{hp.source}: {hp.n_head_kv} KV heads for {hp.n_head} query heads of "
                                   f"{hp.head_dim}; llama.cpp's phi2 graph needs one KV head per query head "
                                   "splitting hidden_size evenly")
        if hp.flag("qk_layernorm"):
            raise UnsupportedError(f"{hp.source}: qk_layernorm is true; llama.cpp's phi2 graph has no q/k norms")
        if hp.tied_embeddings:
            raise UnsupportedError(f"{hp.source}: tie_word_embeddings is true; llama.cpp's phi2 graph needs its "
                                   "own output layer")

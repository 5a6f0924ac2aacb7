"""IBM Granite 3.x dense (`GraniteForCausalLM`): GGUF arch `granite`.

A Llama (q/k permuted for llama.cpp's rope) with four multipliers transformers applies
and llama.cpp reads as scales: embeddings times `embedding_multiplier`, each residual
branch times `residual_multiplier`, attention scores times `attention_multiplier` (in place
of 1/sqrt(head_dim)), logits divided by `logits_scaling`. A config that leaves one out
means GraniteConfig's default, 1.0, and that is written: llama.cpp would otherwise use
1/sqrt(head_dim) for the attention scale."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .scalars import Scalar
from .transforms import ROPE_PERMUTE


@ARCHS.register("GraniteForCausalLM")
class GraniteAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.GRANITE
    description = "IBM Granite 3.x dense: embedding, residual, attention and logit multipliers"
    tensor_rules = ROPE_PERMUTE
    scalars = (
        Scalar(("embedding_multiplier",), gguf.Keys.LLM.EMBEDDING_SCALE, default=1.0),
        Scalar(("residual_multiplier",), gguf.Keys.LLM.RESIDUAL_SCALE, default=1.0),
        Scalar(("attention_multiplier",), gguf.Keys.Attention.SCALE, default=1.0),
        Scalar(("logits_scaling",), gguf.Keys.LLM.LOGIT_SCALE, default=1.0),
    )

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        # GraniteConfig has no head_dim: heads split the hidden size, in llama.cpp too
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise UnsupportedError(f"{hp.source}: head_dim {hp.head_dim} x {hp.n_head} heads != hidden_size "
                                   f"{hp.n_embd}; llama.cpp's granite graph splits the hidden size evenly")

"""Llama and Mistral: GGUF arch `llama`, q/k rows permuted to llama.cpp's rope order."""

from __future__ import annotations

import gguf

from . import ARCHS
from .base import ArchAdapter, Transform, unpermute_rope


@ARCHS.register("LlamaForCausalLM", "MistralForCausalLM")  # lookups ignore case: LLaMAForCausalLM too
class LlamaAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.LLAMA

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        # Mistral v0.1's sliding window is not applied by llama.cpp's llama graph; nothing to write.

    def transforms(self, gguf_name: str, hf_name: str) -> list[Transform]:
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return [unpermute_rope(self.hp.n_head)]
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return [unpermute_rope(self.hp.n_head_kv)]
        return []

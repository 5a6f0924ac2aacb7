"""Llama and Mistral: GGUF arch `llama`, q/k rows permuted to llama.cpp's rope order.

Mistral v0.1's sliding window is not applied by llama.cpp's llama graph, and its own
converter writes none; nor does this adapter."""

from __future__ import annotations

import gguf

from . import ARCHS
from .base import ArchAdapter
from .transforms import ROPE_PERMUTE


@ARCHS.register("LlamaForCausalLM", "MistralForCausalLM")  # lookups ignore case: LLaMAForCausalLM too
class LlamaAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    description = "Llama 2/3/3.x, Mistral, SmolLM, TinyLlama; Llama 3.1 rope scaling as a rope_freqs table"
    tensor_rules = ROPE_PERMUTE

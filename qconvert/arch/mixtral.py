"""Mixtral: GGUF arch `llama` with routed experts in every layer.

Attention is Llama's (q/k rows permuted to llama.cpp's rope order, as llama.py does);
the sparse block `block_sparse_moe` holds the router `gate` and experts w1 (gate), w3
(up), w2 (down), each as wide as `intermediate_size` (no separate expert width key).
Routing: softmax over all experts, top k, renormalised -- what llama.cpp's llama graph
does."""

from __future__ import annotations

import gguf

from . import ARCHS
from .llama import LlamaAdapter
from .moe import MoEAdapter


@ARCHS.register("MixtralForCausalLM")
class MixtralAdapter(MoEAdapter, LlamaAdapter):
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    description = "Mixtral 8x7B/8x22B: Llama attention, 8 experts per layer stacked, top-2"
    expert_count_keys = ("num_local_experts",)
    expert_ff_keys = ()  # experts are intermediate_size wide

"""Qwen 2 / 2.5 and Qwen 3: GGUF archs `qwen2` and `qwen3`.

Unlike Llama, llama.cpp runs both with NEOX-style rope, which rotates the two halves of
each head exactly as HF's `rotate_half` does, so q/k rows are written in HF's order with
no permutation. Qwen 2 adds q/k/v biases; Qwen 3 drops them and instead RMS-normalises
each head of q and k (`q_norm`/`k_norm` -> `attn_q_norm`/`attn_k_norm`); both come through
the standard name map.

Qwen 2's optional sliding window (`use_sliding_window`, off in the released models) has no
GGUF key; llama.cpp's qwen2 graph attends to the whole context, as its own converter
assumes."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter


@ARCHS.register("Qwen2ForCausalLM")
class Qwen2Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    description = "Qwen 2 / 2.5 (q/k/v biases)"

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        # llama.cpp's qwen2 loader sizes q and attn_output as n_embd x n_embd
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise UnsupportedError(
                f"{hp.source}: head_dim {hp.head_dim} x {hp.n_head} heads != hidden_size {hp.n_embd}; "
                "llama.cpp's qwen2 architecture cannot hold this shape"
            )


@ARCHS.register("Qwen3ForCausalLM")
class Qwen3Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    description = "Qwen 3 dense (per-head q/k norms)"

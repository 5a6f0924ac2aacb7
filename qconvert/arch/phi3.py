"""Phi-3, Phi-3.5 and Phi-4 (`Phi3ForCausalLM`): GGUF arch `phi3`.

The checkpoint's fused tensors are what llama.cpp's phi3 graph reads: `qkv_proj` as
`attn_qkv` (q, k, v rows in that order) and `gate_up_proj` as `ffn_up` (gate rows, then
up rows: llama.cpp's fused SwiGLU takes the first half as the gate). Rope is NEOX-style,
so nothing is permuted. LongRoPE models (Phi-3.5, the 128k Phi-3s) ship long and short
factor tables, written as `rope_factors_long/short` with the attention factor. The
sliding window is written as llama.cpp's converter writes it (0 when there is none); the
vendored llama.cpp does not apply it."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .rope import optional_longrope


@ARCHS.register("Phi3ForCausalLM")
class Phi3Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.PHI3
    description = "Phi-3 / 3.5 / Phi-4: fused qkv and gate_up as llama.cpp reads them; LongRoPE factor tables"
    shape_overrides = {"ffn_up.weight": ("F2", "E")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        # llama.cpp's phi3 loader sizes q and attn_output as n_embd x n_embd
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise UnsupportedError(f"{hp.source}: head_dim {hp.head_dim} x {hp.n_head} heads != hidden_size "
                                   f"{hp.n_embd}; llama.cpp's phi3 architecture cannot hold this shape")
        self.rope_dims = int(hp.rotary_fraction * hp.n_embd) // hp.n_head
        self.longrope = optional_longrope(hp, self.rope_dims // 2)
        self.window = hp.integer("sliding_window", lo=1, hi=2**32 - 1, default=None)
        self.original_context = hp.integer("original_max_position_embeddings", lo=1, hi=2**32 - 1, default=None)

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        w.add_sliding_window(self.window or 0)
        if self.longrope is not None:
            w.add_rope_scaling_orig_ctx_len(self.longrope.original_context)
            w.add_rope_scaling_attn_factors(self.longrope.attention_factor)
        elif self.original_context is not None:  # as llama.cpp's converter: unused without rope scaling
            w.add_rope_scaling_orig_ctx_len(self.original_context)

    def extra_tensors(self):
        yield from super().extra_tensors()
        if self.longrope is not None:
            yield from self.longrope.tensors()

"""Gemma 3 (text): GGUF arch `gemma3`.

What differs from the base adapter, and why:
- Every RMSNorm weight (input, post-attention, pre/post feed-forward, per-head q/k, final)
  is stored as w where HF computes x * (1 + w); llama.cpp multiplies by the stored value,
  so 1 is added on the way out (llama.cpp's own converter offsets every `*norm.weight`).
- Local (sliding-window) and global layers differ: the window size, which layers are
  local, and a separate rope base for local layers (`rope.freq_base_swa`). Global layers
  may carry linear rope scaling; local ones use plain rope (llama.cpp applies scale 1).
- NEOX rope (HF's rotate-half order): no q/k permutation.
- Gemma3ForConditionalGeneration: only the language model is converted; its tensors sit
  under `model.language_model.` (5.x) or `language_model.model.` (4.x).
"""

from __future__ import annotations

from typing import Optional

import gguf

from ..errors import FormatError, UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .layer_kinds import SlidingWindow
from .transforms import NORM_PLUS_ONE

# transformers' Gemma3TextConfig defaults. A multimodal 4.x config.json stores only the
# text_config values that differ from these (google/gemma-3-4b-it gives no head counts), so
# a missing key means the default, not "unknown".
TEXT_DEFAULTS = {
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256, "max_position_embeddings": 131072, "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0, "sliding_window": 4096, "vocab_size": 262_208,
    "tie_word_embeddings": True,
}
DEFAULT_PATTERN = 6  # HF's default sliding_window_pattern, and llama.cpp's when no key is written


def check_query_scale(hp, arch: str, n_layers_27b: int) -> None:
    """llama.cpp hard-codes Gemma's query scale: 1/sqrt(head_dim), or 1/sqrt(n_embd/n_head)
    for the 27B model (told apart by its layer count); HF uses query_pre_attn_scalar**-0.5.
    A config where the two disagree would convert into a model that computes something else."""
    expected = hp.n_embd // hp.n_head if hp.n_layers == n_layers_27b else hp.head_dim
    scalar = hp.number("query_pre_attn_scalar")
    if scalar is not None and scalar != float(expected):
        raise UnsupportedError(f"{hp.source}: {hp.key_name('query_pre_attn_scalar')} {scalar:g} != {expected}; "
                               f"llama.cpp's {arch} graph fixes the attention scale to 1/sqrt({expected})")


@ARCHS.register("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
class Gemma3Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    description = ("Gemma 3 text (also the text part of the multimodal model); norms +1, "
                   "sliding-window layers, local/global rope bases")
    config_defaults = TEXT_DEFAULTS
    tensor_rules = NORM_PLUS_ONE
    text_part = True

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        self._check_graph_fits()
        # decided here, before anything is written, so a bad config fails a dry run too
        self.swa = SlidingWindow.read(self.hp, DEFAULT_PATTERN)
        self.sliding = self.swa.layers
        self.local_theta: Optional[float] = None
        if any(self.sliding):
            self.local_theta = float(self._local_rope().get("rope_theta", TEXT_DEFAULTS["rope_local_base_freq"]))

    # -- what llama.cpp's gemma3 graph can express ---------------------------------------
    def _check_graph_fits(self) -> None:
        hp, src = self.hp, self.hp.source
        if hp.get("attn_logit_softcapping") is not None:
            raise UnsupportedError(f"{src}: attn_logit_softcapping is set; llama.cpp's gemma3 graph has none "
                                   "(this looks like a Gemma 2 config)")
        if hp.get("use_bidirectional_attention"):
            raise UnsupportedError(f"{src}: bidirectional attention (EmbeddingGemma) is not supported")
        check_query_scale(hp, "gemma3", n_layers_27b=62)

    def _local_rope(self) -> dict:
        local = self.hp.rope("sliding_attention")
        if (local.get("rope_type") or "default").lower() != "default":
            raise UnsupportedError(f"{self.hp.source}: rope type {local['rope_type']!r} on sliding layers; "
                                   "llama.cpp applies plain rope there")
        return local

    # -- metadata --------------------------------------------------------------------------
    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        hp = self.hp
        cap = hp.number("final_logit_softcapping")
        if cap:
            w.add_final_logit_softcapping(float(cap))
        self.swa.write(w, DEFAULT_PATTERN, swa_by_default=False)  # no window: every layer global
        if any(self.sliding):
            w.add_rope_freq_base_swa(self.local_theta)

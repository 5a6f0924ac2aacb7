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
from .base import ArchAdapter, Transform, add_one

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

# multimodal checkpoints: prefix of the language model -> the text model's own prefix
_LM_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                ("language_model.lm_head.", "lm_head."))
_VISION = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


@ARCHS.register("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
class Gemma3Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    config_defaults = TEXT_DEFAULTS

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        self._check_graph_fits()
        # decided here, before anything is written, so a bad config fails a dry run too
        self.sliding = self.layer_is_sliding()
        self.window: Optional[int] = None
        self.local_theta: Optional[float] = None
        if any(self.sliding):
            self.window = self._window()
            self.local_theta = float(self._local_rope().get("rope_theta", TEXT_DEFAULTS["rope_local_base_freq"]))

    # -- what llama.cpp's gemma3 graph can express ---------------------------------------
    def _check_graph_fits(self) -> None:
        hp, src = self.hp, self.hp.source
        if hp.get("attn_logit_softcapping") is not None:
            raise UnsupportedError(f"{src}: attn_logit_softcapping is set; llama.cpp's gemma3 graph has none "
                                   "(this looks like a Gemma 2 config)")
        if hp.get("use_bidirectional_attention"):
            raise UnsupportedError(f"{src}: bidirectional attention (EmbeddingGemma) is not supported")
        # llama.cpp hard-codes the query scale: 1/sqrt(head_dim), or 1/sqrt(n_embd/n_head) for
        # the 62-layer 27B model; HF uses query_pre_attn_scalar**-0.5. A config where the two
        # disagree would convert into a model that computes something else.
        expected = hp.n_embd // hp.n_head if hp.n_layers == 62 else hp.head_dim
        scalar = hp.number("query_pre_attn_scalar")
        if scalar is not None and scalar != float(expected):
            raise UnsupportedError(f"{src}: query_pre_attn_scalar {scalar} != {expected}; llama.cpp's gemma3 "
                                   "graph fixes the attention scale to 1/sqrt(head_dim)")

    def layer_is_sliding(self) -> list[bool]:
        """Which layers use the sliding window: `layer_types` when given (4.5x+, 5.x),
        else every `sliding_window_pattern`-th layer is global (HF's rule for older configs)."""
        n = self.hp.n_layers
        types = self.hp.get("layer_types")
        if types is not None:
            if not isinstance(types, list) or len(types) != n:
                raise FormatError(f"{self.hp.source}: layer_types should list {n} entries")
            bad = sorted({repr(t)[:40] for t in types if t not in ("sliding_attention", "full_attention")})
            if bad:
                raise UnsupportedError(f"{self.hp.source}: layer type(s) {', '.join(bad)} not supported for gemma3")
            return [t == "sliding_attention" for t in types]
        period = self.hp.integer("sliding_window_pattern", "_sliding_window_pattern", lo=1, hi=1 << 16,
                                 default=DEFAULT_PATTERN)
        return [bool((i + 1) % period) for i in range(n)]

    def _window(self) -> int:
        window = self.hp.integer("sliding_window", lo=1, hi=2**32 - 1, default=None)
        if window is None:
            raise FormatError(f"{self.hp.source}: layers use sliding attention but sliding_window is not set")
        return window

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
        if not any(self.sliding):
            return  # without the window key llama.cpp treats every layer as global
        w.add_sliding_window(self.window)
        default = [i % DEFAULT_PATTERN < DEFAULT_PATTERN - 1 for i in range(hp.n_layers)]
        if self.sliding != default:
            # only when needed: llama.cpp builds that lack the per-layer array assume period 6
            w.add_sliding_window_pattern(self.sliding)
        w.add_rope_freq_base_swa(self.local_theta)

    # -- tensors ---------------------------------------------------------------------------
    @staticmethod
    def _text_name(hf_name: str) -> str:
        for old, new in _LM_PREFIXES:
            if hf_name.startswith(old):
                return new + hf_name[len(old):]
        return hf_name

    def skip(self, hf_name: str) -> bool:
        if hf_name.startswith(_VISION):
            return True
        return super().skip(self._text_name(hf_name))

    def gguf_name(self, hf_name: str) -> Optional[str]:
        return super().gguf_name(self._text_name(hf_name))

    def transforms(self, gguf_name: str, hf_name: str) -> list[Transform]:
        return [add_one] if hf_name.endswith("norm.weight") else []

"""Gemma 2: GGUF arch `gemma2`.

Like Gemma 3, every RMSNorm weight is stored as w for x * (1 + w) (+1 on the way out) and
rope is NEOX-style (no permutation). Unlike it: attention scores and final logits are
soft-capped (llama.cpp's gemma2 graph always applies both caps, so a config without them
cannot be expressed), layers alternate sliding-window and global starting with a sliding
one (llama.cpp's built-in period 2), one rope base serves both kinds, and the output
always reuses the embedding."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .gemma import check_query_scale
from .layer_kinds import SlidingWindow
from .scalars import Scalar
from .transforms import NORM_PLUS_ONE

# transformers' Gemma2Config defaults, for configs that leave keys out
DEFAULTS = {"head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096, "rms_norm_eps": 1e-6,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "tie_word_embeddings": True}
PERIOD = 2  # HF's alternation and llama.cpp's built-in pattern
_ALWAYS = "llama.cpp's gemma2 graph always soft-caps (give the cap the model was trained with)"


@ARCHS.register("Gemma2ForCausalLM")
class Gemma2Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.GEMMA2
    description = "Gemma 2: norms +1, attention and final logit soft-capping, alternating sliding-window layers"
    config_defaults = DEFAULTS
    tensor_rules = NORM_PLUS_ONE
    scalars = (
        Scalar(("attn_logit_softcapping",), gguf.Keys.LLM.ATTN_LOGIT_SOFTCAPPING, required=_ALWAYS),
        Scalar(("final_logit_softcapping",), gguf.Keys.LLM.FINAL_LOGIT_SOFTCAPPING, required=_ALWAYS),
    )

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        check_query_scale(hp, "gemma2", n_layers_27b=46)
        if hp.tied_embeddings is False:
            raise UnsupportedError(f"{hp.source}: {hp.key_name('tie_word_embeddings')} is false; llama.cpp's "
                                   "gemma2 graph always uses the token embedding as the output layer")
        self.swa = SlidingWindow.read(hp, PERIOD)

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        self.swa.write(w, PERIOD, swa_by_default=True)

    def skip(self, hf_name: str) -> bool:
        # some exports (AutoAWQ) store the tied lm_head; llama.cpp never reads one
        return hf_name == "lm_head.weight" or super().skip(hf_name)

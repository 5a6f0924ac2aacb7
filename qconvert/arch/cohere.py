"""Cohere Command R7B / Command A (`Cohere2ForCausalLM`): GGUF arch `cohere2`.

Parallel blocks (attention and MLP read one LayerNorm without bias: layer_norm_epsilon,
not the RMS key), logits times `logit_scale`, three sliding-window layers in four
(llama.cpp's built-in period) and rope on those sliding layers only; the global ones
have none, in transformers and llama.cpp alike. Rope rotates interleaved pairs, as
llama.cpp's NORM rope does: nothing permuted. The output reuses the embedding."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .layer_kinds import SlidingWindow
from .scalars import Scalar

PERIOD = 4  # Cohere2Config's sliding_window_pattern and llama.cpp's built-in one


@ARCHS.register("Cohere2ForCausalLM")
class Cohere2Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.COHERE2
    description = "Cohere Command R7B / A: parallel blocks, LayerNorm, logit scale, rope on sliding layers only"
    norm = "layer"
    config_defaults = {"logit_scale": 0.0625, "sliding_window": 4096, "tie_word_embeddings": True}
    scalars = (Scalar(("logit_scale",), gguf.Keys.LLM.LOGIT_SCALE),)

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        if hp.get("attention_bias"):
            raise UnsupportedError(f"{hp.source}: attention_bias is true; llama.cpp's cohere2 graph has no "
                                   "attention biases")
        if hp.tied_embeddings is False:
            raise UnsupportedError(f"{hp.source}: tie_word_embeddings is false; llama.cpp's cohere2 graph "
                                   "always uses the token embedding as the output layer")
        self.swa = SlidingWindow.read(hp, PERIOD)

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        self.swa.write(w, PERIOD, swa_by_default=True)

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
        if hp.flag("attention_bias"):
            raise UnsupportedError(f"{hp.source}: attention_bias is true; llama.cpp's cohere2 graph has no "
                                   "attention biases")
        if hp.tied_embeddings is False:
            raise UnsupportedError(f"{hp.source}: tie_word_embeddings is false; llama.cpp's cohere2 graph "
                                   "always uses the token embedding as the output layer")
        self.swa = SlidingWindow.read(hp, PERIOD)

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        self.swa.write(w, PERIOD, swa_by_default=True)


@ARCHS.register("CohereForCausalLM")
class CohereAdapter(ArchAdapter):
    """Command R / R+ and Aya 23: the parallel-block, LayerNorm, logit-scaled Cohere model
    without sliding layers. Per-head q/k norms (`use_qk_norm`) exist in llama.cpp's graph
    only for models of 64+ layers (Command R+), so a config that disagrees is refused."""

    gguf_arch = gguf.MODEL_ARCH.COMMAND_R
    description = "Cohere Command R / R+, Aya 23: parallel blocks, LayerNorm, logit scale"
    norm = "layer"
    config_defaults = {"logit_scale": 0.0625, "tie_word_embeddings": True}
    scalars = (Scalar(("logit_scale",), gguf.Keys.LLM.LOGIT_SCALE),)
    shape_overrides = {"attn_q_norm.weight": ("H", "D"), "attn_k_norm.weight": ("HKV", "D")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        if hp.flag("attention_bias"):
            raise UnsupportedError(f"{hp.source}: attention_bias is true; llama.cpp's command-r graph has no "
                                   "attention biases")
        if hp.tied_embeddings is False:
            raise UnsupportedError(f"{hp.source}: tie_word_embeddings is false; llama.cpp's command-r graph "
                                   "always uses the token embedding as the output layer")
        if bool(hp.flag("use_qk_norm")) != (hp.n_layers >= 64):
            raise UnsupportedError(f"{hp.source}: use_qk_norm is {bool(hp.flag('use_qk_norm'))} with "
                                   f"{hp.n_layers} layers; llama.cpp's command-r graph has q/k norms exactly "
                                   "when there are 64 or more layers")
        # Command R's config.json understates the context it was trained for; llama.cpp's
        # converter takes model_max_length when there is one
        self.context = hp.integer("model_max_length", lo=1, hi=2**32 - 1, default=None)

    def context_length(self):
        return self.context or super().context_length()

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        w.add_rope_scaling_type(gguf.RopeScalingType.NONE)

"""GLM-4 (0414 series, `Glm4ForCausalLM`): GGUF arch `glm4`.

q/k/v with biases; the MLP's fused `gate_up_proj` is what llama.cpp reads as `ffn_up`
(gate rows first); norms after attention and after the MLP besides the usual two. Rope
turns only the first half of each head (`partial_rotary_factor` 0.5, GLM's default when
unset) in interleaved pairs, which llama.cpp's NORM rope does as stored: no permutation."""

from __future__ import annotations

import gguf

from . import ARCHS
from .base import ArchAdapter


@ARCHS.register("Glm4ForCausalLM")
class Glm4Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.GLM4
    description = "GLM-4 (0414): fused gate_up, post-attention and post-MLP norms, half-head rope"
    config_defaults = {"partial_rotary_factor": 0.5}
    shape_overrides = {"ffn_up.weight": ("F2", "E")}

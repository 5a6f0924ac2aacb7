"""SmolLM3 (`SmolLM3ForCausalLM`): GGUF arch `smollm3`.

A Llama (q/k permuted for llama.cpp's rope) whose every fourth layer skips rope (NoPE).
llama.cpp fixes that step at 4, so the config's `no_rope_layers` must say the same; the
optional sliding window (off in the released model) has no place in llama.cpp's graph."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .layer_kinds import check_no_rope_layers, sliding_layers
from .transforms import ROPE_PERMUTE

NO_ROPE_STEP = 4  # llama.cpp's hparams.n_no_rope_layer_step for smollm3


@ARCHS.register("SmolLM3ForCausalLM")
class SmolLM3Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.SMOLLM3
    description = "SmolLM3: every fourth layer without rope"
    tensor_rules = ROPE_PERMUTE

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        check_no_rope_layers(hp, NO_ROPE_STEP)
        if hp.flag("use_sliding_window") and any(sliding_layers(hp, default_period=1)):
            raise UnsupportedError(f"{hp.source}: use_sliding_window is on; llama.cpp's smollm3 graph "
                                   "attends to the whole context")

"""The text model of Mistral Small 3.1 / 3.2 (`Mistral3ForConditionalGeneration`): GGUF
arch `mistral3`, as llama.cpp's converter writes it.

Its language model is a Mistral (q/k permuted for llama.cpp's rope) under the multimodal
wrapper's prefixes (`model.language_model.*` in 5.x, `language_model.model.*` in 4.x) with
its config under `text_config`; the vision tower and projector are left out. Mistral 4
(a mixture of experts with latent attention behind the same class name) is refused."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .transforms import ROPE_PERMUTE


@ARCHS.register("Mistral3ForConditionalGeneration")
class Mistral3Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.MISTRAL3
    description = "Mistral Small 3.1/3.2: the text model (vision tower left out)"
    tensor_rules = ROPE_PERMUTE
    text_part = True

    def __init__(self, ckpt, hf_arch: str) -> None:
        text = ckpt.config.get("text_config")
        kind = text.get("model_type") if isinstance(text, dict) else None
        if kind not in (None, "mistral"):
            raise UnsupportedError(f"{ckpt.dir / 'config.json'}: text_config.model_type {kind!r}; only a "
                                   "Mistral text model ('mistral') is supported under Mistral3ForConditionalGeneration")
        super().__init__(ckpt, hf_arch)

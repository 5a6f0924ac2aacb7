"""Mistral 3 text models: GGUF arch `mistral3`, as llama.cpp's converter writes them.

- `Mistral3ForConditionalGeneration` (Mistral Small 3.1 / 3.2): the language model is a
  Mistral under the multimodal wrapper's prefixes (`model.language_model.*` in 5.x,
  `language_model.model.*` in 4.x) with its config under `text_config`; the vision tower
  and projector are left out.
- Ministral 3 (`Ministral3ForCausalLM`, or the wrapper with a `ministral3` text model):
  yarn rope, whose attention factor transformers derives from `mscale` / `mscale_all_dim`
  (llama.cpp reads the latter as `yarn_log_mul` and assumes mscale 1), and Llama 4's
  attention temperature: queries times 1 + beta * log(1 + floor(pos / original context)).

q/k are permuted for llama.cpp's rope as for Llama. Mistral 4 (a mixture of experts with
latent attention behind the same wrapper) is refused."""

from __future__ import annotations

from typing import Optional

import gguf

from ..errors import FormatError, UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .hparams import is_number, show
from .transforms import ROPE_PERMUTE

TEXT_MODELS = ("mistral", "ministral3")


@ARCHS.register("Mistral3ForConditionalGeneration", "Ministral3ForCausalLM")
class Mistral3Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.MISTRAL3
    description = ("Mistral Small 3.1/3.2 and Ministral 3: the text model (vision tower left out); "
                   "Ministral's yarn and attention temperature")
    tensor_rules = ROPE_PERMUTE
    text_part = True

    def __init__(self, ckpt, hf_arch: str) -> None:
        text = ckpt.config.get("text_config")
        where = "text_config.model_type" if isinstance(text, dict) else "model_type"
        kind = (text if isinstance(text, dict) else ckpt.config).get("model_type")
        if kind not in (None, *TEXT_MODELS):
            raise UnsupportedError(f"{ckpt.dir / 'config.json'}: {where} {show(kind)}; only a Mistral or "
                                   f"Ministral 3 text model ({', '.join(TEXT_MODELS)}) is supported here")
        super().__init__(ckpt, hf_arch)
        self.yarn_log_mul: Optional[float] = None
        self.temperature: Optional[float] = None
        if kind == "ministral3":
            self._read_ministral()

    def _param(self, rp: dict, key: str, lo: float, hi: float) -> Optional[float]:
        v = rp.get(key)
        if v is not None and not (is_number(v) and lo <= v <= hi):
            raise FormatError(f"{self.hp.source}: {self.hp.rope_key_name(key)} is {show(v)}; expected a number "
                              f"from {lo:g} to {hi:g}")
        return None if v is None else float(v)

    def _read_ministral(self) -> None:
        hp, rp = self.hp, self.hp.rope()
        if (rp.get("rope_type") or "").lower() != "yarn":
            raise UnsupportedError(f"{hp.source}: {hp.rope_key_name('rope_type')} {show(rp.get('rope_type'))}; "
                                   "Ministral 3 is converted with yarn rope only, as llama.cpp's converter does")
        mscale = self._param(rp, "mscale", 0.0, 1e3)
        self.yarn_log_mul = self._param(rp, "mscale_all_dim", 0.0, 1e3)
        if mscale not in (None, 1.0) and self.yarn_log_mul:
            raise UnsupportedError(f"{hp.source}: {hp.rope_key_name('mscale')} {mscale:g}; llama.cpp takes it "
                                   "to be 1 when mscale_all_dim is set")
        self.temperature = self._param(rp, "llama_4_scaling_beta", 0.0, 1e3)
        if self.temperature and rp.get("original_max_position_embeddings") is None:
            raise FormatError(f"{hp.source}: llama_4_scaling_beta needs original_max_position_embeddings "
                              "among the rope parameters")

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        if self.yarn_log_mul:
            w.add_rope_scaling_yarn_log_mul(self.yarn_log_mul)
        if self.temperature:
            w.add_attn_temperature_scale(self.temperature)

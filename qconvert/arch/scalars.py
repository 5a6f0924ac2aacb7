"""Config numbers a family writes as single GGUF floats (Granite's multipliers, Gemma 2's
soft-caps, Cohere's logit scale), listed by the adapter as data:

    scalars = (Scalar(("logits_scaling",), gguf.Keys.LLM.LOGIT_SCALE, default=1.0),)

Each is checked when the adapter is made (a dry run fails on a bad value too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import gguf

from ..errors import UnsupportedError
from .hparams import HParams


@dataclass(frozen=True)
class Scalar:
    keys: tuple[str, ...]  # config keys, most usual first
    gguf_key: str  # a gguf.Keys template: "{arch}.logit_scale"
    lo: float = 0.0  # excluded
    hi: float = 1e6
    default: Optional[float] = None  # the config class's default, written when the key is absent
    required: str = ""  # why llama.cpp needs it: absent with no default is then an error

    def read(self, hp: HParams) -> Optional[float]:
        v = hp.number(*self.keys, lo=self.lo, hi=self.hi, default=self.default)
        if v is None and self.required:
            raise UnsupportedError(f"{hp.source}: {hp.key_name(self.keys[0])} is not set; {self.required}")
        return v

    def write(self, w: gguf.GGUFWriter, arch: str, value: Optional[float]) -> None:
        if value is not None:
            w.add_float32(self.gguf_key.format(arch=arch), value)

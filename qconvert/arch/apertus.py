"""Apertus (`ApertusForCausalLM`): GGUF arch `apertus`.

Per-head q/k norms, NEOX rope (nothing permuted; Llama 3.1 scaling as a rope_freqs table)
and an up/down MLP with the xIELU activation, whose four parameters per layer
(`mlp.act_fn.alpha_n/alpha_p/beta/eps`, one value each, alphas stored before their
softplus) are checkpoint tensors in transformers but per-layer metadata arrays in
llama.cpp. They are read when the metadata is written (a few bytes), in layer order."""

from __future__ import annotations

import math
import re

import gguf

from ..errors import FormatError
from . import ARCHS
from .base import ArchAdapter

PARAMS = ("alpha_n", "alpha_p", "beta", "eps")
_ACT = re.compile(r"^model\.layers\.(\d+)\.mlp\.act_fn\.(alpha_n|alpha_p|beta|eps)$")


@ARCHS.register("ApertusForCausalLM")
class ApertusAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.APERTUS
    description = "Swiss AI Apertus: xIELU MLP (its per-layer parameters as metadata), q/k norms"

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        self.act: dict[str, dict[int, object]] = {p: {} for p in PARAMS}
        for name, h in ckpt.handles.items():
            m = _ACT.match(name)
            if m:
                if h.n_elements != 1:
                    raise FormatError(f"{h.source}: {name} has shape {tuple(h.shape)}; xIELU parameters are "
                                      "single values")
                self.act[m.group(2)][int(m.group(1))] = h
        for p, layers in self.act.items():
            missing = [i for i in range(self.hp.n_layers) if i not in layers]
            if missing:
                raise FormatError(f"{self.hp.source}: the checkpoint has no mlp.act_fn.{p} for layer(s) "
                                  f"{', '.join(map(str, missing[:5]))}; xIELU needs one per layer")

    def skip(self, hf_name: str) -> bool:
        return bool(_ACT.match(hf_name)) or super().skip(hf_name)

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        for p, add in zip(PARAMS, (w.add_xielu_alpha_n, w.add_xielu_alpha_p, w.add_xielu_beta, w.add_xielu_eps)):
            values = []
            for i in range(self.hp.n_layers):
                h = self.act[p][i]
                v = float(h.load().reshape(-1)[0])
                if not math.isfinite(v):
                    raise FormatError(f"{h.source}: {h.name} is {v}; xIELU parameters must be finite")
                values.append(v)
            add(values)

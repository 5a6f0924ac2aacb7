"""DistilBERT encoders (msmarco-distilbert, multi-qa-distilbert): GGUF arch `bert`.

The BERT graph without token-type embeddings (llama.cpp adds none when the table is
absent; the GGUF still says one type, as llama.cpp's converter writes), LayerNorm epsilon
fixed at 1e-12 (DistilBERT's configs have no key for it), and its own config spelling:
`n_layers`, `n_heads`, `dim`, `hidden_dim`, `activation`. DistilBertForMaskedLM keeps the
encoder under `distilbert.` beside its `vocab_*` head.
"""

from __future__ import annotations

from typing import Optional

import gguf

from . import ARCHS
from .bert import BertAdapter


@ARCHS.register("DistilBertModel", "DistilBertForMaskedLM")
class DistilBertAdapter(BertAdapter):
    gguf_arch = gguf.MODEL_ARCH.BERT
    description = "DistilBERT sentence encoders (msmarco-distilbert): WordPiece vocab, no token types"
    config_defaults = {**BertAdapter.config_defaults, "type_vocab_size": 1}
    act_keys = ("activation", "hidden_act")

    def __init__(self, ckpt, hf_arch: str) -> None:
        # the layer count is the one fact whose DistilBERT key the shared reader does not
        # know; the others (n_heads, dim, hidden_dim) it reads as they are
        layers = ckpt.config.get("n_layers")
        if layers is not None and "num_hidden_layers" not in ckpt.config:
            ckpt.config = {**ckpt.config, "num_hidden_layers": layers}
        super().__init__(ckpt, hf_arch)

    def skip(self, hf_name: str) -> bool:
        return hf_name.startswith("vocab_") or super().skip(hf_name)

    def gguf_name(self, hf_name: str) -> Optional[str]:
        return super().gguf_name(hf_name.removeprefix("distilbert."))

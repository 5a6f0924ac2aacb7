"""RoBERTa and XLM-RoBERTa encoders (all-distilroberta, multilingual-e5,
paraphrase-multilingual): GGUF arch `bert`.

The BERT graph with two differences, both as llama.cpp's converter handles them:
- RoBERTa numbers positions from pad_token_id + 1 (position 0 of a text reads row 2 of the
  table when the pad id is 1); llama.cpp numbers them from 0, so the first pad_token_id + 1
  rows are dropped and the context length shrinks by as many.
- The vocabulary: XLM-RoBERTa's Unigram (SentencePiece) one, run by llama.cpp's "t5"
  tokenizer (ugm_vocab.py); RoBERTa's byte-level BPE, run by its BPE tokenizer.
The *ForMaskedLM classes keep the encoder under `roberta.` beside the `lm_head.`.
"""

from __future__ import annotations

from typing import Optional

import gguf

from ..errors import FormatError
from ..source.source_tensor import SourceTensor
from . import ARCHS
from .bert import BertAdapter
from .transforms import rows


@ARCHS.register("XLMRobertaModel", "XLMRobertaForMaskedLM", "RobertaModel", "RobertaForMaskedLM")
class XLMRobertaAdapter(BertAdapter):
    gguf_arch = gguf.MODEL_ARCH.BERT
    description = ("RoBERTa / XLM-RoBERTa sentence encoders (all-distilroberta, multilingual-e5): "
                   "byte-level BPE or Unigram vocab, positions from pad_token_id + 1")
    config_defaults = {**BertAdapter.config_defaults, "layer_norm_eps": 1e-5, "type_vocab_size": 1,
                       "pad_token_id": 1}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        self.offset = self.hp.integer("pad_token_id", lo=0, hi=1 << 24) + 1
        if self.offset >= self.n_ctx:
            raise FormatError(f"{self.hp.source}: pad_token_id {self.offset - 1} leaves no position rows of "
                              f"max_position_embeddings {self.n_ctx}")
        self.n_positions = self.n_ctx  # rows stored; llama.cpp's context is what remains
        self.n_ctx -= self.offset

    def skip(self, hf_name: str) -> bool:
        return hf_name.startswith(("lm_head.", "roberta.pooler.")) or super().skip(hf_name)

    def gguf_name(self, hf_name: str) -> Optional[str]:
        return super().gguf_name(hf_name.removeprefix("roberta."))

    def source_tensors(self, name: str, hf_name: str, h) -> list[SourceTensor]:
        if name != "position_embd.weight" or h.shape[0] != self.n_positions:
            return super().source_tensors(name, hf_name, h)  # a wrong row count is reported by tensors()
        return [SourceTensor(name, hf_name, (h.shape[0] - self.offset, *h.shape[1:]), h.dtype, h,
                             [rows(self.offset, h.shape[0])])]

"""BERT-family sentence encoders (all-MiniLM, bge, e5...): GGUF arch `bert`.

What differs from a decoder, and why:
- llama.cpp runs the encoder without a causal mask and pools the final states itself,
  by the mode the sentence-transformers config names (source/pooling.py); with no
  modules.json no pooling is written, as llama.cpp's converter does.
- LayerNorm with biases (`layer_norm_epsilon`), learned absolute positions
  (`position_embd`, as many rows as the context) and token-type embeddings
  (`token_types`; llama.cpp adds row 0, "sentence A", to every token). No rope.
- The pooler (a tanh Dense sentence-transformers never uses) and the masked-LM / NSP
  heads (`cls.*`) are not part of the embedding model and are left out, as llama.cpp's
  converter does. BertForMaskedLM keeps its encoder under `bert.`.
- Old checkpoints name LayerNorm parameters gamma/beta.
"""

from __future__ import annotations

from typing import Optional

import gguf

from ..errors import FormatError, UnsupportedError
from ..source.pooling import read_pooling
from . import ARCHS
from .base import ArchAdapter

# hidden_act values whose function llama.cpp's bert graph computes (GELU; the tanh
# approximation it uses differs from erf-GELU by < 1e-3, far inside a 0.999 cosine)
GELU = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_NOT_ENCODER = ("pooler.", "cls.", "bert.pooler.")


@ARCHS.register("BertModel", "BertForMaskedLM")
class BertAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.BERT
    description = "BERT sentence encoders (all-MiniLM, bge, e5): WordPiece vocab, sentence-transformers pooling"
    norm = "layer"
    skip_suffixes = ("position_ids",)
    config_defaults = {"layer_norm_eps": 1e-12, "hidden_act": "gelu", "type_vocab_size": 2,
                       "position_embedding_type": "absolute"}
    act_keys: tuple[str, ...] = ("hidden_act",)  # the config keys naming the activation

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        key, act = hp.find(*self.act_keys)
        if act not in GELU:
            raise UnsupportedError(f"{hp.source}: {key} {act!r}; llama.cpp's bert graph computes GELU")
        pos = hp.get("position_embedding_type")
        if pos != "absolute":
            raise UnsupportedError(f"{hp.source}: position_embedding_type {pos!r}; llama.cpp's bert graph "
                                   "adds learned absolute positions only")
        self.n_token_types = hp.integer("type_vocab_size", lo=1, hi=1 << 16)
        self.n_ctx = hp.integer("max_position_embeddings", lo=1, hi=1 << 24)  # the position_embd rows
        self.pooling = read_pooling(ckpt.dir)  # read now: a bad sentence-transformers config fails a dry run

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        hp = self.hp
        w.add_block_count(hp.n_layers)
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(hp.n_embd)
        w.add_feed_forward_length(hp.n_ff)
        w.add_head_count(hp.n_head)
        w.add_layer_norm_eps(hp.norm_eps)
        w.add_causal_attention(False)
        w.add_token_type_count(self.n_token_types)
        if self.pooling is not None:
            w.add_pooling_type(self.pooling.kind)

    def tensors(self):
        out = super().tensors()
        # llama.cpp sizes these two tables by the metadata written from the config
        rows = {"position_embd.weight": ("max_position_embeddings", self.n_ctx),
                "token_types.weight": ("type_vocab_size", self.n_token_types)}
        for t in out:
            if t.name in rows and t.shape[0] != rows[t.name][1]:
                key, n = rows[t.name]
                raise FormatError(f"{self.hp.source}: {key} is {n}, but tensor {t.hf_name} has {t.shape[0]} rows; "
                                  "the config does not match the weights")
        return out

    @staticmethod
    def _encoder_name(hf_name: str) -> str:
        name = hf_name.removeprefix("bert.")
        if name.endswith(".gamma"):
            return name[: -len("gamma")] + "weight"
        if name.endswith(".beta"):
            return name[: -len("beta")] + "bias"
        return name

    def skip(self, hf_name: str) -> bool:
        return hf_name.startswith(_NOT_ENCODER) or hf_name.endswith(self.skip_suffixes)

    def gguf_name(self, hf_name: str) -> Optional[str]:
        return super().gguf_name(self._encoder_name(hf_name))

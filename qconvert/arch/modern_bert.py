"""ModernBERT encoders: GGUF arch `modern-bert`.

What differs from BERT, and why:
- Pre-norm layers with bias-free LayerNorm (`norm_eps`), fused q/k/v (`Wqkv` ->
  attn_qkv) and a fused GeGLU input (`Wi`: 2 x intermediate_size rows -> ffn_up; llama.cpp
  splits the halves itself). Layer 0 has no attention norm (an identity in HF).
- Rope (NEOX, HF's rotate-half order: no permutation) with one base for global layers and
  another for local ones (`rope.freq_base_swa`).
- Local layers attend within a symmetric window: HF lets a token see positions at most
  local_attention // 2 away, as llama.cpp's symmetric mask does for n_swa = local_attention.
  Every `global_attn_every_n_layers`-th layer, starting at 0, is global: llama.cpp's default
  for this architecture, so the per-layer pattern is written only when it differs.
- A byte-level BPE vocabulary with [CLS] ... [SEP] added around every text.
- The masked-LM head (`head.*`, `decoder.*`) is not part of the embedding model.
"""

from __future__ import annotations

from typing import Optional

import gguf

from ..errors import FormatError, UnsupportedError
from ..source.pooling import read_pooling
from . import ARCHS
from .base import ArchAdapter

DEFAULT_PERIOD = 3  # llama.cpp's and transformers' global_attn_every_n_layers
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "silu")


@ARCHS.register("ModernBertModel", "ModernBertForMaskedLM")
class ModernBertAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.MODERN_BERT
    description = "ModernBERT encoders: alternating local/global attention, sentence-transformers pooling"
    norm = "layer"
    shape_overrides = {"ffn_up.weight": ("F2", "E")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        for flag in ("norm_bias", "attention_bias", "mlp_bias"):
            if hp.get(flag):
                raise UnsupportedError(f"{hp.source}: {flag} is true; llama.cpp's modern-bert graph has no biases")
        self.act = hp.get("hidden_activation", default="gelu")
        if self.act not in ACTIVATIONS:
            raise UnsupportedError(f"{hp.source}: hidden_activation {self.act!r}; llama.cpp's modern-bert graph "
                                   f"runs {', '.join(ACTIVATIONS)}")
        self.eps = hp.number("norm_eps", lo=0.0, hi=0.5, default=1e-5)
        self.window = hp.integer("local_attention", lo=2, hi=1 << 24, default=128)
        self.n_ctx = hp.integer("max_position_embeddings", lo=1, hi=2**32 - 1)
        self.sliding = self._sliding()
        self.theta, self.theta_swa = self._rope_bases()
        self.pooling = read_pooling(ckpt.dir)

    def _sliding(self) -> list[bool]:
        n, types = self.hp.n_layers, self.hp.get("layer_types")
        if types is not None:
            if not isinstance(types, list) or len(types) != n or \
                    any(t not in ("sliding_attention", "full_attention") for t in types):
                raise FormatError(f"{self.hp.source}: layer_types should list {n} entries, each "
                                  "sliding_attention or full_attention")
            return [t == "sliding_attention" for t in types]
        period = self.hp.integer("global_attn_every_n_layers", lo=1, hi=1 << 16, default=DEFAULT_PERIOD)
        return [i % period != 0 for i in range(n)]

    def _rope_bases(self) -> tuple[float, float]:
        """(global, local) rope bases: 5.x rope_parameters keyed by layer type, else 4.x
        global_rope_theta / local_rope_theta (ModernBertConfig's defaults)."""
        hp = self.hp
        if hp.has_rope_layer_types():
            full, local = hp.rope("full_attention"), hp.rope("sliding_attention")
            for rp in (full, local):
                if (rp.get("rope_type") or "default").lower() != "default":
                    raise UnsupportedError(f"{hp.source}: rope type {rp['rope_type']!r}; llama.cpp's "
                                           "modern-bert graph applies plain rope")
            return float(full.get("rope_theta", 160000.0)), float(local.get("rope_theta", 10000.0))
        return (hp.number("global_rope_theta", default=160000.0),
                hp.number("local_rope_theta", default=10000.0))

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        hp = self.hp
        w.add_block_count(hp.n_layers)
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(hp.n_embd)
        w.add_feed_forward_length(hp.n_ff)
        w.add_head_count(hp.n_head)
        w.add_layer_norm_eps(self.eps)
        w.add_causal_attention(False)
        w.add_vocab_size(hp.vocab_size)
        w.add_rope_freq_base(self.theta)
        w.add_string(f"{self.arch_name}.hidden_activation", self.act)
        if self.pooling is not None:
            w.add_pooling_type(self.pooling.kind)
        if any(self.sliding):
            w.add_sliding_window(self.window)
            w.add_rope_freq_base_swa(self.theta_swa)
            if self.sliding != [i % DEFAULT_PERIOD != 0 for i in range(hp.n_layers)]:
                w.add_sliding_window_pattern(self.sliding)

    def skip(self, hf_name: str) -> bool:
        return hf_name.startswith(("head.", "decoder.")) or super().skip(hf_name)

    def gguf_name(self, hf_name: str) -> Optional[str]:
        return super().gguf_name(hf_name.removeprefix("model."))

"""OLMo 2 and OLMo 3 (`Olmo2ForCausalLM`, `Olmo3ForCausalLM`): GGUF arch `olmo2`.

Post-norm blocks (the norms follow attention and the MLP: `post_attention_norm`,
`post_ffw_norm`; there is no input norm) and q/k RMS-normalised over all heads at once, so
`attn_q_norm` is as wide as q, not one head. NEOX rope: nothing permuted. OLMo 3 adds
sliding-window layers (three of every four, llama.cpp's built-in period). llama.cpp runs
those with the global rope base and no scaling, and needs a separate output matrix."""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .layer_kinds import SlidingWindow
from .scalars import Scalar
from .transforms import ROPE_PERMUTE

PERIOD = 4  # OLMo 3's default pattern and llama.cpp's built-in one


@ARCHS.register("Olmo2ForCausalLM", "Olmo3ForCausalLM")
class Olmo2Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.OLMO2
    description = "OLMo 2 / OLMo 3: post-norm blocks, q/k norms over all heads, OLMo 3's sliding-window layers"
    shape_overrides = {"attn_q_norm.weight": ("Q",), "attn_k_norm.weight": ("KV",), "attn_output.weight": ("E", "E")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise UnsupportedError(f"{hp.source}: head_dim {hp.head_dim} x {hp.n_head} heads != hidden_size "
                                   f"{hp.n_embd}; llama.cpp's olmo2 graph splits the hidden size evenly")
        if hp.tied_embeddings:
            raise UnsupportedError(f"{hp.source}: tie_word_embeddings is true; llama.cpp's olmo2 graph needs "
                                   "its own output matrix")
        self.swa = SlidingWindow.read(hp, PERIOD) if hf_arch.lower().startswith("olmo3") else None
        if self.swa is not None and any(self.swa.layers):
            self._check_sliding_rope()

    def _check_sliding_rope(self) -> None:
        hp = self.hp
        local, full = hp.rope("sliding_attention"), hp.rope("full_attention")
        if (local.get("rope_type") or "default").lower() != "default" or \
                local.get("rope_theta") != full.get("rope_theta"):
            raise UnsupportedError(f"{hp.source}: sliding layers' rope differs from plain rope with the global "
                                   "base; llama.cpp's olmo2 graph cannot express it")

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        if self.swa is not None:
            self.swa.write(w, PERIOD, swa_by_default=False)


@ARCHS.register("OlmoForCausalLM")  # lookups ignore case: OLMoForCausalLM too
class OlmoAdapter(ArchAdapter):
    """OLMo 1 (and 1.7): a Llama layout (q/k permuted for llama.cpp's rope) whose
    LayerNorms have no weights at all and a fixed epsilon of 1e-5 that the config does
    not state; `clip_qkv` clamps q, k and v."""

    gguf_arch = gguf.MODEL_ARCH.OLMO
    description = "OLMo 1 / 1.7: weightless LayerNorms, optional q/k/v clamp"
    tensor_rules = ROPE_PERMUTE
    scalars = (Scalar(("clip_qkv",), gguf.Keys.Attention.CLAMP_KQV),)

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        w.add_layer_norm_eps(1e-5)  # OlmoLayerNorm's, hard-coded in transformers

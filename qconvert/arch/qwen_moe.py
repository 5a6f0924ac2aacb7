"""Qwen 3 MoE and Qwen 2 MoE (Qwen1.5-MoE, Qwen2-57B-A14B): GGUF archs `qwen3moe`, `qwen2moe`.

Attention is Qwen 3's / Qwen 2's (NEOX rope, no q/k permutation; per-head q/k norms or
q/k/v biases through the standard name map); the feed-forward block of every layer is
routed experts (arch/moe.py stacks them). Routing is softmax over all experts, then the
top k. What llama.cpp's graphs fix, and we therefore check in the config:
- qwen3moe renormalises the top-k weights to sum to 1: `norm_topk_prob` must be true
  (it is in every released Qwen3 MoE); qwen2moe never does: it must be false.
- both build experts in every layer: `decoder_sparse_step` 1 and no `mlp_only_layers`.
Qwen 2 MoE adds a shared expert, always on, scaled by sigmoid(shared_expert_gate . x):
`ffn_{gate,up,down}_shexp` and `ffn_gate_inp_shexp` (kept (1, n_embd): llama.cpp reads
it as its {n_embd} vector)."""

from __future__ import annotations

import gguf

from . import ARCHS
from .moe import MoEAdapter


class _QwenMoE(MoEAdapter):
    normalises_top_k = True

    def check_routing(self) -> None:
        hp = self.hp
        norm = self.flag("norm_topk_prob", False)
        if norm != self.normalises_top_k:
            raise self.refuse(f"norm_topk_prob is {str(norm).lower()} (the top-k routing weights "
                              f"{'are not' if not norm else 'are'} renormalised)")
        step = hp.integer("decoder_sparse_step", lo=1, hi=1 << 16, default=1)
        only = hp.get("mlp_only_layers") or []
        if step != 1 or only:
            raise self.refuse("some layers are dense (decoder_sparse_step / mlp_only_layers)")


@ARCHS.register("Qwen3MoeForCausalLM")
class Qwen3MoEAdapter(_QwenMoE):
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
    description = "Qwen3 MoE (30B-A3B, 235B-A22B): routed experts stacked per layer, top-k renormalised"


@ARCHS.register("Qwen2MoeForCausalLM")
class Qwen2MoEAdapter(_QwenMoE):
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE
    description = "Qwen1.5-MoE, Qwen2-57B-A14B: routed experts plus a sigmoid-gated shared expert"
    normalises_top_k = False

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        self.n_ff_shexp = hp.integer("shared_expert_intermediate_size", lo=1, hi=1 << 22)
        # llama.cpp's qwen2moe loader sizes q and attn_output as n_embd x n_embd
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise self.refuse(f"head_dim {hp.head_dim} x {hp.n_head} heads != hidden_size {hp.n_embd}")

    def write_moe_metadata(self, w) -> None:
        w.add_expert_shared_feed_forward_length(self.n_ff_shexp)

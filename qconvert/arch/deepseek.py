"""DeepSeek-V3 style models (DeepseekV3ForCausalLM: DeepSeek-V3/R1, Kimi-K2 and kin):
GGUF arch `deepseek2`.

Attention is multi-head latent attention (MLA): q through a low-rank pair (q_a_proj,
q_a_layernorm, q_b_proj), keys and values from one compressed vector per token
(kv_a_proj_with_mqa -> [kv_lora_rank | qk_rope_head_dim], kv_a_layernorm, kv_b_proj).
llama.cpp runs it in absorbed form, as its converter prepares it:
- kv_b_proj (n_head x (qk_nope + v_head), kv_lora) is split per head into
  attn_k_b (n_head, kv_lora, qk_nope) -- transposed -- and attn_v_b (n_head, v_head, kv_lora);
- the GGUF says one KV head (MQA over the latent vector): key length kv_lora + rope dims,
  value length kv_lora, and the per-head sizes in the *_mla keys.
Rope covers qk_rope_head_dim dimensions in adjacent pairs: HF's `rope_interleave` (its
default) is what llama.cpp's graph computes; a config without it is refused.

Feed-forward: the first `first_k_dense_replace` layers are dense; the others have routed
experts (stacked, arch/moe.py) and `n_shared_experts` shared ones (ffn_*_shexp). Routing is
sigmoid scores; the choice adds `e_score_correction_bias` (exp_probs_b), is limited to
`topk_group` of `n_group` expert groups (ranked by their two best scores), and the chosen
experts' scores (without the bias) are renormalised when `norm_topk_prob` and scaled by
`routed_scaling_factor`: llama.cpp's gating func SIGMOID, expert groups, weights norm and
weights scale. Multi-token-prediction layers (index >= num_hidden_layers) are left out,
as llama.cpp's converter leaves them."""

from __future__ import annotations

import re
from typing import Optional

import gguf
import numpy as np

from ..errors import FormatError
from ..source.source_tensor import SourceTensor
from . import ARCHS
from .moe import MoEAdapter

# model.layers.N. (at most 9 digits, as shape_check reads them)
_LAYER = re.compile(r"(?:^|\.)layers\.(\d{1,9})\.")


@ARCHS.register("DeepseekV3ForCausalLM")
class DeepseekV3Adapter(MoEAdapter):
    gguf_arch = gguf.MODEL_ARCH.DEEPSEEK2
    description = ("DeepSeek-V3/R1 style: MLA attention (kv_b split into k_b/v_b), sigmoid-routed experts "
                   "with score bias and groups, shared experts, leading dense layers")
    expert_count_keys = ("n_routed_experts",)
    # transformers' DeepseekV3Config defaults, for keys a config.json may leave out
    config_defaults = {"rope_interleave": True, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
                       "n_group": 1, "topk_group": 1, "first_k_dense_replace": 0, "n_shared_experts": 0}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        big = 1 << 16
        self.q_lora = hp.integer("q_lora_rank", lo=1, hi=big, default=None)
        self.kv_lora = hp.integer("kv_lora_rank", lo=1, hi=big)
        self.nope = hp.integer("qk_nope_head_dim", lo=1, hi=big)
        self.rope_dim = hp.integer("qk_rope_head_dim", lo=2, hi=big)
        self.v_dim = hp.integer("v_head_dim", lo=1, hi=big)
        self.n_dense = hp.integer("first_k_dense_replace", lo=0, hi=hp.n_layers)
        self.n_shared = hp.integer("n_shared_experts", lo=0, hi=big)
        self.n_group = hp.integer("n_group", lo=1, hi=self.n_expert)
        self.topk_group = hp.integer("topk_group", lo=1, hi=self.n_group)
        self.scale = hp.number("routed_scaling_factor", lo=0.0, hi=1e6)
        self.norm_top_k = self.flag("norm_topk_prob", True)
        if self.q_lora is None:
            raise self.refuse("q_lora_rank is unset (a full q_proj, DeepSeek-V2-Lite style)")
        if not self.flag("rope_interleave", True):
            raise self.refuse("rope_interleave is false (rope over the two halves of the rope dims)")
        if self.rope_dim % 2:
            raise FormatError(f"{hp.source}: qk_rope_head_dim {self.rope_dim} is odd; rope rotates pairs")
        if self.n_expert % self.n_group:
            raise FormatError(f"{hp.source}: n_routed_experts {self.n_expert} is not a multiple of "
                              f"n_group {self.n_group}")
        # the only per-head size of the standard shape table a DeepSeek tensor meets is the
        # input of attn_output, n_head x v_head_dim (shape_check.py); head_dim in a
        # DeepseekV3Config is the rope size, which that table must not use
        hp.c["head_dim"] = self.v_dim

    # -- metadata -----------------------------------------------------------------------
    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        hp = self.hp
        w.add_block_count(hp.n_layers)
        if hp.context_length is not None:
            w.add_context_length(hp.context_length)
        w.add_embedding_length(hp.n_embd)
        w.add_feed_forward_length(hp.n_ff)
        w.add_head_count(hp.n_head)
        w.add_head_count_kv(1)  # MQA over the compressed KV vector
        eps = hp.norm_eps
        w.add_layer_norm_rms_eps(eps if eps is not None else 1e-6)
        w.add_vocab_size(hp.vocab_size)
        w.add_leading_dense_block_count(self.n_dense)
        w.add_q_lora_rank(self.q_lora)
        w.add_kv_lora_rank(self.kv_lora)
        w.add_key_length(self.kv_lora + self.rope_dim)
        w.add_value_length(self.kv_lora)
        w.add_key_length_mla(self.nope + self.rope_dim)
        w.add_value_length_mla(self.v_dim)
        w.add_rope_dimension_count(self.rope_dim)
        self.write_rope(w)
        mscale = self.hp.rope().get("mscale_all_dim")
        if mscale is not None:
            # llama.cpp's deepseek2 loader divides this key by 0.1 (its converter's convention)
            w.add_rope_scaling_yarn_log_mul(0.1 * float(mscale))
        self.write_expert_metadata(w)

    def write_moe_metadata(self, w: gguf.GGUFWriter) -> None:
        w.add_expert_shared_count(self.n_shared)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        if self.scale is not None and self.scale != 1.0:
            w.add_expert_weights_scale(self.scale)
        if self.norm_top_k:
            w.add_expert_weights_norm(True)
        if self.n_group > 1:
            w.add_expert_group_count(self.n_group)
            w.add_expert_group_used_count(self.topk_group)

    # -- tensors --------------------------------------------------------------------------
    def skip(self, hf_name: str) -> bool:
        m = _LAYER.search(hf_name)
        return (m is not None and int(m.group(1)) >= self.hp.n_layers) or super().skip(hf_name)

    def gguf_name(self, hf_name: str) -> Optional[str]:
        if hf_name.endswith("e_score_correction_bias"):
            base = self.name_map.get_name(hf_name[: -len("_bias")])
            return None if base is None else base + ".bias"
        return super().gguf_name(hf_name)

    def source_tensors(self, name: str, hf_name: str, h) -> list[SourceTensor]:
        if not name.endswith("attn_kv_b.weight"):
            return super().source_tensors(name, hf_name, h)
        n_head, nope, v, rank = self.hp.n_head, self.nope, self.v_dim, self.kv_lora
        want = (n_head * (nope + v), rank)
        if tuple(h.shape) != want:
            raise FormatError(f"{self.hp.source}: tensor {hf_name} has shape {list(h.shape)}, but "
                              f"num_attention_heads {n_head} x (qk_nope_head_dim {nope} + v_head_dim {v}) and "
                              f"kv_lora_rank {rank} imply {list(want)}; the config does not match the weights")
        blk = name[: -len("attn_kv_b.weight")]

        def k_b(w: np.ndarray) -> np.ndarray:  # per head: the nope rows, transposed
            return np.ascontiguousarray(w.reshape(n_head, nope + v, rank)[:, :nope, :].transpose(0, 2, 1))

        def v_b(w: np.ndarray) -> np.ndarray:  # per head: the value rows
            return np.ascontiguousarray(w.reshape(n_head, nope + v, rank)[:, nope:, :])

        return [SourceTensor(blk + "attn_k_b.weight", hf_name, (n_head, rank, nope), h.dtype, h, [k_b]),
                SourceTensor(blk + "attn_v_b.weight", hf_name, (n_head, v, rank), h.dtype, h, [v_b])]

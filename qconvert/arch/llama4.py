"""Llama 4 text (Llama4ForCausalLM, and the language model of Llama4ForConditionalGeneration,
the form Scout and Maverick are published in; the vision tower is left out): GGUF arch
`llama4`.

- Experts are stored stacked and transposed (`feed_forward.experts.gate_up_proj`
  (n, hidden, 2 x ff), `down_proj` (n, ff, hidden)); arch/moe.py splits gate from up and
  writes them expert by expert. Every `interleave_moe_layer_step`-th layer is MoE (routed
  experts, top-k by router logit, sigmoid weights applied to the input, plus a shared
  expert); the others are dense MLPs `intermediate_size_mlp` wide, while
  `intermediate_size` is one expert's width (llama.cpp's converter swaps the two likewise).
- Rope rotates adjacent pairs in HF (complex multiplication) as in llama.cpp's graph: no
  q/k permutation. Llama 3.1-style rope scaling becomes the rope_freqs table.
- What llama.cpp hard-codes and we therefore check in the config: every 4th layer without
  rope and with global attention, the others rope'd with attention in chunks of 8192
  tokens; the attention temperature tuning of rope-less layers (floor 8192, scale 0.1); the
  per-head q/k RMS norm on rope'd layers for every expert count but 128 (Maverick's
  has none). A config where every layer is global gets sliding_window 0, which llama.cpp
  reads as "no chunks, rope everywhere"."""

from __future__ import annotations

import gguf

from . import ARCHS
from .moe import MoEAdapter

CHUNK, FLOOR, SCALE, NO_ROPE_STEP = 8192, 8192, 0.1, 4


@ARCHS.register("Llama4ForCausalLM", "Llama4ForConditionalGeneration")
class Llama4Adapter(MoEAdapter):
    gguf_arch = gguf.MODEL_ARCH.LLAMA4
    description = ("Llama 4 text (Scout, Maverick; the language model of the multimodal checkpoints): "
                   "stacked transposed experts split into gate/up, interleaved MoE layers with a shared "
                   "expert, chunked attention, rope-less every 4th layer")
    # the multimodal checkpoints (what Meta publishes): language_model.model.* beside
    # vision_model.* and multi_modal_projector.*, the text facts under text_config
    text_part = True
    expert_count_keys = ("num_local_experts",)
    expert_ff_keys = ("intermediate_size",)
    fused_transposed = True
    config_defaults = {"interleave_moe_layer_step": 1, "attention_chunk_size": CHUNK, "attn_temperature_tuning": True,
                       "floor_scale": FLOOR, "attn_scale": SCALE, "use_qk_norm": True}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        n = hp.n_layers
        self.step = hp.integer("interleave_moe_layer_step", lo=1, hi=n)
        self.all_global = self._check_layers(n)
        # the dense layers' width is intermediate_size_mlp: what feed_forward_length and
        # the ffn_gate/up/down shape checks must read (n_ff_exp already holds the expert width)
        hp.c["intermediate_size"] = hp.integer("intermediate_size_mlp", lo=1, hi=1 << 22)

    def _check_layers(self, n: int) -> bool:
        hp = self.hp
        moe = hp.get("moe_layers")
        if moe is not None and sorted(moe) != [i for i in range(n) if (i + 1) % self.step == 0]:
            raise self.refuse(f"moe_layers {moe} are not every interleave_moe_layer_step ({self.step})-th layer")
        types = hp.get("layer_types")
        if types is not None and all(t == "full_attention" for t in types):
            return True
        want = [(i + 1) % NO_ROPE_STEP != 0 for i in range(n)]  # True: rope'd, chunked
        rope = hp.get("no_rope_layers")
        if rope is not None and [bool(x) for x in rope] != want:
            raise self.refuse("no_rope_layers is not every 4th layer without rope")
        if types is not None and types != ["chunked_attention" if r else "full_attention" for r in want]:
            raise self.refuse("layer_types is not 3 chunked layers then 1 global")
        for key, fixed in (("attention_chunk_size", CHUNK), ("floor_scale", FLOOR), ("attn_scale", SCALE)):
            v = hp.number(key, lo=0.0, hi=1e9)
            if v != fixed:
                raise self.refuse(f"{key} is {v:g}, llama.cpp fixes it to {fixed:g}")
        if not self.flag("attn_temperature_tuning", True):
            raise self.refuse("attn_temperature_tuning is off")
        if self.flag("use_qk_norm", True) != (self.n_expert != 128):
            raise self.refuse(f"use_qk_norm is {str(self.flag('use_qk_norm', True)).lower()} with "
                              f"{self.n_expert} experts (llama.cpp norms q/k unless there are 128)")
        return False

    def skip(self, hf_name: str) -> bool:
        return hf_name.startswith("vision_model.") or super().skip(hf_name)

    def write_moe_metadata(self, w: gguf.GGUFWriter) -> None:
        w.add_interleave_moe_layer_step(self.step)
        if self.all_global:
            w.add_sliding_window(0)

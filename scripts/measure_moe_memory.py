"""Peak memory of converting a mixture-of-experts checkpoint, for several expert counts of
the same expert size: it should stay flat, since the writer holds one expert's slab (and
its encoding) at a time, never a layer's stack (source/expert_stack.py), and of a large
expert only a slice of rows (source/row_chunks.py).

Writes synthetic bf16 checkpoints (one shard per layer) in one of three layouts:

    per-expert   Qwen3-MoE, one 2-D weight per expert and projection (Qwen3, DeepSeek, Mixtral)
    stacked      Qwen3-MoE as transformers 5 stores it: experts.gate_up_proj (n, 2 x ff, hidden)
    llama4       Llama 4 (Scout, Maverick): gate_up_proj (n, hidden, 2 x ff), stacked and transposed

converts each with qconvert.quantize in a fresh child process and prints its peak RSS next
to the size of one expert's gate_up as float32 (what reading an expert whole holds), one
whole stack and the checkpoint.

    python scripts/measure_moe_memory.py [--layout llama4] [--experts 8 32 128] [--hidden 512] [--ff 512]
                                         [--type Q4_K_M]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from measure_memory import peak_rss_of  # noqa: E402


def make_moe_checkpoint(d: Path, n_expert: int, hidden: int, layers: int, vocab: int, ff: int = 0,
                        layout: str = "per-expert") -> int:
    """A MoE checkpoint in d (experts ff wide, default as wide as the model) in `layout`;
    returns its bytes."""
    import numpy as np

    from synthetic_checkpoint import write_bf16_safetensors, write_spm_tokenizer

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ff = ff or hidden
    head = 64
    kv = hidden // 2
    llama4 = layout == "llama4"
    (d / "config.json").write_text(json.dumps(_llama4_config(n_expert, hidden, ff, layers, vocab) if llama4 else
                                              _qwen3_config(n_expert, hidden, ff, layers, vocab)))
    shards = [{"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
               "model.norm.weight": (hidden,)}]
    for i in range(layers):
        p = f"model.layers.{i}."
        t = {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
             p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
             p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)}
        if llama4:
            f = p + "feed_forward."
            t.update({f + "router.weight": (n_expert, hidden),
                      f + "experts.gate_up_proj": (n_expert, hidden, 2 * ff),
                      f + "experts.down_proj": (n_expert, ff, hidden),
                      f + "shared_expert.gate_proj.weight": (ff, hidden),
                      f + "shared_expert.up_proj.weight": (ff, hidden),
                      f + "shared_expert.down_proj.weight": (hidden, ff)})
        else:
            t.update({p + "self_attn.q_norm.weight": (head,), p + "self_attn.k_norm.weight": (head,),
                      p + "mlp.gate.weight": (n_expert, hidden)})
        if layout == "stacked":
            t[p + "mlp.experts.gate_up_proj"] = (n_expert, 2 * ff, hidden)
            t[p + "mlp.experts.down_proj"] = (n_expert, hidden, ff)
        elif layout == "per-expert":
            for e in range(n_expert):
                t[f"{p}mlp.experts.{e}.gate_proj.weight"] = (ff, hidden)
                t[f"{p}mlp.experts.{e}.up_proj.weight"] = (ff, hidden)
                t[f"{p}mlp.experts.{e}.down_proj.weight"] = (hidden, ff)
        shards.append(t)
    weight_map, total = {}, 0
    for k, tensors in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_bf16_safetensors(d / fname, tensors, rng)
        for name, shape in tensors.items():
            weight_map[name] = fname
            total += int(np.prod(shape)) * 2
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": weight_map}))
    write_spm_tokenizer(d)
    return total


def _qwen3_config(n_expert: int, hidden: int, ff: int, layers: int, vocab: int) -> dict:
    head = 64
    return dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_size=hidden,
                intermediate_size=hidden * 2, moe_intermediate_size=ff, num_experts=n_expert,
                num_experts_per_tok=2, norm_topk_prob=True, num_hidden_layers=layers,
                num_attention_heads=hidden // head, num_key_value_heads=hidden // head // 2, head_dim=head,
                vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e6,
                tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)


def _llama4_config(n_expert: int, hidden: int, ff: int, layers: int, vocab: int) -> dict:
    """Every layer MoE (interleave step 1) with a shared expert; every 4th layer global and
    rope-less, as llama.cpp's llama4 graph hard-codes."""
    head = 64
    return dict(architectures=["Llama4ForCausalLM"], model_type="llama4_text", hidden_size=hidden,
                intermediate_size=ff, intermediate_size_mlp=2 * ff, num_local_experts=n_expert,
                num_experts_per_tok=1, interleave_moe_layer_step=1, moe_layers=list(range(layers)),
                num_hidden_layers=layers, num_attention_heads=hidden // head, num_key_value_heads=hidden // head // 2,
                head_dim=head, vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, attention_chunk_size=8192,
                attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1, use_qk_norm=True,
                no_rope_layers=[int((i + 1) % 4 != 0) for i in range(layers)],
                layer_types=["chunked_attention" if (i + 1) % 4 else "full_attention" for i in range(layers)],
                tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=["per-expert", "stacked", "llama4"], default="per-expert")
    ap.add_argument("--experts", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--ff", type=int, default=0, help="one expert's FFN width (default: --hidden)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--type", default="Q4_K_M")
    a = ap.parse_args()
    ff = a.ff or a.hidden
    slab = 2 * ff * a.hidden * 4  # one expert's gate_up as float32
    base = peak_rss_of("import qconvert.pipeline, qconvert.kernels as k\n"
                       "for t in ('Q8_0', 'Q4_K', 'Q5_K', 'Q6_K'): k.kernel(t)")
    print(f"layout {a.layout}: one expert's gate_up ({2 * ff}x{a.hidden}) as float32: {slab / 2**20:,.1f} MiB; "
          f"peak RSS of importing qconvert and its kernels: {base / 2**20:,.1f} MiB")
    print(f"{'experts':>8} {'checkpoint':>12} {'one stack f32':>14} {'wall':>6} {'peak RSS':>10} {'minus import':>13}")
    for n in a.experts:
        with tempfile.TemporaryDirectory() as td:
            d = Path(td) / "model"
            # made in a child: Linux carries a process's peak RSS across fork and exec
            total = int(subprocess.run(
                [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                 "from measure_moe_memory import make_moe_checkpoint as m; from pathlib import Path;"
                 "print(m(Path(sys.argv[2]), *map(int, sys.argv[3:8]), layout=sys.argv[8]))",
                 str(Path(__file__).parent), str(d), str(n), str(a.hidden), str(a.layers), str(a.vocab), str(ff),
                 a.layout], check=True, capture_output=True, text=True).stdout.split()[-1])
            t = time.time()
            conv = peak_rss_of(f"import qconvert\nqconvert.quantize({str(d)!r}, "
                               f"{str(Path(td) / 'out.gguf')!r}, type={a.type!r})")
            wall = time.time() - t
            print(f"{n:>8} {total / 2**20:>9,.1f}MiB {n * slab / 2**20:>11,.1f}MiB {wall:>5.0f}s "
                  f"{conv / 2**20:>7,.1f}MiB {(conv - base) / 2**20:>10,.1f}MiB")


if __name__ == "__main__":
    main()

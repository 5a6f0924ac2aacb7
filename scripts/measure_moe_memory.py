"""Peak memory of converting a mixture-of-experts checkpoint, for several expert counts of
the same expert size: it should stay flat, since the writer holds one expert's slab (and
its encoding) at a time, never a layer's stack (source/expert_stack.py).

Writes synthetic Qwen3-MoE-shaped bf16 checkpoints (one shard per layer), converts each
with qconvert.quantize in a fresh child process and prints its peak RSS next to the size
of one expert slab, one whole stack (what loading a stack would cost, as float32) and the
checkpoint.

    python scripts/measure_moe_memory.py [--experts 8 32 128] [--hidden 512] [--type Q4_K_M]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from measure_memory import peak_rss_of  # noqa: E402


def make_moe_checkpoint(d: Path, n_expert: int, hidden: int, layers: int, vocab: int) -> int:
    """A Qwen3-MoE-shaped checkpoint in d (experts as wide as the model); returns its bytes."""
    import numpy as np

    from synthetic_checkpoint import write_bf16_safetensors, write_spm_tokenizer

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    head = 64
    cfg = dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_size=hidden,
               intermediate_size=hidden * 2, moe_intermediate_size=hidden, num_experts=n_expert,
               num_experts_per_tok=2, norm_topk_prob=True, num_hidden_layers=layers,
               num_attention_heads=hidden // head, num_key_value_heads=hidden // head // 2, head_dim=head,
               vocab_size=vocab, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e6,
               tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    (d / "config.json").write_text(json.dumps(cfg))
    kv = hidden // 2
    shards = [{"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
               "model.norm.weight": (hidden,)}]
    for i in range(layers):
        p = f"model.layers.{i}."
        t = {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
             p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
             p + "self_attn.q_norm.weight": (head,), p + "self_attn.k_norm.weight": (head,),
             p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
             p + "mlp.gate.weight": (n_expert, hidden)}
        for e in range(n_expert):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                t[f"{p}mlp.experts.{e}.{proj}.weight"] = (hidden, hidden)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--type", default="Q4_K_M")
    a = ap.parse_args()
    slab = a.hidden * a.hidden * 4  # one expert's weight as float32
    base = peak_rss_of("import qconvert.pipeline, qconvert.kernels as k\n"
                       "for t in ('Q8_0', 'Q4_K', 'Q5_K', 'Q6_K'): k.kernel(t)")
    print(f"expert slab {a.hidden}x{a.hidden} as float32: {slab / 1e6:.1f} MB; "
          f"peak RSS of importing qconvert and its kernels: {base / 1e6:.1f} MB")
    print(f"{'experts':>8} {'checkpoint':>12} {'one stack f32':>14} {'peak RSS':>10} {'minus import':>13}")
    for n in a.experts:
        with tempfile.TemporaryDirectory() as td:
            d = Path(td) / "model"
            # made in a child: Linux carries a process's peak RSS across fork and exec
            total = int(subprocess.run(
                [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                 "from measure_moe_memory import make_moe_checkpoint as m; from pathlib import Path;"
                 "print(m(Path(sys.argv[2]), *map(int, sys.argv[3:])))",
                 str(Path(__file__).parent), str(d), str(n), str(a.hidden), str(a.layers), str(a.vocab)],
                check=True, capture_output=True, text=True).stdout.split()[-1])
            conv = peak_rss_of(f"import qconvert\nqconvert.quantize({str(d)!r}, "
                               f"{str(Path(td) / 'out.gguf')!r}, type={a.type!r})")
            print(f"{n:>8} {total / 1e6:>10.1f}MB {n * slab / 1e6:>12.1f}MB {conv / 1e6:>8.1f}MB "
                  f"{(conv - base) / 1e6:>11.1f}MB")


if __name__ == "__main__":
    main()

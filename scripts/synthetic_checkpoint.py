"""A Llama-shaped bf16 checkpoint of any size, sharded one decoder layer per shard,
with a small SentencePiece tokenizer, for benchmarks and memory measurements. Random
weights: fine for timing and memory, meaningless for quality."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


class Pool:
    """Normal(0, 0.02) bf16 values for very large checkpoints: one pool of 8M draws, each
    slice a window of it at a random offset. Drawing 7 billion values one by one takes most
    of an hour on 2 cores; timing and memory do not need them independent."""

    SIZE = 1 << 23

    def __init__(self, rng) -> None:
        self.rng = rng
        bits = (rng.standard_normal(self.SIZE, dtype=np.float32) * 0.02).view(np.uint32) >> 16
        self.bits = np.concatenate([bits, bits]).astype(np.uint16)

    def take(self, n: int) -> np.ndarray:
        start = int(self.rng.integers(self.SIZE))
        return self.bits[start:start + n]


def write_bf16_safetensors(path: Path, tensors: dict[str, tuple[int, ...]], rng, pool: Pool | None = None) -> None:
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for shape in tensors.values():
            # made a slice of rows at a time: a 16384 x 128256 embedding never in memory whole
            rows = shape[0] if len(shape) > 1 else 1
            per = max(1, (8 << 20) // max(1, int(np.prod(shape)) // rows))
            for r in range(0, rows, per):
                part = (min(per, rows - r), *shape[1:]) if len(shape) > 1 else shape
                if pool is not None and int(np.prod(part)) <= Pool.SIZE:
                    f.write(pool.take(int(np.prod(part))).tobytes())
                    continue
                x = (rng.standard_normal(part, dtype=np.float32) * 0.02).view(np.uint32)
                f.write((x >> 16).astype(np.uint16).tobytes())


def write_spm_tokenizer(d: Path, vocab: int = 1000) -> None:
    import sentencepiece as spm
    from pydoc_data.topics import topics

    text = d / "_spm_train.txt"
    text.write_text("\n".join(topics[k] for k in sorted(topics))[:400_000])
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(d / "tokenizer"), vocab_size=vocab,
                                   model_type="bpe", byte_fallback=True, bos_id=1, eos_id=2, unk_id=0,
                                   num_threads=2, minloglevel=2)
    text.unlink()
    (d / "tokenizer.vocab").unlink()
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
         "tokenizer_class": "LlamaTokenizer"}))


def make_checkpoint(d: Path, layers: int = 24, hidden: int = 1024, vocab: int = 32000, ff: int | None = None,
                    kv: int | None = None, pooled: bool = False) -> tuple[int, int]:
    """Write the checkpoint into d; return (largest tensor bytes, total tensor bytes).
    ff (feed-forward width) defaults to 2.75 x hidden, kv (rows of k and of v; heads are 64
    wide) to hidden / 4. The tensor shapes of Llama-3-8B: hidden 4096, ff 14336, kv 1024,
    vocab 128256; of Llama-3.1-405B: hidden 16384, ff 53248, kv 1024, vocab 128256. `pooled`:
    values from a `Pool` (fast; for checkpoints of many GB)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ff = ff or hidden * 11 // 4 // 256 * 256
    kv = kv or hidden // 4
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=hidden,
               intermediate_size=ff, num_hidden_layers=layers, num_attention_heads=hidden // 64,
               num_key_value_heads=kv // 64, vocab_size=vocab, max_position_embeddings=4096,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
               bos_token_id=1, eos_token_id=2)
    (d / "config.json").write_text(json.dumps(cfg))
    shards = [{"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
               "model.norm.weight": (hidden,)}]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                       p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (ff, hidden), p + "mlp.up_proj.weight": (ff, hidden),
                       p + "mlp.down_proj.weight": (hidden, ff), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    weight_map, largest, total = {}, 0, 0
    pool = Pool(rng) if pooled else None
    for k, tensors in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_bf16_safetensors(d / fname, tensors, rng, pool)
        for name, shape in tensors.items():
            weight_map[name] = fname
            n = int(np.prod(shape)) * 2
            largest, total = max(largest, n), total + n
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": weight_map}))
    write_spm_tokenizer(d)
    return largest, total

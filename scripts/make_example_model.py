"""Train the bundled example model: a tiny Llama with grouped-query attention.

    python scripts/make_example_model.py [--out examples/tiny-llama] [--steps N] [--quick]
    python scripts/make_example_model.py --shape narrow --out /tmp/narrow-llama

`--shape narrow` trains a second model shaped like SmolLM-135M in miniature: row widths that
are multiples of 32 but not of 256 (hidden 192, like 576), an FFN width that is a multiple of
256 (512, like 1536, in the same 8:3 ratio), 3 query heads per KV head, tied embeddings. Its
K-quant presets fall back to Q5_0/Q8_0 on most matrices, as they do on real 135M-class models.

The result is a real Hugging Face checkpoint (config.json, generation_config.json,
model.safetensors in bfloat16, tokenizer.json, tokenizer_config.json,
special_tokens_map.json, README.md) small enough to live in the repository, so tests and
examples can convert, quantize and run a model that has learned something.

Everything is deterministic on CPU: the corpus is the pydoc topic texts and the standard
library's docstrings that ship with CPython (qconvert.calib.corpus.training_documents); the
tokenizer and the model see only that training text, never the held-out topics,
the RNG is seeded, and torch runs on 2 threads with deterministic algorithms.
The output directory is replaced on every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before tokenizers is imported

import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qconvert.calib import corpus  # noqa: E402
from qconvert.source.pretokenizer_table import LLAMA3  # noqa: E402

SEED = 1234
VOCAB_SIZE = 2048
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, IM_START, IM_END]  # ids 0..3

# The pre-tokenizer regex llama.cpp applies for tokenizer.ggml.pre "llama-bpe", as llama.cpp
# spells it (case pairs instead of Meta's (?i:...), which llama.cpp's regex engine lacks), so a
# GGUF made from this tokenizer splits text exactly as the HF tokenizer does.
LLAMA3_PRETOKENIZER_REGEX = LLAMA3

# ChatML.  BOS is written by the template because apply_chat_template tokenizes without
# adding special tokens (the same convention as Llama 3's template).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MODEL_SHAPE = dict(
    hidden_size=256,  # every row width a multiple of 256, so k-quant super-blocks fit
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention: 2 query heads per KV head
    head_dim=64,
    max_position_embeddings=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)

# SmolLM-135M in miniature (576 / 1536, 9 heads / 3 KV heads of 64, tied): every width but the
# FFN's is a multiple of 32 and not of 256, so Q4_K/Q6_K fall back to Q5_0/Q8_0 there.
NARROW_SHAPE = dict(
    MODEL_SHAPE,
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=6,
    num_attention_heads=3,
    num_key_value_heads=1,
    tie_word_embeddings=True,
)

SHAPES = {"tiny": MODEL_SHAPE, "narrow": NARROW_SHAPE}


# ----------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE with the Llama-3 pre-tokenizer, trained on `texts`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PRETOKENIZER_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # llama.cpp's llama-bpe sets ignore_merges: a pre-token that is itself in the vocab is
    # taken whole before any merge is tried.  Match it, or rare words could split differently.
    tok.model.ignore_merges = True
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS}:0 $A:0",
            pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
            special_tokens=[(BOS, bos_id)],
        ),
    ])
    return tok


def save_tokenizer(tok: Tokenizer, out: Path) -> PreTrainedTokenizerFast:
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out)
    # Written by hand because transformers versions disagree on which of these keys they keep.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        bos_token=BOS, eos_token=EOS, pad_token=EOS,
        add_bos_token=True, add_eos_token=False,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
        tokenizer_class="PreTrainedTokenizerFast",
    )
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
               "additional_special_tokens": [IM_START, IM_END]}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return hf


def token_stream(tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    """Each document as BOS + tokens + EOS, concatenated (the post-processor adds BOS)."""
    eos_id = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


# ----------------------------------------------------------------------------- model

def make_model(tok: Tokenizer, shape: dict = MODEL_SHAPE) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(EOS),
        hidden_act="silu",
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
        **shape,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(model: LlamaForCausalLM, stream: torch.Tensor, steps: int, batch: int, seq: int,
          peak_lr: float) -> float:
    gen = torch.Generator().manual_seed(SEED)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr, betas=(0.9, 0.95),
    )
    warmup = max(1, min(50, steps // 10))
    model.train()
    smooth = None
    t0 = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen)
        x = torch.stack([stream[s: s + seq] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr, warmup)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  (smoothed {smooth:.3f})  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  {time.time() - t0:5.0f}s", flush=True)
    return smooth


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, stream: torch.Tensor, seq: int = 256) -> float:
    """Mean next-token loss (nats/token) over consecutive non-overlapping windows."""
    model.eval()
    total, count = 0.0, 0
    n = (len(stream) - 1) // seq
    windows = stream[: n * seq].view(n, seq)
    for chunk in windows.split(16):
        logits = model(input_ids=chunk).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += chunk[:, 1:].numel()
    return total / count


# ----------------------------------------------------------------------------- model card

def write_card(out: Path, facts: dict, shape: dict = MODEL_SHAPE) -> None:
    s = shape
    name = "tiny-llama" if shape is MODEL_SHAPE else out.name
    (out / "README.md").write_text(f"""# {name} (qconvert example model)

A {facts['params'] / 1e6:.1f}M-parameter `LlamaForCausalLM` with grouped-query attention, made by
`scripts/make_example_model.py{'' if shape is MODEL_SHAPE else ' --shape narrow'}` so that qconvert's tests and examples have a real, trained
checkpoint to convert.  It writes English-looking Python-manual prose; it knows nothing else.

| field | value |
|---|---|
| layers / hidden / intermediate | {s['num_hidden_layers']} / {s['hidden_size']} / {s['intermediate_size']} |
| attention heads / KV heads / head_dim | {s['num_attention_heads']} / {s['num_key_value_heads']} / {s['head_dim']} |
| vocab | {facts['vocab']} (byte-level BPE) |
| context, RoPE theta, RMSNorm eps | 512, 10000, 1e-5 |
| tied embeddings | {'yes' if s['tie_word_embeddings'] else 'no'} |
| weights | bfloat16, `model.safetensors` |

## Data

The pydoc topic texts that ship with CPython ({facts['python']}), `pydoc_data.topics.topics`,
and the docstrings of the pure-Python standard library (one document per module file, read
with `ast`), split by whole topic or file with a stable rule (`qconvert/calib/corpus.py`):
`sha256(b"qconvert:" + key)`, first 8 bytes big-endian, mod 10: 0 is *evaluation*,
1 is *calibration*, the rest *train*.  Topics and docstrings quote each other, so training
text loses every paragraph of 40+ characters that also occurs in a held-out document.  The
training text is the train topics plus the train split's docstrings ({facts['docstring_files']}
module files, `corpus.training_documents`; a docstring paragraph holding a
held-out paragraph is dropped).  Tokenizer and model saw only that text
({facts['train_chars']:,} characters, {facts['train_tokens']:,} tokens); evaluation has
{facts['eval_chars']:,} characters ({facts['eval_tokens']:,} tokens).

## Tokenizer

Byte-level BPE trained with `tokenizers` on the train split, all 256 bytes in the initial
alphabet.  Pre-tokenizer: `Split` with the regex llama.cpp uses for `llama-bpe`
(LLAMA_VOCAB_PRE_TYPE_LLAMA3), behaviour "isolated", then `ByteLevel` without prefix space
or its own regex; `ignore_merges` is on, as in llama.cpp's llama-bpe.  BOS is added to
every sequence.  Special tokens: `<|begin_of_text|>` (BOS), `<|end_of_text|>` (EOS, also
PAD), `<|im_start|>`, `<|im_end|>`; ChatML chat template.

## Training

AdamW (betas 0.9/0.95, weight decay 0.1), peak LR {facts['lr']}, warm-up then cosine decay,
{facts['steps']} steps of {facts['batch']} random windows of {facts['seq']} tokens, float32 on
{facts['threads']} CPU threads, seed {SEED}: {facts['seconds']:.0f} s of wall time on the machine that
made this copy (a few minutes on two otherwise idle cores; far longer on a busy one).
Training sees {facts['epochs']:.2f} epochs of its text, too few for a 4M-parameter model to
memorise 400k tokens: the loss on the held-out evaluation split (topics and module files it
never saw) stays within {facts['eval_loss_f32'] - facts['train_loss']:.2f} nats of the train loss, so
perplexity differences between quantized variants reflect what the quantization lost.

| loss (nats/token) | value |
|---|---|
| train, smoothed, last step (float32) | {facts['train_loss']:.3f} |
| evaluation split (float32) | {facts['eval_loss_f32']:.3f} |
| evaluation split (bfloat16, as saved) | {facts['eval_loss_bf16']:.3f} |
""")


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                    help="tiny: the bundled example (widths of 256); narrow: SmolLM-like widths that K-quants do not fit")
    ap.add_argument("--out", type=Path, help="default: examples/tiny-llama (--shape tiny), examples/narrow-llama")
    ap.add_argument("--steps", type=int, default=800)  # ~3.9 epochs of the training text
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--quick", action="store_true", help="a few steps only, to test this script")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (1 wastes less on a machine busy with other work)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = 5
    shape = SHAPES[args.shape]
    if args.out is None:
        args.out = Path(__file__).resolve().parents[1] / "examples" / f"{args.shape}-llama"

    threads = args.threads
    torch.manual_seed(SEED)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)

    train_texts = [t for _, t in corpus.training_documents()]
    eval_texts = [t for _, t in corpus.split_documents("evaluation")]
    tok = train_tokenizer(train_texts)
    train_stream = token_stream(tok, train_texts)
    eval_stream = token_stream(tok, eval_texts)
    print(f"vocab {tok.get_vocab_size()}, train {len(train_stream)} tokens, eval {len(eval_stream)} tokens")

    model = make_model(tok, shape)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f}M parameters")
    t0 = time.time()
    train_loss = train(model, train_stream, args.steps, args.batch, args.seq, args.lr)
    seconds = time.time() - t0
    eval_f32 = mean_loss(model, eval_stream)
    model = model.to(torch.bfloat16)
    eval_bf16 = mean_loss(model, eval_stream)
    print(f"trained in {seconds:.0f}s: train {train_loss:.3f}, eval {eval_f32:.3f} (f32) {eval_bf16:.3f} (bf16)")

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = model.config
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
    write_card(out, dict(
        params=params, vocab=tok.get_vocab_size(), python=sys.version.split()[0],
        train_chars=sum(map(len, train_texts)), train_tokens=len(train_stream),
        eval_chars=sum(map(len, eval_texts)), eval_tokens=len(eval_stream),
        docstring_files=len(corpus.training_documents()) - len(corpus.split_documents("train")),
        epochs=args.steps * args.batch * args.seq / len(train_stream),
        lr=args.lr, steps=args.steps, batch=args.batch, seq=args.seq, threads=threads,
        seconds=seconds, train_loss=train_loss, eval_loss_f32=eval_f32, eval_loss_bf16=eval_bf16,
    ), shape)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>10,}  {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time qconvert's importance statistics against llama.cpp's forward pass over the same tokens.

    python scripts/bench_calibration.py [--windows 128] [--seqlen 512] [--threads 2] [--workdir DIR]

The model: a random Llama checkpoint of SmolLM-135M's shape (30 layers, hidden 576, ffn 1536,
9 heads / 3 KV heads of 64, vocab 49152, bf16; scripts/synthetic_checkpoint.py), and its BF16
GGUF written by qconvert.  Timings are for statistics, not quality, so it need not be trained.

Columns:
  qconvert    collect_importance: the layer-wise transformers pass with x^2 sums (what
              `quantize --calibration` runs), windows of `seqlen` tokens, torch on N threads;
              tokenizing the text and loading the model included, as on the other side
  llama.cpp   the same windows through llama.cpp (llama-cpp-python, open_llama), n_batch =
              n_ubatch = seqlen, logits for every position, N threads: the work llama-imatrix
              does per chunk (its statistics are a sum over each matrix product's input on
              top, so this is a lower bound on llama-imatrix's time)
  ratio       qconvert / llama.cpp (below 1: qconvert faster), for wall and process CPU time
              (CPU time is the fairer figure when other programs share the cores)

Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
SHAPE = dict(layers=30, hidden=576, vocab=49152, ff=1536, kv=192)  # SmolLM-135M's widths


def checkpoint(workdir: Path) -> tuple[Path, Path]:
    """The random checkpoint and its BF16 GGUF, made once per workdir."""
    from synthetic_checkpoint import make_checkpoint

    model = workdir / "llama-135m"
    if not (model / "config.json").exists():
        make_checkpoint(model, **SHAPE)
        # the example model's byte-level BPE (2048 ids, all below the vocab) instead of the
        # SentencePiece model, which transformers 5 will not load without tiktoken
        for f in ("tokenizer.model", "tokenizer_config.json"):
            (model / f).unlink(missing_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(EXAMPLE / f, model / f)
    gguf = workdir / "llama-135m-bf16.gguf"
    if not gguf.exists():
        subprocess.run([sys.executable, "-m", "qconvert", "quantize", str(model), "-t", "BF16", "-o", str(gguf),
                        "--no-progress"], check=True)
    return model, gguf


def text_file(workdir: Path) -> Path:
    from qconvert.calib import corpus

    p = workdir / "calibration.txt"
    if not p.exists():
        p.write_text("\n\n".join(t for _, t in corpus.training_documents()), encoding="utf-8")
    return p


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_qconvert(model: Path, text: Path, windows: int, seqlen: int):
    from qconvert.calib.collect import collect_importance

    return timed(lambda: collect_importance(model, text_file=text, n_samples=windows, seqlen=seqlen,
                                            device="cpu", show_progress=False))


def run_llama_cpp(model: Path, gguf: Path, text: Path, windows: int, seqlen: int, threads: int):
    from transformers import AutoTokenizer

    from qconvert.calib.text import calibration_samples
    from qconvert.eval.llama_model import open_llama

    def all_windows():  # tokenizing and loading included, as in qconvert's figure
        samples = calibration_samples(AutoTokenizer.from_pretrained(str(model)), text_file=text,
                                      n_samples=windows, seqlen=seqlen)
        llm = open_llama(gguf, n_ctx=seqlen, n_batch=seqlen, n_ubatch=seqlen, logits_all=True,
                         n_threads=threads, n_threads_batch=threads)
        for ids in samples:
            llm.reset()
            llm.eval(ids.tolist())

    return timed(all_windows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_calibration"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model, gguf = checkpoint(args.workdir)
    text = text_file(args.workdir)
    _, qw, qc = run_qconvert(model, text, args.windows, args.seqlen)
    _, lw, lc = run_llama_cpp(model, gguf, text, args.windows, args.seqlen, args.threads)
    print(f"{args.windows} windows x {args.seqlen} tokens, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    print(f"{'':10} {'wall s':>8} {'cpu s':>8}")
    print(f"{'qconvert':10} {qw:8.1f} {qc:8.1f}")
    print(f"{'llama.cpp':10} {lw:8.1f} {lc:8.1f}")
    print(f"{'ratio':10} {qw / lw:8.2f} {qc / lc:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

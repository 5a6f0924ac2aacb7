"""HF bf16 checkpoint -> GGUF: qconvert in one pass versus llama.cpp's converter
(convert_hf_to_gguf.py; for K-quant presets followed by llama.cpp's quantizer, through
llama-cpp-python's llama_model_quantize, which is what llama-quantize runs), same machine,
same threads, one run. For each checkpoint and type it prints wall time and peak RSS of
both, their ratios, and GB/s of bf16 input; optionally (--check-bytes) whether both files
hold the same tensor bytes.

Default checkpoints: Llama-3-8B-shaped (hidden 4096, ff 14336, kv 1024, vocab 128256)
with 2 and 8 layers, made by scripts/synthetic_checkpoint.py (random bf16 weights):

    python scripts/bench_convert.py                      # 2 and 8 layers, Q8_0 and Q4_K_M
    python scripts/bench_convert.py --layers 1 --hidden 16384 --ff 53248 --types Q8_0 \\
        --no-llama-cpp                                   # 405B-shaped layer + full embedding

Peak RSS is the child's maximum resident set (GNU time's %M); each tool runs in its own
child. numba's cache is warmed first (a small model, the same types), so compile time is
not in the figures; `--cold` also times one conversion with an empty NUMBA_CACHE_DIR.
llama.cpp's converter is not a Python package: --llama-cpp DIR is a source tree (default:
/work/src/llama.cpp, or the vendor/llama.cpp of an unpacked llama-cpp-python sdist).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_checkpoint import make_checkpoint  # noqa: E402

@dataclass
class Run:
    seconds: float
    peak: int  # bytes
    cpu: float = 0.0  # user + system seconds: what the run cost when other programs share the cores


def measured(cmd: list[str], env=None) -> Run:
    """Wall time and peak RSS of one child process (GNU time)."""
    fmt = "QCBENCH %e %M %U %S"
    r = subprocess.run(["/usr/bin/time", "-f", fmt, *cmd], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    line = next((ln for ln in r.stderr.splitlines() if ln.startswith("QCBENCH ")), None)
    if r.returncode != 0 or line is None:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    _, sec, kib, user, sys_ = line.split()
    return Run(float(sec), int(kib) * 1024, float(user) + float(sys_))


def qconvert_cmd(model: Path, out: Path, type_name: str) -> list[str]:
    return [sys.executable, "-m", "qconvert", "quantize", str(model), "-o", str(out), "--type", type_name,
            "--no-progress", "--force"]


def llama_cpp(src: Path, model: Path, td: Path, type_name: str, threads: int) -> tuple[Run, Path]:
    """llama.cpp's way to `type_name`: Q8_0/F16/BF16 straight from the converter, a K-quant
    preset through a BF16 intermediate and the quantizer."""
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    conv = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model)]
    if type_name.upper() in ("Q8_0", "F16", "BF16"):
        out = td / f"llama-{type_name}.gguf"
        return measured(conv + ["--outfile", str(out), "--outtype", type_name.lower()], env), out
    inter = td / "llama-bf16.gguf"
    a = measured(conv + ["--outfile", str(inter), "--outtype", "bf16"], env)
    out = td / f"llama-{type_name}.gguf"
    code = ("import ctypes, sys, llama_cpp as l\n"
            "p = l.llama_model_quantize_default_params()\n"
            f"p.ftype = l.LLAMA_FTYPE_MOSTLY_{type_name.upper()}\np.nthread = {threads}\n"
            "sys.exit(l.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))")
    b = measured([sys.executable, "-c", code, str(inter), str(out)])
    inter.unlink()
    return Run(a.seconds + b.seconds, max(a.peak, b.peak), a.cpu + b.cpu), out


def same_tensors(a: Path, b: Path) -> tuple[int, int]:
    from gguf import GGUFReader

    ra, rb = GGUFReader(a), GGUFReader(b)
    tb = {t.name: t for t in rb.tensors}
    same = 0
    for t in ra.tensors:
        u = tb.get(t.name)
        if u is not None and u.tensor_type == t.tensor_type and np.array_equal(
                np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8)):
            same += 1
    return same, len(ra.tensors)


def llama_src(given: Path | None) -> Path | None:
    cands = [given] if given else [Path("/work/src/llama.cpp"),
                                   *map(Path, sorted(Path("/tmp").glob("llama-src/*/vendor/llama.cpp")))]
    return next((c for c in cands if c and (c / "convert_hf_to_gguf.py").exists()), None)


def warm(types: list[str], td: Path, env) -> None:
    tiny = td / "warm-model"
    make_checkpoint(tiny, layers=1, hidden=256, vocab=512)
    for t in types:
        measured(qconvert_cmd(tiny, td / "warm.gguf", t), env)
    shutil.rmtree(tiny)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-cpp", type=Path, default=None, help="llama.cpp source tree")
    ap.add_argument("--no-llama-cpp", action="store_true", help="qconvert only")
    ap.add_argument("--model", type=Path, default=None, help="an HF model dir instead of synthetic ones")
    ap.add_argument("--layers", default="2,8", help="comma-separated layer counts of the synthetic checkpoints")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ff", type=int, default=14336)
    ap.add_argument("--kv", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--types", default="Q8_0,Q4_K_M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="where checkpoints and outputs go (default: /tmp)")
    ap.add_argument("--check-bytes", action="store_true", help="compare the tensor bytes of both outputs")
    ap.add_argument("--cold", action="store_true", help="also time a first run with an empty numba cache")
    ap.add_argument("--pooled", action="store_true", help="synthetic weights from one pool of draws (fast to make)")
    a = ap.parse_args()
    src = None if a.no_llama_cpp else llama_src(a.llama_cpp)
    if not a.no_llama_cpp and src is None:
        raise SystemExit("give --llama-cpp DIR (a llama.cpp source tree with convert_hf_to_gguf.py) or --no-llama-cpp")
    types = a.types.split(",")
    qenv = dict(os.environ, NUMBA_NUM_THREADS=str(a.threads))
    with tempfile.TemporaryDirectory(dir=a.workdir) as td:
        td = Path(td)
        warm(types, td, qenv)
        models = [(a.model, None)] if a.model else [(td / f"model-{n}", int(n)) for n in a.layers.split(",")]
        print(f"{a.threads} threads; qconvert chunk {os.environ.get('QCONVERT_CHUNK_MB', '16')} MiB; "
              f"llama.cpp: {src or '-'}")
        print(f"{'model':>22} {'type':>7} | {'qconvert':>9} {'peak RSS':>9} {'GB/s':>5} | {'llama.cpp':>9} "
              f"{'peak RSS':>9} {'GB/s':>5} | {'wall qc/ll':>10} {'RSS qc/ll':>9} {'cpu s qc/ll':>13}"
              + ("  bytes" if a.check_bytes else ""))
        for model, layers in models:
            if layers is not None:
                _, total = make_checkpoint(model, layers=layers, hidden=a.hidden, vocab=a.vocab, ff=a.ff,
                                           kv=a.kv, pooled=a.pooled)
                label = f"{layers}L h{a.hidden} ({total / 1e9:.1f} GB)"
            else:
                total = sum(f.stat().st_size for f in model.glob("*.safetensors"))
                label = f"{model.name} ({total / 1e9:.1f} GB)"
            for t in types:
                ours = td / f"qc-{t}.gguf"
                if a.cold:
                    cold_env = dict(qenv, NUMBA_CACHE_DIR=str(td / "cold-cache"))
                    c = measured(qconvert_cmd(model, ours, t), cold_env)
                    shutil.rmtree(td / "cold-cache", ignore_errors=True)
                q = measured(qconvert_cmd(model, ours, t), qenv)
                line = f"{label:>22} {t:>7} | {q.seconds:8.1f}s {q.peak / 2**20:7.0f}Mi {total / 1e9 / q.seconds:5.2f} |"
                if src is not None:
                    ll, theirs = llama_cpp(src, model, td, t, a.threads)
                    line += (f" {ll.seconds:8.1f}s {ll.peak / 2**20:7.0f}Mi {total / 1e9 / ll.seconds:5.2f} |"
                             f" {q.seconds / ll.seconds:9.2f}x {q.peak / ll.peak:8.2f}x {q.cpu:6.0f}/{ll.cpu:<6.0f}")
                    if a.check_bytes:
                        same, n = same_tensors(ours, theirs)
                        line += f"  {same}/{n}"
                    theirs.unlink()
                if a.cold:
                    line += f"  (first run, empty numba cache: {c.seconds:.1f}s)"
                print(line, flush=True)
                ours.unlink()
            if layers is not None:
                shutil.rmtree(model)


if __name__ == "__main__":
    main()

"""HF bf16 checkpoint -> Q4_K_M GGUF: qconvert in one pass versus llama.cpp's two steps
(convert_hf_to_gguf.py to a full-size intermediate GGUF, then llama.cpp's quantizer via
llama-cpp-python's llama_model_quantize), same machine, same 2 threads, one run. Also
checks that both files hold byte-identical tensor data.

llama.cpp's converter is not a Python package: point --llama-cpp at a llama.cpp source
tree, e.g. the one inside the llama-cpp-python sdist:
    pip download --no-binary :all: --no-deps llama-cpp-python -d /tmp/sd && tar xzf /tmp/sd/*.tar.gz -C /tmp/sd
    python scripts/bench_convert.py --llama-cpp /tmp/sd/llama_cpp_python-*/vendor/llama.cpp
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_checkpoint import make_checkpoint  # noqa: E402


def timed(cmd: list[str], env=None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def llama_quantize(src: Path, dst: Path, ftype_name: str, threads: int) -> float:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    params.nthread = threads
    t = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc})")
    return time.perf_counter() - t


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", type=Path, default=None, help="llama.cpp source tree")
    ap.add_argument("--model", type=Path, default=None, help="HF model dir (default: synthetic Llama)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    src = a.llama_cpp or next(iter(sorted(glob.glob("/tmp/llama-src/*/vendor/llama.cpp"))), None)
    if src is None or not (Path(src) / "convert_hf_to_gguf.py").exists():
        raise SystemExit("give --llama-cpp DIR (a llama.cpp source tree with convert_hf_to_gguf.py)")
    src = Path(src)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               PYTHONPATH=str(src / "gguf-py"))
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        model = a.model
        if model is None:
            model = td / "model"
            make_checkpoint(model, layers=a.layers, hidden=a.hidden)
        ours = td / "ours.gguf"
        qenv = dict(os.environ, NUMBA_NUM_THREADS=str(a.threads))
        # warm numba's on-disk cache so the timed run measures conversion, not compilation
        timed([sys.executable, "-m", "qconvert", "quantize", str(model), "-o", str(td / "warm.gguf"),
               "--type", a.type, "--no-progress"], env=qenv)
        t_ours = timed([sys.executable, "-m", "qconvert", "quantize", str(model), "-o", str(ours),
                        "--type", a.type, "--no-progress"], env=qenv)
        inter = td / "inter-bf16.gguf"
        t_conv = timed([sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outfile", str(inter),
                        "--outtype", "bf16"], env=env)
        theirs = td / "theirs.gguf"
        t_q = llama_quantize(inter, theirs, a.type, a.threads)
        same, n = same_tensors(ours, theirs)
        total = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        print(f"model: {model} ({total / 1e6:.0f} MB bf16), target {a.type}, {a.threads} threads")
        print(f"qconvert, one pass:                 {t_ours:7.2f} s")
        print(f"llama.cpp convert (bf16 GGUF):      {t_conv:7.2f} s  (intermediate file {inter.stat().st_size / 1e6:.0f} MB)")
        print(f"llama.cpp quantize:                 {t_q:7.2f} s")
        print(f"llama.cpp total:                    {t_conv + t_q:7.2f} s")
        print(f"ratio llama.cpp / qconvert:         {(t_conv + t_q) / t_ours:7.2f} x")
        print(f"byte-identical tensors:             {same}/{n}")


if __name__ == "__main__":
    main()

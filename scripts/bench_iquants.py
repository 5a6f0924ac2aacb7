"""Time the i-quant encoders (and the importance paths of Q4_0 ... Q5_1) against llama.cpp's,
on one float32 matrix (default 512 x 4096), same threads, one run.

Columns:
  imp          "yes": random per-column importance (llama-quantize's imatrix path), "no": none
  qconvert     kernels.encode (numba, prange over blocks), timed after a warm-up call so
               compilation and the one-time grid tables are excluded (llama.cpp's too)
  llama.cpp/N  ggml_quantize_chunk through ctypes (tests/ggml_oracle.py) split into N row
               ranges on N Python threads (ctypes drops the GIL), i.e. the same cores
  ratio        qconvert / llama.cpp wall time (below 1: qconvert faster)
  cpu ratio    the same for process CPU time (meaningful when other programs share the cores)
  bytes        whether the two outputs are identical

Run: python scripts/bench_iquants.py [--types IQ4_XS,IQ3_S] [--threads 2] [--rows 512]
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _threads_from_argv(default: int = 2) -> int:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return default


# numba reads its thread count once, at import: set it before anything imports numba
os.environ["NUMBA_NUM_THREADS"] = str(_threads_from_argv())

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from qconvert import kernels  # noqa: E402

TYPES = "IQ4_NL,IQ4_XS,IQ3_XXS,IQ3_S,IQ2_XXS,IQ2_XS,IQ2_S,IQ1_S,IQ1_M,Q4_0,Q4_1,Q5_0,Q5_1"


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def llama_threaded(ggml_quantize, name, x, imatrix, n_threads):
    parts = np.array_split(x, n_threads, axis=0)
    with ThreadPoolExecutor(n_threads) as pool:
        outs = list(pool.map(lambda p: ggml_quantize(name, p, imatrix), parts))
    return np.concatenate(outs, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numba

    from ggml_oracle import ggml_quantize

    n = args.threads
    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (args.rows, args.cols)) * 0.02).astype(np.float32)
    imatrix = (rng.random(args.cols) ** 3 * 10).astype(np.float32)
    print(f"matrix {x.shape} float32, numba threads {numba.get_num_threads()}, llama.cpp threads {n}, one run")
    print(f"{'type':8} {'imp':>3} {'qconvert':>9} {f'llama.cpp/{n}':>11} {'ratio':>7} {'cpu ratio':>9}  bytes")
    for name in args.types.split(","):
        uses = [True] if name in kernels.REQUIRES_IMPORTANCE else [False, True]
        for with_imp in uses:
            imp = np.broadcast_to(imatrix, x.shape) if with_imp else None
            # warm-up: numba compiles (or loads its cache) and both sides build their grid tables
            kernels.encode(name, x[:8], importance=None if imp is None else imp[:8])
            ggml_quantize(name, x[:8], imatrix if with_imp else None)
            t_qc, c_qc, q = timed(lambda: kernels.encode(name, x, importance=imp))
            t_l, c_l, q_l = timed(lambda: llama_threaded(ggml_quantize, name, x, imatrix if with_imp else None, n))
            same = np.array_equal(q.reshape(-1), q_l.reshape(-1))
            print(f"{name:8} {'yes' if with_imp else 'no':>3} {t_qc * 1e3:7.0f}ms {t_l * 1e3:9.0f}ms"
                  f" {t_qc / t_l:6.2f}x {c_qc / c_l:8.2f}x  {'equal' if same else 'DIFFER'}", flush=True)


if __name__ == "__main__":
    main()

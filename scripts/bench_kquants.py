"""Time the K-quant encoders (Q2_K .. Q6_K), qconvert against llama.cpp, plain and with
importance weights, on one weight-like float32 matrix (Student-t, 0.02 scale).

Columns, same input, same thread count (default 1):
  qconvert     numba kernel (timed after a warm-up call, so compilation is excluded)
  llama.cpp    ggml_quantize_chunk through ctypes (tests/ggml_oracle.py), the rows split
               into N ranges on N Python threads (ctypes drops the GIL during the call)
"cpu" columns give process CPU time (all threads summed), which stays meaningful when
other programs share the cores; each side is timed `--repeat` times, alternating, and the
best of each is kept. The last column says whether qconvert's bytes equal llama.cpp's.

Run: python scripts/bench_kquants.py [--types Q4_K,Q6_K] [--threads 1] [--rows 512]
     [--cols 4096] [--importance no,yes] [--repeat 3]
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _threads_from_argv(default: int = 1) -> int:
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


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def llama_threaded(ggml_quantize, name, x, imatrix, n_threads):
    if n_threads == 1:
        return ggml_quantize(name, x, imatrix)
    parts = np.array_split(x, n_threads, axis=0)
    with ThreadPoolExecutor(n_threads) as pool:
        outs = list(pool.map(lambda p: ggml_quantize(name, p, imatrix), parts))
    return np.concatenate(outs, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_K,Q6_K,Q5_K,Q3_K,Q2_K")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--importance", default="no,yes", help="no, yes or no,yes")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import numba

    from ggml_oracle import ggml_quantize

    n = args.threads
    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (args.rows, args.cols)) * 0.02).astype(np.float32)
    imatrix = (rng.random(args.cols) ** 3 * 10).astype(np.float32)
    print(f"matrix {x.shape} float32, numba threads {numba.get_num_threads()}, llama.cpp threads {n},"
          f" best of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'type':6} {'imp':>3} {'qconvert':>9} {'(cpu)':>8} {'llama.cpp':>9} {'(cpu)':>8}"
          f" {'wall ratio':>10} {'cpu ratio':>9}  bytes")
    for name in args.types.split(","):
        for with_imp in [s.strip() == "yes" for s in args.importance.split(",")]:
            imat = imatrix if with_imp else None
            imp = np.broadcast_to(imatrix, x.shape) if with_imp else None
            # warm-up: numba compiles (or loads its cache)
            kernels.encode(name, x[:8], importance=None if imp is None else imp[:8])
            ggml_quantize(name, x[:8], imat)
            best = {"qc": [float("inf")] * 2, "ll": [float("inf")] * 2}
            for _ in range(args.repeat):
                t, c, q = timed(lambda: kernels.encode(name, x, importance=imp))
                best["qc"] = [min(best["qc"][0], t), min(best["qc"][1], c)]
                t, c, q_l = timed(lambda: llama_threaded(ggml_quantize, name, x, imat, n))
                best["ll"] = [min(best["ll"][0], t), min(best["ll"][1], c)]
            (t_qc, c_qc), (t_l, c_l) = best["qc"], best["ll"]
            same = np.array_equal(q.reshape(-1), q_l.reshape(-1))
            print(f"{name:6} {'yes' if with_imp else 'no':>3} {t_qc * 1e3:7.0f}ms {c_qc * 1e3:6.0f}ms"
                  f" {t_l * 1e3:7.0f}ms {c_l * 1e3:6.0f}ms {t_qc / t_l:9.2f}x {c_qc / c_l:8.2f}x"
                  f"  {'equal' if same else 'DIFFER'}", flush=True)


if __name__ == "__main__":
    main()

"""Time the K-quant encoders on one 4096 x 4096 float32 matrix, qconvert against llama.cpp.

Columns, same input, same thread count (default 2):
  qconvert     numba kernel, prange over super-blocks (timed after a warm-up call, so
               compilation is excluded)
  llama.cpp/1  ggml_quantize_chunk through ctypes (tests/ggml_oracle.py), one call, one thread
  llama.cpp/N  the same split into N row ranges on N Python threads (ctypes drops the GIL
               during the call), i.e. llama.cpp given the same cores as numba
"cpu" columns give process CPU time (all threads summed), which stays meaningful when
other programs share the cores; the last column says whether qconvert's bytes equal
llama.cpp's.

Run: python scripts/bench_kquants.py [--types Q4_K,Q6_K] [--threads 2] [--repeat 3]
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

from qconvert.kernels import kernel  # noqa: E402


def best_of(fn, repeat: int):
    """(best wall seconds, best CPU seconds, last output) over `repeat` calls."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu, out


def llama_threaded(ggml_quantize, name: str, x: np.ndarray, n_threads: int) -> np.ndarray:
    parts = np.array_split(x, n_threads, axis=0)
    with ThreadPoolExecutor(n_threads) as pool:
        outs = list(pool.map(lambda p: ggml_quantize(name, p), parts))
    return np.concatenate(outs, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_K,Q6_K")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from ggml_oracle import ggml_quantize
    import numba

    n = args.threads
    x = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
    print(f"matrix {x.shape} float32, numba threads {numba.get_num_threads()}, best of {args.repeat}")
    print(f"{'type':6} {'qconvert':>9} {'(cpu)':>8} {'llama.cpp/1':>11} {'(cpu)':>8}"
          f" {f'llama.cpp/{n}':>11}  {'wall qc/llama' + str(n):>15} {'cpu qc/llama':>12}  bytes equal")
    for name in args.types.split(","):
        k = kernel(name)
        blocks = x.reshape(-1, 256)
        k.encode(blocks[:64])  # warm-up: compile or load the cache
        t_qc, c_qc, q = best_of(lambda: k.encode(blocks), args.repeat)
        t_l1, c_l1, q_l = best_of(lambda: ggml_quantize(name, x), args.repeat)
        t_ln, _, q_ln = best_of(lambda: llama_threaded(ggml_quantize, name, x, n), args.repeat)
        same = np.array_equal(q, q_l) and np.array_equal(q_l, q_ln)
        print(f"{name:6} {t_qc * 1e3:7.0f}ms {c_qc * 1e3:6.0f}ms {t_l1 * 1e3:9.0f}ms {c_l1 * 1e3:6.0f}ms"
              f" {t_ln * 1e3:9.0f}ms  {t_qc / t_ln:14.2f}x {c_qc / c_l1:11.2f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()

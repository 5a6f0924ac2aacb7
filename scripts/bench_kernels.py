"""Time the legacy block encoders on one 4096 x 4096 float32 matrix.

Compares, on the same input:
  qconvert      numba kernel (timed after a warm-up call, so compilation is excluded)
  qconvert-ref  its NumPy twin
  gguf-py       gguf.quants.quantize (gguf-py's NumPy quantizer)
  llama.cpp     ggml_quantize_chunk through ctypes (tests/ggml_oracle.py), single call

Run: python scripts/bench_kernels.py [--types Q8_0,Q4_0] [--repeat 3]
Needs llama-cpp-python installed for the llama.cpp column (skipped with a note if not).
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

from qconvert.kernels import kernel  # noqa: E402


def best_of(fn, repeat: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q8_0,Q4_0")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    try:
        from ggml_oracle import ggml_quantize
    except Exception as e:  # llama-cpp-python missing or its library not found
        ggml_quantize = None
        print(f"llama.cpp column skipped: {e}")

    import numba

    x = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
    print(f"matrix {x.shape} float32, numba threads: {numba.get_num_threads()}, best of {args.repeat}")
    print(f"{'type':6} {'qconvert':>10} {'qc-ref':>10} {'gguf-py':>10} {'llama.cpp':>10}"
          f"   {'gguf/qc':>8} {'llama/qc':>8}  bytes equal")
    for name in args.types.split(","):
        k = kernel(name)
        blocks = x.reshape(-1, 32)
        k.encode(blocks[:64])  # warm-up: compile (or load the cache)
        t_qc, q = best_of(lambda: k.encode(blocks), args.repeat)
        t_ref, q_ref = best_of(lambda: k.encode_ref(blocks), 1)
        gt = GGMLQuantizationType[name]
        t_gg, q_gg = best_of(lambda: gguf_quantize(x, gt), 1)
        t_cc, q_cc = (best_of(lambda: ggml_quantize(name, x), args.repeat)
                      if ggml_quantize else (float("nan"), None))
        same = [np.array_equal(q, q_ref), np.array_equal(q, q_gg.reshape(q.shape))]
        if q_cc is not None:
            same.append(np.array_equal(q, q_cc))
        print(f"{name:6} {t_qc * 1e3:8.1f}ms {t_ref * 1e3:8.1f}ms {t_gg * 1e3:8.1f}ms {t_cc * 1e3:8.1f}ms"
              f"   {t_gg / t_qc:7.1f}x {t_cc / t_qc:7.2f}x  {'/'.join('yes' if s else 'NO' for s in same)}")
    print("bytes equal: qconvert vs (qc-ref / gguf-py / llama.cpp)")


if __name__ == "__main__":
    main()

"""Peak memory of requantizing a GGUF (`qconvert quantize some.gguf --type ...`): makes a
synthetic Llama-shaped bf16 checkpoint (scripts/synthetic_checkpoint.py; Llama-3-8B's
shapes by default, 2 layers), converts it to each --from type (F16, Q8_0...), then
requantizes each of those GGUFs to --type in a fresh child process and prints that
child's peak RSS next to the largest tensor's size as float32 and the RSS of a child
that only imports qconvert and its kernels. The GGUF input is read a slice of rows at a
time (source/gguf_input.py), so the peak should not follow the largest tensor.

    python scripts/measure_requantize_memory.py [--from F16 Q8_0] [--type Q4_K_M] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from measure_memory import peak_rss_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ff", type=int, default=14336)
    ap.add_argument("--kv", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--from", dest="sources", nargs="+", default=["F16", "Q8_0"])
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--keep", type=Path, help="make (or reuse) the checkpoint and GGUFs here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        root = a.keep or Path(td)
        d = root / "model"
        if not (d / "config.json").exists():
            # made in a child: Linux carries a process's peak RSS across fork and exec
            subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                            "from synthetic_checkpoint import make_checkpoint as m; from pathlib import Path;"
                            "m(Path(sys.argv[2]), *map(int, sys.argv[3:]), pooled=True)",
                            str(Path(__file__).parent), str(d), str(a.layers), str(a.hidden), str(a.vocab),
                            str(a.ff), str(a.kv)], check=True)
        base = peak_rss_of("import qconvert.pipeline, qconvert.kernels as k\n"
                           "for t in ('Q8_0', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K', 'Q3_K', 'Q2_K'): k.kernel(t)")
        largest = 4 * a.vocab * a.hidden
        print(f"largest tensor {a.vocab}x{a.hidden} as float32: {largest / 2**20:,.0f} MiB; "
              f"peak RSS of importing qconvert and its kernels: {base / 2**20:,.0f} MiB")
        print(f"{'input':>6} {'GGUF size':>10} {'to':>7} {'wall':>7} {'peak RSS':>10} {'minus import':>13}")
        for src in a.sources:
            g = root / f"in-{src}.gguf"
            if not g.exists():
                subprocess.run([sys.executable, "-c", "import sys, qconvert; qconvert.quantize(sys.argv[1], "
                                "sys.argv[2], type=sys.argv[3])", str(d), str(g), src], check=True)
            requant = src not in ("F32", "F16", "BF16")
            t = time.time()
            peak = peak_rss_of(f"import qconvert\nqconvert.quantize({str(g)!r}, {str(root / 'out.gguf')!r}, "
                               f"type={a.type!r}, force=True, allow_requantize={requant})")
            wall = time.time() - t
            print(f"{src:>6} {g.stat().st_size / 2**30:>8.2f}GiB {a.type:>7} {wall:>6.0f}s {peak / 2**20:>8,.0f}MiB "
                  f"{(peak - base) / 2**20:>11,.0f}MiB")


if __name__ == "__main__":
    main()

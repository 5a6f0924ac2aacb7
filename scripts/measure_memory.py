"""Peak memory of a conversion whose checkpoint is many times larger than its largest
tensor. Writes a synthetic Llama-shaped bf16 checkpoint (sharded), converts it with
`qconvert quantize` in a child process and prints peak RSS next to the largest tensor
and the checkpoint's total size, plus the RSS of a child that only imports qconvert.

    python scripts/measure_memory.py [--layers 24] [--hidden 1024] [--type Q8_0]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path



def peak_rss_of(code: str) -> int:
    """Peak RSS in bytes of a fresh interpreter running `code`, read by that process
    itself at its end (ru_maxrss is KiB on Linux)."""
    tail = "\nimport resource; print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", code + tail], check=True, capture_output=True, text=True).stdout
    return int(out.rsplit("RSS", 1)[1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--type", default="Q8_0")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        d = Path(td) / "model"
        # made in a child: Linux carries a process's peak RSS across fork and exec, so
        # this process must stay small for its children's figures to be their own
        made = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                               "from synthetic_checkpoint import make_checkpoint as m; from pathlib import Path;"
                               "print(*m(Path(sys.argv[2]), *map(int, sys.argv[3:])))",
                               str(Path(__file__).parent), str(d), str(a.layers), str(a.hidden), str(a.vocab)],
                              check=True, capture_output=True, text=True).stdout.split()
        largest, total = int(made[-2]), int(made[-1])
        # each measurement in a fresh child so ru_maxrss is that child's alone
        # the baseline loads every kernel a mix may use (numba's compiled code is most of it)
        base = peak_rss_of("import qconvert.pipeline, qconvert.kernels as k\n"
                           "for t in ('Q8_0', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K', 'Q3_K', 'Q2_K'): k.kernel(t)")
        conv = peak_rss_of(f"import qconvert\nqconvert.quantize({str(d)!r}, {str(Path(td) / 'out.gguf')!r}, "
                           f"type={a.type!r})")
        print(f"checkpoint total (bf16):    {total / 1e6:9.1f} MB in {a.layers + 1} shards")
        print(f"largest tensor (bf16):      {largest / 1e6:9.1f} MB  (as float32: {2 * largest / 1e6:.1f} MB)")
        print(f"peak RSS, import only:      {base / 1e6:9.1f} MB")
        print(f"peak RSS, convert to {a.type:<5}  {conv / 1e6:9.1f} MB")
        print(f"convert minus import:       {(conv - base) / 1e6:9.1f} MB "
              f"= {(conv - base) / largest:.2f} x largest tensor, {(conv - base) / total:.3f} x checkpoint")


if __name__ == "__main__":
    main()

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

from synthetic_checkpoint import make_checkpoint


def peak_rss_of(cmd: list[str]) -> int:
    """Peak RSS in bytes of one child process (wait4 gives that child's own rusage;
    ru_maxrss is KiB on Linux)."""
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]}... failed with exit code {proc.returncode}")
    return usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--type", default="Q8_0")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        d = Path(td) / "model"
        largest, total = make_checkpoint(d, a.layers, a.hidden, a.vocab)
        # each measurement in a fresh child so ru_maxrss is that child's alone
        base = peak_rss_of([sys.executable, "-c", "import resource,qconvert.pipeline,qconvert.kernels as k;"
                            f"k.kernel('{a.type}') if '{a.type}'[0]=='Q' else None"])
        conv = peak_rss_of([sys.executable, "-m", "qconvert", "quantize", str(d), "-o",
                            str(Path(td) / "out.gguf"), "--type", a.type, "--no-progress"])
        print(f"checkpoint total (bf16):    {total / 1e6:9.1f} MB in {a.layers + 1} shards")
        print(f"largest tensor (bf16):      {largest / 1e6:9.1f} MB  (as float32: {2 * largest / 1e6:.1f} MB)")
        print(f"peak RSS, import only:      {base / 1e6:9.1f} MB")
        print(f"peak RSS, convert to {a.type:<5}  {conv / 1e6:9.1f} MB")
        print(f"convert minus import:       {(conv - base) / 1e6:9.1f} MB "
              f"= {(conv - base) / largest:.2f} x largest tensor, {(conv - base) / total:.3f} x checkpoint")


if __name__ == "__main__":
    main()

"""Peak memory of the calibration pass, full load vs lazy (one layer at a time). Writes a
synthetic Llama-shaped bf16 checkpoint, then runs `run_layerwise` with the importance
callback over random token windows in fresh child processes and prints each child's
peak RSS (VmHWM, read by the child itself), next to a child that only imports torch,
transformers and the model code.

    python scripts/measure_calib_memory.py [--layers 16] [--hidden 1024] [--samples 4] [--seqlen 128]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUN = """
import sys, torch
from qconvert.calib.layerwise import load_causal_lm, run_layerwise
from qconvert.calib.collect import SquareSums
mode, d, n, seqlen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import transformers
from transformers import AutoModelForCausalLM, LlamaForCausalLM  # imports the model code: the baseline
if mode != 'import':
    ids = torch.randint(3, 1000, (n, seqlen), generator=torch.Generator().manual_seed(0))
    model = load_causal_lm(d, lazy=(mode == 'lazy'))
    run_layerwise(model, ids, on_linear=SquareSums(), device='cpu', batch_size=n, show_progress=False)
hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]
print('HWM', int(hwm.split()[1]) * 1024)
"""


def peak_rss(mode: str, d: Path, n: int, seqlen: int) -> int:
    # a fresh interpreter per figure: Linux carries a process's peak RSS across fork and
    # exec, so this parent stays small (no torch imported here)
    out = subprocess.run([sys.executable, "-c", RUN, mode, str(d), str(n), str(seqlen)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.rsplit("HWM", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    a = ap.parse_args()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory() as td:
        d = Path(td) / "model"
        made = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                               "from synthetic_checkpoint import make_checkpoint as m; from pathlib import Path;"
                               "print(*m(Path(sys.argv[2]), layers=int(sys.argv[3]), hidden=int(sys.argv[4])))",
                               str(HERE), str(d), str(a.layers), str(a.hidden)],
                              check=True, capture_output=True, text=True).stdout.split()
        largest, total = int(made[0]), int(made[1])
        layer = (total - 2 * largest) // a.layers  # embeddings and lm_head are the two largest
        print(f"checkpoint: {a.layers} layers, hidden {a.hidden}: {total / mib:.0f} MiB bf16, "
              f"one layer {layer / mib:.1f} MiB, embeddings {largest / mib:.1f} MiB")
        for mode in ("import", "eager", "lazy"):
            print(f"{mode:>6}: peak RSS {peak_rss(mode, d, a.samples, a.seqlen) / mib:.0f} MiB")


if __name__ == "__main__":
    main()

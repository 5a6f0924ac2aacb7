"""How much a sized plan gains over llama.cpp's preset at the same file size, scored by
llama.cpp: mean KL against the F16 GGUF on held-out text, for the preset and for a
--target-size plan of exactly the preset's size, without and with importance statistics.

    python scripts/sized_vs_preset.py [--model DIR | --fixture llama_narrow] [--preset Q4_K_M]

The ratio KL(sized) / KL(preset) is what the planner is judged by (issue 13: <= 0.8 on
widths that are not multiples of 256)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import qconvert  # noqa: E402
from qconvert.eval.comparison import evaluate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "examples" / "tiny-llama"))
    ap.add_argument("--fixture", help="build a tests/fixtures/tiny_models.py checkpoint instead (llama_narrow)")
    ap.add_argument("--preset", default="Q4_K_M")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--samples", type=int, default=32, help="calibration windows of 256 tokens")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model = Path(a.model)
        if a.fixture:
            from fixtures.tiny_models import build

            model = build(a.fixture, d / a.fixture)
        imx = d / "imatrix.gguf"
        from qconvert.calib.collect import collect_importance

        collect_importance(model, n_samples=a.samples, seqlen=256, device="cpu", show_progress=False).save(imx)
        ref = qconvert.quantize(model, d / "F16.gguf", type="F16").output
        files = {}
        for label, kw in (("plain", {}), ("importance", {"imatrix": imx})):
            p = qconvert.quantize(model, d / f"preset-{label}.gguf", type=a.preset, **kw).output
            s = qconvert.quantize(model, d / f"sized-{label}.gguf", target_size=os.path.getsize(p),
                                  sensitivity_cache=d / "cache.json", **kw).output
            files[label] = (p, s)
        paths = [x for pair in files.values() for x in pair]
        cmp = evaluate(paths, ref, n_ctx=a.ctx, max_windows=a.windows, threads=2)
        kl = {Path(r.path).name: (r.metrics.mean_kl, r.file_bytes) for r in cmp.rows}
        print(f"model {model.name}, {a.preset} size, {cmp.windows.n_windows} windows x {a.ctx} tokens, "
              f"KL vs F16 by llama.cpp")
        print(f"{'':12} {'preset KL':>11} {'sized KL':>11} {'ratio':>7} {'preset B':>10} {'sized B':>10}")
        for label in files:
            (pk, pb), (sk, sb) = kl[f"preset-{label}.gguf"], kl[f"sized-{label}.gguf"]
            print(f"{label:12} {pk:11.5f} {sk:11.5f} {sk / pk:7.3f} {pb:10,} {sb:10,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

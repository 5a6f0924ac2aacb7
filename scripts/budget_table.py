"""Budget-planned mixes against llama.cpp's fixed presets at the same file size.

    python scripts/budget_table.py [--model examples/tiny-llama] [--out table.md] [--n-ctx 256]
                                   [--max-windows N] [--presets Q3_K_M Q4_K_M Q5_K_M]

For each preset: write it (size S), then plan with --target-size S (qconvert.quantize's
target_size) and compare the two files' mean KL divergence against the F16 GGUF in
llama.cpp, on the held-out evaluation windows (qconvert/eval, as scripts/quality_table.py).
The same again with importance statistics from calibration (the bundled calibration text,
128 windows of 256 tokens): collected once, saved, and given to both the preset and the
budget plan, which then weights its sensitivity measurements by them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qconvert  # noqa: E402
from qconvert.eval import compare, evaluation_windows, reference_from  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
CALIB = dict(calibration=True, calibration_samples=128, calibration_seqlen=256, device="cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=EXAMPLE)
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    ap.add_argument("--n-ctx", type=int, default=256)  # the example model's training window
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--presets", nargs="*", default=["Q3_K_M", "Q4_K_M", "Q5_K_M"])
    args = ap.parse_args(argv)

    t_all = time.perf_counter()
    windows = evaluation_windows(args.model, n_ctx=args.n_ctx, max_windows=args.max_windows)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qconvert-budget-") as tmp:
        root = Path(tmp)
        cache = root / "sensitivity.json"
        f16 = qconvert.quantize(args.model, root / "F16.gguf", type="F16")
        ref = reference_from(f16.output, windows, root / "reference", threads=args.threads)
        print(f"reference F16: PPL {ref.metrics.ppl:.3f}, {windows.n_windows} windows", flush=True)
        imx = root / "imatrix.gguf"
        qconvert.quantize(args.model, root / "calib-probe.gguf", type="Q8_0", save_imatrix=imx, **CALIB)

        def run(label: str, **kw):
            out = root / f"{label}.gguf"
            res = qconvert.quantize(args.model, out, **kw)
            m = compare(out, ref, threads=args.threads)
            print(f"  {label:<28} {res.file_size:>10,} B  KL {m.mean_kl:.5f}  ({res.plan.ftype}, "
                  f"{res.plan.bits_per_weight:.3f} bpw)", flush=True)
            return res, m

        for preset in args.presets:
            for imp_label, imp in (("", {}), (" + importance", {"imatrix": imx})):
                p_res, p_m = run(f"{preset}{imp_label.replace(' ', '')}", type=preset, **imp)
                b_res, b_m = run(f"budget-{preset}{imp_label.replace(' ', '')}", target_size=p_res.file_size,
                                 sensitivity_cache=cache, **imp)
                rows.append(dict(preset=preset + imp_label, p_size=p_res.file_size, p_kl=p_m.mean_kl,
                                 p_bpw=p_res.plan.bits_per_weight, b_size=b_res.file_size, b_kl=b_m.mean_kl,
                                 b_bpw=b_res.plan.bits_per_weight, b_mix=_mix(b_res.plan),
                                 gap=b_res.budget.gap, loss=b_res.budget.loss))
        ref.close()

    lines = ["| preset | preset size B | budget size B | Δ size | preset mean KL | budget mean KL | KL ratio | budget mix |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['p_size']:,} | {r['b_size']:,} | "
                     f"{100 * (r['b_size'] / r['p_size'] - 1):+.2f}% | {r['p_kl']:.5f} | {r['b_kl']:.5f} | "
                     f"{r['b_kl'] / r['p_kl']:.3f} | {r['b_mix']} |")
    md = (f"Model `{args.model.name}`, {windows.n_windows} windows x {windows.n_ctx} tokens of the held-out "
          "evaluation split; KL = mean KL(F16 GGUF || variant) per scored token, llama.cpp. Budget: "
          "`--target-size` = the preset's written size (+ importance: the same calibration statistics, "
          "128 x 256 tokens, for both).\n\n" + "\n".join(lines) + "\n")
    print()
    print(md)
    print(f"total {time.perf_counter() - t_all:.1f} s")
    if args.out:
        args.out.write_text(md)
    return 0


def _mix(plan) -> str:
    by = plan.by_type()
    total = sum(p for _, p, _ in by.values())
    return ", ".join(f"{k} {100 * p / total:.0f}%" for k, (_, p, _) in
                     sorted(by.items(), key=lambda kv: -kv[1][1]) if k != "F32")


if __name__ == "__main__":
    raise SystemExit(main())

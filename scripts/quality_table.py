"""Perplexity and KL divergence of quantized variants of a model, as a Markdown table.

    python scripts/quality_table.py [--model examples/tiny-llama] [--out table.md]
                                    [--n-ctx 512] [--max-windows N] [--reference gguf|hf]
                                    [--only LABEL ...] [--json results.json]

Every variant is a Recipe: a label, the keyword arguments of `qconvert.quantize` that make
it (None: the model directory itself, unchanged) and the backend that runs it ("gguf":
llama.cpp; "hf": transformers, float32 on CPU). Each is made in a temporary directory,
scored on the same windows of the corpus's evaluation split (qconvert/eval/windows.py:
windows of n_ctx tokens, BOS first, second half of each scored), and compared with the
reference: by default the F16 GGUF in llama.cpp, or with --reference hf the original
checkpoint in transformers. To add a row, append to RECIPES, e.g.

    Recipe("Q4_K_M + importance", dict(type="Q4_K_M", imatrix="imatrix.gguf")),
    Recipe("RTN 4-bit g128", dict(format="safetensors", scheme="W4A16-G128"), evaluate="hf"),
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qconvert  # noqa: E402
from qconvert.eval import compare, evaluation_windows, reference_from  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"


@dataclass(frozen=True)
class Recipe:
    label: str
    quantize: Optional[dict]  # kwargs for qconvert.quantize(model, out, **quantize); None: the source as is
    evaluate: str = "gguf"  # backend that runs the result: "gguf" (llama.cpp) or "hf" (transformers)

    def output(self, root: Path) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.]+", "-", self.label).strip("-")
        return root / (slug + ".gguf" if self.evaluate == "gguf" else slug)


# calibration on the bundled calibration split (disjoint from training and evaluation
# text), windows as long as the example model's training windows
CALIB = dict(calibration=True, calibration_samples=128, calibration_seqlen=256, device="cpu")

RECIPES: list[Recipe] = [
    Recipe("F16", dict(type="F16")),
    Recipe("Q8_0", dict(type="Q8_0")),
    Recipe("Q6_K", dict(type="Q6_K")),
    Recipe("Q5_K_M", dict(type="Q5_K_M")),
    Recipe("Q4_K_M", dict(type="Q4_K_M")),
    Recipe("Q4_0", dict(type="Q4_0")),
    Recipe("Q4_K_M + importance", dict(type="Q4_K_M", **CALIB)),
    Recipe("Q4_K_M + GPTQ", dict(type="Q4_K_M", scheme="gptq", **CALIB)),
    Recipe("Q4_K_M + GPTQ-imatrix", dict(type="Q4_K_M", scheme="gptq-imatrix", **CALIB)),
    Recipe("Q4_K_M + AWQ", dict(type="Q4_K_M", scheme="awq", **CALIB)),
    Recipe("Q4_K_M + AWQ+GPTQ", dict(type="Q4_K_M", scheme="awq+gptq", **CALIB)),
    Recipe("Q4_K_M + AWQ+GPTQ-imatrix", dict(type="Q4_K_M", scheme="awq+gptq-imatrix", **CALIB)),
    Recipe("Q4_K_M thorough", dict(type="Q4_K_M", scale_search="thorough")),
    Recipe("Q4_K_M + importance thorough", dict(type="Q4_K_M", scale_search="thorough", **CALIB)),
    Recipe("Q4_K_M + GPTQ-imatrix thorough", dict(type="Q4_K_M", scheme="gptq-imatrix", scale_search="thorough", **CALIB)),
    Recipe("Q3_K_M", dict(type="Q3_K_M")),
    Recipe("Q3_K_M + importance", dict(type="Q3_K_M", **CALIB)),
    Recipe("Q3_K_M + GPTQ", dict(type="Q3_K_M", scheme="gptq", **CALIB)),
    Recipe("Q3_K_M + GPTQ-imatrix", dict(type="Q3_K_M", scheme="gptq-imatrix", **CALIB)),
    Recipe("Q3_K_M + AWQ", dict(type="Q3_K_M", scheme="awq", **CALIB)),
    Recipe("Q3_K_M + AWQ+GPTQ", dict(type="Q3_K_M", scheme="awq+gptq", **CALIB)),
    Recipe("Q3_K_M + AWQ+GPTQ-imatrix", dict(type="Q3_K_M", scheme="awq+gptq-imatrix", **CALIB)),
    Recipe("Q3_K_M thorough", dict(type="Q3_K_M", scale_search="thorough")),
    Recipe("Q3_K_M + importance thorough", dict(type="Q3_K_M", scale_search="thorough", **CALIB)),
    Recipe("Q3_K_M + GPTQ-imatrix thorough", dict(type="Q3_K_M", scheme="gptq-imatrix", scale_search="thorough", **CALIB)),
    Recipe("IQ4_XS", dict(type="IQ4_XS")),
    Recipe("IQ4_XS + importance", dict(type="IQ4_XS", **CALIB)),
    Recipe("IQ4_XS + AWQ", dict(type="IQ4_XS", scheme="awq", **CALIB)),
    Recipe("Q2_K", dict(type="Q2_K")),
    Recipe("BF16 checkpoint (transformers)", None, evaluate="hf"),
    Recipe("RTN 4-bit g128", dict(format="safetensors", bits=4, group_size=128), evaluate="hf"),
    Recipe("GPTQ 4-bit g128", dict(format="safetensors", bits=4, group_size=128, scheme="gptq", **CALIB),
           evaluate="hf"),
    Recipe("GPTQ 4-bit g128 act-order", dict(format="safetensors", bits=4, group_size=128, scheme="gptq",
                                              act_order=True, **CALIB), evaluate="hf"),
    Recipe("AWQ 4-bit g128", dict(format="safetensors", bits=4, group_size=128, scheme="awq", **CALIB),
           evaluate="hf"),
    Recipe("AWQ+GPTQ 4-bit g128", dict(format="safetensors", bits=4, group_size=128, scheme="awq+gptq", **CALIB),
           evaluate="hf"),
    Recipe("RTN 3-bit g128", dict(format="safetensors", bits=3, group_size=128), evaluate="hf"),
    Recipe("GPTQ 3-bit g128", dict(format="safetensors", bits=3, group_size=128, scheme="gptq", **CALIB),
           evaluate="hf"),
    Recipe("AWQ 3-bit g128", dict(format="safetensors", bits=3, group_size=128, scheme="awq", **CALIB),
           evaluate="hf"),
    Recipe("AWQ+GPTQ 3-bit g128", dict(format="safetensors", bits=3, group_size=128, scheme="awq+gptq", **CALIB),
           evaluate="hf"),
]


@dataclass
class Row:
    recipe: Recipe
    bits_per_weight: float
    size: int
    quantize_s: float
    metrics: object


def checkpoint_size(model: Path) -> int:
    return sum(f.stat().st_size for f in model.glob("*.safetensors"))


def make(recipe: Recipe, model: Path, root: Path, n_params: int) -> tuple[Path, float, int, float]:
    """(path to evaluate, bits per weight, bytes, seconds to make)."""
    if recipe.quantize is None:
        size = checkpoint_size(model)
        return model, 8 * size / n_params, size, 0.0
    out = recipe.output(root)
    t0 = time.perf_counter()
    res = qconvert.quantize(model, out, **recipe.quantize)
    seconds = time.perf_counter() - t0
    plan = getattr(res, "plan", None)
    size = res.file_size or (sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else 0)
    # a GGUF plan knows its bits per weight; a safetensors plan does not (the file's size does)
    bpw = getattr(plan, "bits_per_weight", None) or 8 * size / n_params
    return out, bpw, size, seconds


def table(rows: list[Row], ref_ppl: float) -> str:
    head = ("| variant | run by | bits/weight | size MB | PPL | ΔPPL | mean KL | p99 KL | top-1 | make s | eval s |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        m = r.metrics
        lines.append(
            f"| {r.recipe.label} | {r.recipe.evaluate} | {r.bits_per_weight:.2f} | {r.size / 1e6:.2f} | "
            f"{m.ppl:.3f} | {100 * (m.ppl / ref_ppl - 1):+.2f}% ± {100 * m.delta_nll_se:.2f}% | {m.mean_kl:.3g} | "
            f"{m.p99_kl:.3g} | {100 * m.top1:.2f}% | {r.quantize_s:.1f} | {m.seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=EXAMPLE, help="HF model directory (default: the example model)")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    ap.add_argument("--json", type=Path, help="write every figure as JSON here")
    # the example model was trained on windows of 256 tokens: at 512 every scored position
    # (the second half) would lie beyond anything it saw, and its PPL rises from 106.9 to 110.8
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=None, help="default: the whole evaluation split")
    ap.add_argument("--first", type=int, default=None,
                    help="first scored position of each window (default: the second half is scored)")
    ap.add_argument("--reference", choices=("gguf", "hf"), default="gguf",
                    help="gguf: the F16 GGUF in llama.cpp (default); hf: the checkpoint in transformers")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="labels of the recipes to run (default: all)")
    args = ap.parse_args(argv)

    import transformers

    transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per hf row
    recipes = [r for r in RECIPES if not args.only or r.label in args.only]
    t_all = time.perf_counter()
    windows = evaluation_windows(args.model, n_ctx=args.n_ctx, first=args.first, max_windows=args.max_windows)
    print(f"{args.model.name}: {windows.n_windows} windows of {windows.n_ctx} tokens, "
          f"{windows.n_windows * windows.n_scored} scored positions ({windows.source})", flush=True)
    with tempfile.TemporaryDirectory(prefix="qconvert-quality-") as tmp:
        root = Path(tmp)
        f16 = qconvert.quantize(args.model, root / "reference-F16.gguf", type="F16")
        n_params = f16.plan.n_params
        ref_model = f16.output if args.reference == "gguf" else args.model
        ref = reference_from(ref_model, windows, root / "reference", threads=args.threads)
        print(f"reference: {ref.describe()}, PPL {ref.metrics.ppl:.3f} ({ref.metrics.seconds:.1f} s)", flush=True)
        rows = []
        for recipe in recipes:
            path, bpw, size, made_s = make(recipe, args.model, root, n_params)
            m = compare(path, ref, backend=recipe.evaluate, threads=args.threads)
            rows.append(Row(recipe, bpw, size, made_s, m))
            print(f"  {recipe.label:<32} PPL {m.ppl:8.3f}  KL {m.mean_kl:9.3g}  top-1 {100 * m.top1:6.2f}%  "
                  f"make {made_s:5.1f} s  eval {m.seconds:5.1f} s", flush=True)
        ref_desc, ref_metrics = ref.describe(), ref.metrics
        ref.close()

    md = (f"Model `{args.model.name}`, {windows.n_windows} windows x {windows.n_ctx} tokens of the held-out "
          f"evaluation split, second half of each window scored ({windows.n_windows * windows.n_scored} positions). "
          f"KL = KL(reference || variant) in nats per token; reference: {ref_desc}, "
          f"PPL {ref_metrics.ppl:.3f} ± {ref_metrics.ppl_se:.3f}. ΔPPL ± is the standard error of the "
          f"paired per-token NLL difference from the reference (same tokens, so far tighter than the "
          f"PPL's own error).\n\n" + table(rows, ref_metrics.ppl) + "\n")
    print()
    print(md)
    print(f"total {time.perf_counter() - t_all:.1f} s")
    if args.out:
        args.out.write_text(md)
    if args.json:
        args.json.write_text(json.dumps(dict(
            model=str(args.model), n_ctx=windows.n_ctx, windows=windows.n_windows, first=windows.first,
            reference=dict(ref_metrics.to_dict(), model=ref_desc),
            rows=[dict(label=r.recipe.label, quantize=r.recipe.quantize, evaluate=r.recipe.evaluate,
                       bits_per_weight=r.bits_per_weight, size=r.size, make_seconds=r.quantize_s,
                       **r.metrics.to_dict()) for r in rows]), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

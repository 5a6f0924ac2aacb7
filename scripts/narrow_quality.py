"""Quality at Q4_K_M's size on a model whose widths are not multiples of 256 (most K-quant
tensors fall back to Q5_0 / Q8_0, as on SmolLM-135M): llama.cpp's quantizer with and
without our importance statistics against qconvert's schemes and sized plans, every file
scored by llama.cpp against the F16 GGUF on the held-out evaluation split.

    python scripts/make_example_model.py --shape narrow --out /tmp/narrow-llama
    python scripts/narrow_quality.py --model /tmp/narrow-llama --work /tmp/nq [--only LABEL ...]

Files already in --work are reused (a GPTQ run takes minutes on a busy CPU), so the script
can be re-run to add rows. The table gives size, PPL, mean KL, KL relative to llama.cpp's
Q4_K_M + imatrix (the issue's target is <= 0.75), top-1 agreement and make time.

With --safetensors it also writes `--format safetensors --bits 4` (RTN, GPTQ, GPTQ with
act-order) and reports the share of projection weights quantized, the size against the
bf16 checkpoint and perplexity in transformers, computed in a child process that never
imports qconvert (the text is handed over in a file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

import qconvert  # noqa: E402
from qconvert.eval.comparison import evaluate  # noqa: E402

PRESET = "Q4_K_M"


def recipes(a, imatrix: Path, preset_bytes: int) -> dict[str, dict]:
    """label -> keyword arguments of qconvert.quantize (the imatrix stands for --calibration:
    the same statistics, collected once)."""
    cal = dict(calibration=True, calibration_samples=a.samples, calibration_seqlen=a.seqlen, device="cpu")
    sized = dict(target_size=preset_bytes, imatrix=imatrix, sensitivity_cache=a.work / "sensitivity.json")
    return {
        "ours Q4_K_M": dict(type=PRESET),
        "ours Q4_K_M --calibration": dict(type=PRESET, imatrix=imatrix),
        "ours --scheme gptq": dict(type=PRESET, scheme="gptq", **cal),
        "ours --scheme gptq-imatrix": dict(type=PRESET, scheme="gptq-imatrix", **cal),
        "ours --scheme awq": dict(type=PRESET, scheme="awq", **cal),
        "ours --scheme awq+gptq-imatrix": dict(type=PRESET, scheme="awq+gptq-imatrix", **cal),
        "ours sized --calibration": sized,
        # the sized plan's types (routes/sized_gptq.py), solved by gptq-imatrix
        "ours sized --scheme gptq-imatrix": dict(sized, scheme="gptq-imatrix", **dict(cal, calibration=None)),
    }


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-") + ".gguf"


def llama_cpp_file(a, f32: Path, imatrix_path: Path | None, out: Path) -> None:
    from qconvert.calib.imatrix import ImportanceMatrix
    from test_iquant_presets import llama_quantize  # llama.cpp's quantizer through llama-cpp-python

    stats = None
    if imatrix_path is not None:
        imx = ImportanceMatrix.load(imatrix_path)
        stats = {n: imx.get(n) for n in imx.names()}
    llama_quantize(f32, out, PRESET, stats)


def make(a, label: str, kw: dict, out: Path, imatrix: Path, preset_bytes: int) -> float:
    t0 = time.perf_counter()
    qconvert.quantize(a.model, out, **kw)
    return time.perf_counter() - t0


SAFETENSORS = {
    "RTN 4-bit g128": dict(format="safetensors", bits=4, group_size=128),
    "GPTQ 4-bit g128": dict(format="safetensors", bits=4, group_size=128, scheme="gptq"),
    "GPTQ 4-bit g128 act-order": dict(format="safetensors", bits=4, group_size=128, scheme="gptq", act_order=True),
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# perplexity in transformers, in a process of its own: argv = model dir, text file, window
PPL_CHILD = r"""
import json, math, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, text_file, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
assert "qconvert" not in sys.modules
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
ids = tok(open(text_file, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
n = (len(ids)) // (ctx - 1)
nll, count = 0.0, 0
with torch.no_grad():
    for i in range(n):
        x = torch.tensor([[tok.bos_token_id] + ids[i * (ctx - 1):(i + 1) * (ctx - 1)]])
        logits = model(input_ids=x).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum").item()
        count += x.shape[1] - 1
print(json.dumps({"ppl": math.exp(nll / count), "tokens": count, "qconvert_imported": "qconvert" in sys.modules}))
"""


def projection_share(out: Path) -> float:
    """Share of the projection weights (by count) stored packed at low bits."""
    import json as _json
    from safetensors import safe_open

    total = packed = 0
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(f, "np") as st:
            for k in st.keys():
                if not any(f".{p}." in k for p in PROJECTIONS):
                    continue
                if k.endswith(".weight_shape"):
                    n = int(np.prod(st.get_tensor(k)))
                    total, packed = total + n, packed + n
                elif k.endswith(".weight"):
                    total += int(np.prod(st.get_slice(k).get_shape()))
    return packed / total if total else 0.0


def transformers_ppl(model_dir: Path, text_file: Path, ctx: int) -> dict:
    import subprocess

    res = subprocess.run([sys.executable, "-c", PPL_CHILD, str(model_dir), str(text_file), str(ctx)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def safetensors_table(a) -> None:
    from qconvert.calib.corpus import split_text

    text = a.work / "evaluation.txt"
    text.write_text(split_text("evaluation"), encoding="utf-8")
    bf16 = sum(f.stat().st_size for f in a.model.glob("*.safetensors"))
    cal = dict(calibration=True, calibration_samples=a.samples, calibration_seqlen=a.seqlen, device="cpu")
    rows = [("bf16 checkpoint", a.model, bf16, projection_share(a.model))]
    for label, kw in SAFETENSORS.items():
        out = a.work / re.sub(r"[^A-Za-z0-9_.]+", "-", label)
        if not out.exists():
            qconvert.quantize(a.model, out, **kw, **(cal if "scheme" in kw else {}))
        size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        rows.append((label, out, size, projection_share(out)))
    print(f"\n{a.model.name} --format safetensors, perplexity in transformers (child process, float32), "
          f"windows of {a.ctx} tokens of the evaluation split\n")
    print("| variant | safetensors B | / bf16 | projections quantized | PPL | qconvert imported |")
    print("|---|---:|---:|---:|---:|---|")
    for label, path, size, share in rows:
        r = transformers_ppl(path, text, a.ctx)
        print(f"| {label} | {size:,} | {size / bf16:.3f} | {share:.1%} | {r['ppl']:.3f} | {r['qconvert_imported']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="files are made here and reused on the next run")
    ap.add_argument("--samples", type=int, default=128, help="calibration windows")
    ap.add_argument("--seqlen", type=int, default=256, help="calibration window length (tokens)")
    ap.add_argument("--ctx", type=int, default=256, help="evaluation window (the model was trained on 256)")
    ap.add_argument("--windows", type=int, default=None, help="evaluation windows (default: the whole split)")
    ap.add_argument("--only", nargs="*", help="labels of our recipes to make (default: all)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--safetensors", action="store_true", help="only the --format safetensors --bits 4 table")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.safetensors:
        safetensors_table(a)
        return 0
    times = json.loads((a.work / "times.json").read_text()) if (a.work / "times.json").exists() else {}

    f16, f32 = a.work / "F16.gguf", a.work / "F32.gguf"
    for path, t in ((f16, "F16"), (f32, "F32")):
        if not path.exists():
            qconvert.quantize(a.model, path, type=t)
    imatrix = a.work / "imatrix.dat"  # llama.cpp's legacy format, read by both quantizers
    if not imatrix.exists():
        from qconvert.calib.collect import collect_importance

        t0 = time.perf_counter()
        collect_importance(a.model, n_samples=a.samples, seqlen=a.seqlen, device="cpu",
                           show_progress=False).save(imatrix)
        times["statistics"] = time.perf_counter() - t0

    files = {}
    for label, stats in (("llama.cpp Q4_K_M", None), ("llama.cpp Q4_K_M + imatrix", imatrix)):
        out = a.work / slug(label)
        if not out.exists():
            llama_cpp_file(a, f32, stats, out)
        files[label] = out
    preset_bytes = os.path.getsize(files["llama.cpp Q4_K_M"])
    for label, kw in recipes(a, imatrix, preset_bytes).items():
        out = a.work / slug(label)
        if not out.exists() and (a.only is None or label in a.only):
            print(f"making {label} ...", flush=True)
            times[label] = make(a, label, kw, out, imatrix, preset_bytes)
            (a.work / "times.json").write_text(json.dumps(times, indent=1))
        if out.exists():
            files[label] = out

    cmp = evaluate(list(files.values()), f16, n_ctx=a.ctx, max_windows=a.windows, threads=2)
    by_path = {Path(r.path): r for r in cmp.rows}
    base = by_path[files["llama.cpp Q4_K_M + imatrix"]].metrics.mean_kl
    ref = cmp.reference.metrics
    print(f"\n{a.model.name}: {cmp.windows.n_windows} windows x {a.ctx} tokens of the evaluation split, "
          f"KL vs F16 by llama.cpp (F16 PPL {ref.ppl:.3f}); calibration {a.samples} x {a.seqlen} tokens\n")
    print("| variant | size B | vs Q4_K_M size | PPL | mean KL | KL / llama.cpp imatrix | top-1 | make s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for label, path in files.items():
        r = by_path[path]
        m = r.metrics
        rows.append(dict(label=label, bytes=r.file_bytes, ppl=m.ppl, mean_kl=m.mean_kl, p99_kl=m.p99_kl,
                         top1=m.top1, make_s=times.get(label)))
        make_s = f"{times[label]:.0f}" if label in times else ""
        print(f"| {label} | {r.file_bytes:,} | {r.file_bytes / preset_bytes - 1:+.2%} | {m.ppl:.3f} | "
              f"{m.mean_kl:.5f} | {m.mean_kl / base:.3f} | {100 * m.top1:.2f}% | {make_s} |")
    if a.json:
        a.json.write_text(json.dumps(dict(model=str(a.model), windows=cmp.windows.n_windows, ctx=a.ctx,
                                          f16_ppl=ref.ppl, rows=rows, times=times), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

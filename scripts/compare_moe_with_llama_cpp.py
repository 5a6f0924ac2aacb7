"""The MoE fixtures (tests/fixtures/moe_models.py) converted by qconvert and by llama.cpp's
own converter (convert_hf_to_gguf.py from a llama.cpp source tree), compared tensor by
tensor (names, shapes, types, bytes) and key by key.

    python scripts/compare_moe_with_llama_cpp.py LLAMA_CPP_DIR [--type f32|f16] [name ...]

llama.cpp's converter asks its table of known tokenizers for the pre-tokenizer name and
knows none of the fixtures' tiny trained tokenizer; the run tells it "llama-bpe" (the
fixtures' split regex is Llama 3's), which touches only tokenizer keys. Keys that differ
are printed: qconvert also writes some that llama.cpp derives itself (rope dimension count,
vocab size, key/value length) with the same values.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUN_CONVERTER = """
import sys, runpy
src = sys.argv[1]
sys.path[:0] = [src + "/gguf-py", src]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def compare(ours: Path, theirs: Path) -> tuple[list[str], list[str]]:
    import gguf

    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(theirs))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    problems = [f"only in qconvert's: {n}" for n in sorted(set(ta) - set(tb))]
    problems += [f"only in llama.cpp's: {n}" for n in sorted(set(tb) - set(ta))]
    for n in sorted(set(ta) & set(tb)):
        x, y = ta[n], tb[n]
        if list(x.shape) != list(y.shape) or x.tensor_type != y.tensor_type:
            problems.append(f"{n}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}")
        elif not np.array_equal(np.asarray(x.data), np.asarray(y.data)):
            problems.append(f"{n}: bytes differ")
    keys = []
    fa = {k: f.contents() for k, f in a.fields.items() if not k.startswith(("tokenizer.", "general.", "GGUF."))}
    fb = {k: f.contents() for k, f in b.fields.items() if not k.startswith(("tokenizer.", "general.", "GGUF."))}
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k), fb.get(k)
        if isinstance(va, float) and isinstance(vb, float) and abs(va - vb) <= 1e-6 * max(1.0, abs(vb)):
            continue
        if va != vb:
            keys.append(f"{k}: qconvert {va!r}, llama.cpp {vb!r}")
    return problems, keys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("llama_cpp", type=Path)
    ap.add_argument("--type", default="f32", choices=["f32", "f16"])
    ap.add_argument("names", nargs="*")
    a = ap.parse_args()
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    import qconvert
    from fixtures.moe_models import SPECS, build
    from fixtures.tiny_models import train_tokenizer

    tok = train_tokenizer()
    failed = False
    with tempfile.TemporaryDirectory() as td:
        for name in a.names or list(SPECS):
            d = build(name, Path(td) / name, tok)
            ours = qconvert.quantize(d, Path(td) / f"{name}-ours.gguf", type=a.type.upper()).output
            theirs = Path(td) / f"{name}-llama.cpp.gguf"
            subprocess.run([sys.executable, "-c", RUN_CONVERTER, str(a.llama_cpp), str(d), "--outfile", str(theirs),
                            "--outtype", a.type], check=True, capture_output=True)
            problems, keys = compare(ours, theirs)
            failed |= bool(problems)
            print(f"{name}: {'tensors identical' if not problems else '; '.join(problems[:5])}")
            for k in keys:
                print(f"    key {k}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

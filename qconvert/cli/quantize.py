"""`qconvert quantize`: option checks, one library call, a summary."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..pipeline import QuantizeResult, quantize
from ..plan.tensor_plan import Plan
from ._render import console, human_bytes

out_console = console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def plan_table(plan: Plan) -> Table:
    t = Table(title="plan", show_lines=False)
    for col in ("tensor", "shape", "type", "bytes", "rule"):
        t.add_column(col, justify="right" if col == "bytes" else "left")
    for tp in plan.tensors:
        rule = tp.reason + (f" [fallback: {tp.fallback}]" if tp.fallback else "") + \
            (f" [{tp.scheme}]" if tp.scheme != "rtn" else "")
        t.add_row(tp.name, "x".join(map(str, tp.shape)), tp.qtype.name, human_bytes(tp.nbytes), rule)
    return t


def totals_lines(plan: Plan) -> list[str]:
    lines = []
    for name, (n, params, nbytes) in sorted(plan.by_type().items()):
        lines.append(f"  {name:<6} {n:>4} tensors  {params:>14,} params  {human_bytes(nbytes):>10}")
    fb = plan.fallbacks
    lines.append(
        f"  total  {len(plan.tensors):>4} tensors  {plan.n_params:>14,} params  {human_bytes(plan.nbytes):>10}"
        f"  {plan.bits_per_weight:.3f} bits/weight"
    )
    lines.append(f"  fallbacks: {len(fb)} tensors, {sum(t.n_params for t in fb):,} params"
                 + ("".join(f"\n    {t.name}: {t.fallback}" for t in fb)))
    return lines


def layer_report(stats: dict) -> list[str]:
    """GPTQ's per-layer report: output error of each layer's tensors relative to their
    own weights' output, GPTQ versus round-to-nearest (tr(ΔHΔᵀ)/tr(WHWᵀ), mean over the
    layer's tensors)."""
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for name, v in stats.items():
        if "err" not in v:
            continue
        m = re.search(r"(?:blk|layers)\.(\d+)\.", name)
        by_layer.setdefault(m.group(1) if m else "-", []).append((v["err"], v.get("rtn_err", float("nan"))))
    lines = []
    for layer in sorted(by_layer, key=lambda k: int(k) if k.isdigit() else -1):
        errs = by_layer[layer]
        g = sum(e for e, _ in errs) / len(errs)
        r = sum(e for _, e in errs) / len(errs)
        lines.append(f"  layer {layer:>3}: {len(errs)} tensors, relative output error GPTQ {g:.3e} "
                     f"vs round-to-nearest {r:.3e} ({g / r:.2f}x)")
    return lines


def summary(res: QuantizeResult) -> None:
    plan = res.plan
    if res.stats:
        err_console.print("GPTQ per layer:", markup=False)
        for line in layer_report(res.stats):
            err_console.print(line, markup=False)
    for line in totals_lines(plan):
        err_console.print(line, markup=False)
    err_console.print(
        f"wrote {res.output} ({human_bytes(res.file_size)}, {len(plan.tensors)} tensors, "
        f"{res.file_size * 8 / max(1, plan.n_params):.3f} bits/weight incl. metadata) in {res.seconds:.1f}s",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        model_dir: Annotated[Path, typer.Argument(help="Hugging Face model directory (config.json + safetensors), or an F32/F16/BF16 .gguf.")],
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .gguf path (default: ./<model>-<TYPE>.gguf).")] = None,
        type_: Annotated[Optional[str], typer.Option("--type", "-t", help="llama-quantize preset (Q4_K_M, Q5_K_S, Q8_0, Q4_0, F16...; default Q4_K_M) or a plain type (Q4_K...) for every matrix.")] = None,
        bits: Annotated[Optional[int], typer.Option("--bits", "-b", help="Shorthand: 2 Q2_K, 3 Q3_K_M, 4 Q4_K_M, 5 Q5_K_M, 6 Q6_K, 8 Q8_0, 16 F16, 32 F32.")] = None,
        tensor_type: Annotated[Optional[list[str]], typer.Option("--tensor-type", help="PATTERN=TYPE for tensors whose GGUF name matches the regex (repeatable; first match wins; beats the preset).")] = None,
        output_tensor_type: Annotated[Optional[str], typer.Option("--output-tensor-type", help="Type for output.weight.")] = None,
        token_embedding_type: Annotated[Optional[str], typer.Option("--token-embedding-type", help="Type for token_embd.weight.")] = None,
        pure: Annotated[bool, typer.Option("--pure", help="The preset's base type for every matrix (no mix).")] = False,
        allow_requantize: Annotated[bool, typer.Option("--allow-requantize", help="Accept an already-quantized GGUF as input (rounding errors compound: lower quality than quantizing the original).")] = False,
        force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output file.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the per-tensor plan and exit without writing.")] = False,
        no_fallback: Annotated[bool, typer.Option("--no-fallback", help="Fail instead of falling back when a row width does not fit a type.")] = False,
        vocab_pre: Annotated[Optional[str], typer.Option("--vocab-pre", help="llama.cpp pre-tokenizer name, when it cannot be derived.")] = None,
        imatrix: Annotated[Optional[Path], typer.Option("--imatrix", help="Importance statistics (qconvert's or llama.cpp's imatrix file) weighting the K-quant scale search.")] = None,
        calibration: Annotated[Optional[str], typer.Option("--calibration", help="Collect importance statistics first: a text file, or 'default' for the bundled text (needs torch + transformers).")] = None,
        calibration_samples: Annotated[int, typer.Option("--calibration-samples", help="Calibration windows.")] = 128,
        calibration_seqlen: Annotated[int, typer.Option("--calibration-seqlen", help="Tokens per calibration window.")] = 512,
        device: Annotated[str, typer.Option("--device", help="Calibration device: cpu, cuda or auto.")] = "auto",
        save_imatrix: Annotated[Optional[Path], typer.Option("--save-imatrix", help="Save the collected statistics (llama.cpp's GGUF imatrix format; .dat for the legacy one).")] = None,
        format_: Annotated[str, typer.Option("--format", help="gguf (llama.cpp) or safetensors (int-N checkpoint transformers loads: compressed-tensors pack-quantized).")] = "gguf",
        scheme: Annotated[str, typer.Option("--scheme", help="rtn (round to nearest; importance-weighted with --imatrix/--calibration) or gptq (error feedback; runs a calibration pass).")] = "rtn",
        group_size: Annotated[int, typer.Option("--group-size", help="safetensors: weights per scale (-1: one per output channel).")] = 128,
        sym: Annotated[bool, typer.Option("--sym/--asym", help="safetensors: symmetric (absmax) or asymmetric (min-max, zero point) grids.")] = True,
        act_order: Annotated[bool, typer.Option("--act-order", help="safetensors + gptq: quantize columns in order of decreasing Hessian diagonal (static groups).")] = False,
        damp: Annotated[float, typer.Option("--damp", help="GPTQ damping, a fraction of the Hessian's mean diagonal.")] = 0.01,
        progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal).")] = None,
    ) -> None:
        """Convert a Hugging Face checkpoint to a (quantized) GGUF file."""
        res = quantize(model_dir, output, type=type_, bits=bits, force=force, dry_run=dry_run,
                       vocab_pre=vocab_pre, no_fallback=no_fallback, tensor_types=tensor_type or (),
                       output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                       pure=pure, allow_requantize=allow_requantize, imatrix=imatrix,
                       calibration=(True if calibration == "default" else calibration),
                       calibration_samples=calibration_samples, calibration_seqlen=calibration_seqlen,
                       device=device, save_imatrix=save_imatrix, scheme=scheme, damp=damp, format=format_,
                       group_size=group_size, sym=sym, act_order=act_order, progress=progress)
        for note in res.notes:
            err_console.print(f"note: {note}", markup=False)
        if res.plan is None:  # safetensors output
            if res.stats:
                err_console.print("GPTQ per layer:", markup=False)
                for line in layer_report(res.stats):
                    err_console.print(line, markup=False)
            if not dry_run:
                err_console.print(f"wrote {res.output}/ ({human_bytes(res.file_size)} of safetensors) "
                                  f"in {res.seconds:.1f}s", markup=False)
            return
        if dry_run:
            out_console.print(plan_table(res.plan))
            for line in totals_lines(res.plan):
                out_console.print(line, markup=False)
            return
        summary(res)

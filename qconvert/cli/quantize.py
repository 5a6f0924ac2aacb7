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
from ._render import console, human_bytes, text

out_console = console()
# markup off: a path or tensor name holding "[/x]" is text, not a rich tag
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def plan_table(plan: Plan, budget: Optional[dict] = None) -> Table:
    t = Table(title="plan", show_lines=False)
    cols = ("tensor", "shape", "type", "bytes") + (("pred. loss",) if budget else ()) + ("rule",)
    for col in cols:
        t.add_column(col, justify="right" if col in ("bytes", "pred. loss") else "left")
    per = (budget or {}).get("tensors", {})
    for tp in plan.tensors:
        rule = tp.reason + (f" [fallback: {tp.fallback}]" if tp.fallback else "") + \
            (f" [{tp.scheme}]" if tp.scheme != "rtn" else "")
        loss = (f"{per[tp.name]['loss']:.4g}" if tp.name in per else "-",) if budget else ()
        t.add_row(*(text(c) for c in (tp.name, "x".join(map(str, tp.shape)), tp.qtype.name, human_bytes(tp.nbytes),
                                       *loss, rule)))
    return t


def budget_lines(b: dict) -> list[str]:
    """The sized plan's figures: target, predicted file size, loss and its bound, and for
    --target-vram the memory breakdown."""
    target = {"size": lambda: f"--target-size {human_bytes(b['target_size'])} ({b['target_size']:,} bytes)",
              "bpw": lambda: f"--target-bpw {b['target_bpw']}",
              "vram": lambda: f"--target-vram {human_bytes(b['target_vram'])} at context {b['context']} "
                              f"(KV cache {b['kv_type']})"}[b["target"]]()
    lines = [f"  budget: {target}",
             f"  predicted file size {b['predicted_file_size']:,} bytes ({human_bytes(b['predicted_file_size'])}): "
             f"header {b['header_bytes']:,} + tensors {b['weights_bytes']:,}; {b['bits_per_weight']:.3f} bits/weight",
             f"  predicted loss {b['loss']:.6g}, lower bound {b['lower_bound']:.6g} "
             f"(gap {b['gap']:.3g}{', optimal' if b['exact'] else ''}); "
             f"{b['measured']} sensitivity measurements made, the rest from the cache"]
    if b["target"] == "vram":
        lines.append(f"  memory: weights {human_bytes(b['weights_bytes'])} + KV cache {human_bytes(b['kv_bytes'])} "
                     f"+ runtime overhead {human_bytes(b['overhead_bytes'])} = {human_bytes(b['vram_total'])} "
                     f"of {human_bytes(b['target_vram'])}")
    return lines


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
    for line in budget_lines(res.budget) if res.budget else ():
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
        allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="Convert weights holding NaN or Inf values instead of refusing them (they make whole quantized blocks NaN).")] = False,
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
        target_vram: Annotated[Optional[str], typer.Option("--target-vram", help="Choose per-tensor types so weights + KV cache at --context + runtime overhead fit this memory (e.g. 8GB, 8GiB).")] = None,
        target_size: Annotated[Optional[str], typer.Option("--target-size", help="Choose per-tensor types so the GGUF file is at most this size (e.g. 4.2GB).")] = None,
        target_bpw: Annotated[Optional[float], typer.Option("--target-bpw", help="Choose per-tensor types for at most this many bits per weight (e.g. 4.5).")] = None,
        context: Annotated[Optional[int], typer.Option("--context", help="--target-vram: context (tokens) the KV cache is sized for (default 4096).")] = None,
        kv_type: Annotated[str, typer.Option("--kv-type", help="--target-vram: KV cache type, f16 or q8_0.")] = "f16",
        sensitivity_cache: Annotated[Optional[Path], typer.Option("--sensitivity-cache", help="JSON file caching per-tensor sensitivity measurements (default ~/.cache/qconvert/sensitivity.json).")] = None,
    ) -> None:
        """Convert a Hugging Face checkpoint to a (quantized) GGUF file."""
        res = quantize(model_dir, output, type=type_, bits=bits, force=force, dry_run=dry_run,
                       vocab_pre=vocab_pre, no_fallback=no_fallback, tensor_types=tensor_type or (),
                       output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                       pure=pure, allow_requantize=allow_requantize, allow_nonfinite=allow_nonfinite,
                       imatrix=imatrix,
                       calibration=(True if calibration == "default" else calibration),
                       calibration_samples=calibration_samples, calibration_seqlen=calibration_seqlen,
                       device=device, save_imatrix=save_imatrix, scheme=scheme, damp=damp, format=format_,
                       group_size=group_size, sym=sym, act_order=act_order, progress=progress,
                       target_vram=target_vram, target_size=target_size, target_bpw=target_bpw, context=context,
                       kv_type=kv_type.upper(), sensitivity_cache=sensitivity_cache)
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
            out_console.print(plan_table(res.plan, res.budget))
            for line in totals_lines(res.plan):
                out_console.print(line, markup=False)
            for line in budget_lines(res.budget) if res.budget else ():
                out_console.print(line, markup=False)
            return
        summary(res)

"""`qconvert quantize`: typed options in help panels, one library call, a summary.
Options left unset reach the library as None, so it can tell what the user gave: an option
the chosen output does not use is refused there (routes/base.py), never dropped here."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from ..pipeline import quantize
from ..results import GGUFResult, QuantizeResult, SafetensorsResult
from ._quantize_report import budget_lines, layer_report, plan_table, totals_lines
from ._render import console, human_bytes

out_console = console()
# markup off: a path or tensor name holding "[/x]" is text, not a rich tag
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)

OUT, TYPES, CALIB, BUDGET, ST = "Output", "Types", "Calibration", "Budget", "Safetensors"

HELP = """Convert a Hugging Face checkpoint to a (quantized) GGUF file, or to an int-N
safetensors checkpoint. An option the chosen output does not use is an error.

\b
Examples:
  qconvert quantize ./Llama-3.2-1B -t Q4_K_M --calibration default
  qconvert quantize ./Llama-3.2-1B --target-vram 8GB --context 8192 --dry-run
  qconvert quantize ./Llama-3.2-1B --format safetensors --bits 4 --scheme gptq
"""


def _print_notes(res: QuantizeResult) -> None:
    for note in res.notes:
        err_console.print(f"note: {note}")
    if res.stats:
        err_console.print("GPTQ per layer:")
        for line in layer_report(res.stats):
            err_console.print(line)


def summary(res: GGUFResult) -> None:
    plan = res.plan
    for line in totals_lines(plan) + (budget_lines(res.budget) if res.budget else []):
        err_console.print(line)
    what = str(res.output) if len(res.files) <= 1 else f"a set of {len(res.files)} files"
    err_console.print(f"wrote {what} ({human_bytes(res.file_size)}, {len(plan.tensors)} tensors, "
                      f"{res.file_size * 8 / max(1, plan.n_params):.3f} bits/weight incl. metadata) "
                      f"in {res.seconds:.1f}s")
    if len(res.files) > 1:
        for f in res.files:
            err_console.print(f"  {f} ({human_bytes(f.stat().st_size)})")


def show(res: QuantizeResult, dry_run: bool) -> None:
    _print_notes(res)
    if isinstance(res, SafetensorsResult):
        if not dry_run:
            err_console.print(f"wrote {res.output}/ ({human_bytes(res.file_size)} of safetensors) "
                              f"in {res.seconds:.1f}s")
        return
    if dry_run:
        out_console.print(plan_table(res.plan, res.budget))
        for line in totals_lines(res.plan) + (budget_lines(res.budget) if res.budget else []):
            out_console.print(line, markup=False)
        return
    summary(res)


def register(app: typer.Typer) -> None:
    from ..arch.catalog import help_text  # the registry's own list, never a stale copy

    @app.command("quantize", help=HELP + "\n" + help_text())
    def quantize_cmd(
        model_dir: Annotated[str, typer.Argument(help="Hugging Face model directory (config.json + safetensors; FP8, GPTQ, AWQ and compressed-tensors checkpoints are decoded first), a Hub model id (ORG/NAME, fetched into the Hugging Face cache; HF_HUB_OFFLINE=1 uses the cache alone), or a .gguf (a split set: any of its files).")],
        output: Annotated[Optional[str], typer.Option("--output", "-o", rich_help_panel=OUT, help="Output .gguf file, or directory for safetensors (default: ./<model>-<TYPE>.gguf).")] = None,
        force: Annotated[bool, typer.Option("--force", "-f", rich_help_panel=OUT, help="Overwrite an existing output.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", rich_help_panel=OUT, help="Print the per-tensor plan and exit without writing.")] = False,
        format_: Annotated[Optional[str], typer.Option("--format", rich_help_panel=OUT, help="gguf (llama.cpp; default) or safetensors (int-N checkpoint transformers loads: compressed-tensors pack-quantized).")] = None,
        progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", rich_help_panel=OUT, help="Progress bar on stderr (default: when stderr is a terminal).")] = None,
        split_max_size: Annotated[Optional[str], typer.Option("--split-max-size", rich_help_panel=OUT, help="GGUF as llama.cpp's split set, NAME-00001-of-0000N.gguf ..., each file at most this size (e.g. 50GB, Hugging Face's limit); llama.cpp loads the set given the first file.")] = None,
        split_max_tensors: Annotated[Optional[int], typer.Option("--split-max-tensors", rich_help_panel=OUT, help="GGUF as a split set with at most this many tensors per file.")] = None,
        allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", rich_help_panel=OUT, help="Convert weights holding NaN or Inf, or too large for their output type (written as Inf), instead of refusing them.")] = False,
        type_: Annotated[Optional[str], typer.Option("--type", "-t", rich_help_panel=TYPES, help="llama-quantize preset (Q4_K_M, Q5_K_S, Q8_0, Q4_0, F16...; default Q4_K_M) or a plain type (Q4_K...) for every matrix.")] = None,
        bits: Annotated[Optional[int], typer.Option("--bits", "-b", rich_help_panel=TYPES, help="GGUF shorthand: 2 Q2_K, 3 Q3_K_M, 4 Q4_K_M, 5 Q5_K_M, 6 Q6_K, 8 Q8_0, 16 F16, 32 F32. Safetensors: 2, 3, 4 (default) or 8.")] = None,
        tensor_type: Annotated[Optional[list[str]], typer.Option("--tensor-type", rich_help_panel=TYPES, help="PATTERN=TYPE for tensors whose GGUF name matches the regex (repeatable; first match wins; beats the preset).")] = None,
        output_tensor_type: Annotated[Optional[str], typer.Option("--output-tensor-type", rich_help_panel=TYPES, help="Type for output.weight.")] = None,
        token_embedding_type: Annotated[Optional[str], typer.Option("--token-embedding-type", rich_help_panel=TYPES, help="Type for token_embd.weight.")] = None,
        pure: Annotated[bool, typer.Option("--pure", rich_help_panel=TYPES, help="The preset's base type for every matrix (no mix).")] = False,
        no_fallback: Annotated[bool, typer.Option("--no-fallback", rich_help_panel=TYPES, help="Fail instead of falling back when a row width does not fit a type.")] = False,
        allow_requantize: Annotated[bool, typer.Option("--allow-requantize", rich_help_panel=TYPES, help="Accept an already-quantized GGUF as input (rounding errors compound: lower quality than quantizing the original).")] = False,
        vocab_pre: Annotated[Optional[str], typer.Option("--vocab-pre", rich_help_panel=TYPES, help="llama.cpp pre-tokenizer name, when it cannot be derived.")] = None,
        scale_search: Annotated[Optional[str], typer.Option("--scale-search", rich_help_panel=TYPES, help="K-quant block scales: llama (llama.cpp's search and bytes, the default) or thorough (then refined: neighbouring integer scales and super-scales tried, each block kept only where its importance-weighted error drops; slower).")] = None,
        scheme: Annotated[Optional[str], typer.Option("--scheme", rich_help_panel=CALIB, help="rtn (round to nearest, the default; importance-weighted with --imatrix/--calibration), gptq (error feedback), gptq-imatrix (GGUF: gptq with importance-chosen block scales), awq (activation-aware scales folded into the norms), awq+gptq (awq's fold, then gptq on the folded model) or awq+gptq-imatrix (GGUF); all but rtn run a calibration pass.")] = None,
        imatrix: Annotated[Optional[str], typer.Option("--imatrix", rich_help_panel=CALIB, help="Importance statistics (qconvert's or llama.cpp's imatrix file) weighting the K-quant scale search.")] = None,
        calibration: Annotated[Optional[str], typer.Option("--calibration", rich_help_panel=CALIB, help="Calibration text file, or 'default' for the bundled text (needs torch + transformers): importance statistics, or GPTQ's pass.")] = None,
        calibration_samples: Annotated[Optional[int], typer.Option("--calibration-samples", rich_help_panel=CALIB, help="Calibration windows (default 128).")] = None,
        calibration_seqlen: Annotated[Optional[int], typer.Option("--calibration-seqlen", rich_help_panel=CALIB, help="Tokens per calibration window (default 512).")] = None,
        device: Annotated[Optional[str], typer.Option("--device", rich_help_panel=CALIB, help="Calibration device: cpu, cuda or auto (default).")] = None,
        save_imatrix: Annotated[Optional[str], typer.Option("--save-imatrix", rich_help_panel=CALIB, help="Save the collected statistics (llama.cpp's GGUF imatrix format; .dat for the legacy one).")] = None,
        damp: Annotated[Optional[float], typer.Option("--damp", rich_help_panel=CALIB, help="GPTQ damping, a fraction (0 to 1) of the Hessian's mean diagonal (default 0.01).")] = None,
        target_size: Annotated[Optional[str], typer.Option("--target-size", rich_help_panel=BUDGET, help="Choose per-tensor types so the GGUF file is at most this size (e.g. 4.2GB).")] = None,
        target_bpw: Annotated[Optional[float], typer.Option("--target-bpw", rich_help_panel=BUDGET, help="Choose per-tensor types for at most this many bits per weight (e.g. 4.5).")] = None,
        target_vram: Annotated[Optional[str], typer.Option("--target-vram", rich_help_panel=BUDGET, help="Choose per-tensor types so weights + KV cache at --context + runtime overhead fit this memory (e.g. 8GB, 8GiB).")] = None,
        context: Annotated[Optional[int], typer.Option("--context", rich_help_panel=BUDGET, help="--target-vram: context (tokens) the KV cache is sized for (default 4096).")] = None,
        kv_type: Annotated[Optional[str], typer.Option("--kv-type", rich_help_panel=BUDGET, help="--target-vram: KV cache type, f16 (default) or q8_0.")] = None,
        candidates: Annotated[Optional[str], typer.Option("--candidates", rich_help_panel=BUDGET, help="Type families a sized plan chooses from: k (Q2_K..Q6_K), legacy (Q4_0..Q5_1), iq (i-quants; IQ1_S/IQ2_XXS/IQ2_XS only with statistics), comma-separated (default: all). Q8_0 and F16 always.")] = None,
        sensitivity_cache: Annotated[Optional[str], typer.Option("--sensitivity-cache", rich_help_panel=BUDGET, help="JSON file caching per-tensor sensitivity measurements (default ~/.cache/qconvert/sensitivity.json).")] = None,
        group_size: Annotated[Optional[int], typer.Option("--group-size", rich_help_panel=ST, help="Weights per scale (default 128; -1: one per output channel).")] = None,
        sym: Annotated[Optional[bool], typer.Option("--sym/--asym", rich_help_panel=ST, help="Symmetric (absmax; default) or asymmetric (min-max, zero point) grids.")] = None,
        act_order: Annotated[bool, typer.Option("--act-order", rich_help_panel=ST, help="With --scheme gptq: quantize columns in order of decreasing Hessian diagonal (static groups).")] = False,
    ) -> None:
        res = quantize(model_dir, output, type=type_, bits=bits, force=force, dry_run=dry_run,
                       vocab_pre=vocab_pre, no_fallback=no_fallback, tensor_types=tensor_type or (),
                       output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                       pure=pure, allow_requantize=allow_requantize, allow_nonfinite=allow_nonfinite,
                       imatrix=imatrix, calibration=(True if calibration == "default" else calibration),
                       calibration_samples=calibration_samples, calibration_seqlen=calibration_seqlen,
                       device=device, save_imatrix=save_imatrix, scheme=scheme, damp=damp, format=format_,
                       group_size=group_size, sym=sym, act_order=act_order, progress=progress,
                       target_vram=target_vram, target_size=target_size, target_bpw=target_bpw, context=context,
                       kv_type=kv_type, sensitivity_cache=sensitivity_cache, split_max_size=split_max_size,
                       split_max_tensors=split_max_tensors, candidates=candidates,
                       scale_search=scale_search)
        if res is not None:  # None: a torchrun rank other than 0, which prints nothing
            show(res, dry_run)

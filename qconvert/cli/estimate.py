"""`qconvert estimate-memory`: weight (and KV cache) memory at each precision; reads no weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from ..plan.memory import MemoryEstimate, estimate_memory, smallest_gpu
from ._render import console, human_bytes, human_count, print_json, table


def _units(largest: int) -> tuple[str, str, int]:
    """Decimal and binary unit names and their power k (1000^k / 1024^k bytes), chosen so
    the largest figure reads well: GB for real models, MB for toy ones."""
    for k, dec, binary in ((3, "GB", "GiB"), (2, "MB", "MiB"), (1, "kB", "KiB")):
        if largest >= 1000**k:
            return dec, binary, k
    return "B", "B", 0


def _render(est: MemoryEstimate) -> None:
    has_kv = est.kv_bytes is not None
    dec, binary, k = _units(max(r.total_bytes for r in est.rows))
    d, b = 1000.0**k, 1024.0**k
    cols: list = ["precision", ("bits/weight", "right"), (f"weights {dec}", "right"), (f"weights {binary}", "right")]
    if has_kv:
        cols += [(f"KV cache {binary}", "right"), (f"total {dec}", "right"), (f"total {binary}", "right")]
    cols.append("fits" if est.vram is not None else "smallest common GPU")
    rows = []
    for r in est.rows:
        row = [r.name, f"{r.bits_per_weight:.4g}", f"{r.weight_bytes / d:,.2f}", f"{r.weight_bytes / b:,.2f}"]
        if has_kv:
            row += [f"{(r.kv_bytes or 0) / b:,.2f}", f"{r.total_bytes / d:,.2f}", f"{r.total_bytes / b:,.2f}"]
        if est.vram is not None:
            row.append("yes" if r.fits else "no")
        else:
            row.append(smallest_gpu(r.total_bytes) or "none (split across GPUs)")
        rows.append(row)

    title = f"{human_count(est.params)} parameters ({est.params:,}, from {est.params_source})"
    notes = [f"{dec} = 1000^{k} bytes, {binary} = 1024^{k} bytes." if k else "Sizes in bytes.",
             ("Q8_0/Q6_K/K-quant mixes: bits per weight of llama.cpp's per-tensor plan for this model"
              if any(r.note.startswith("from the") for r in est.rows) else
              "K-quant mixes are costed at their main block type (pass --model-dir for the real plan)")
             + "; INT8/INT4 count the integers only."]
    if has_kv and est.shape:
        s = est.shape
        notes.append(f"KV cache: {est.context:,} tokens x {s.n_layers} layers x {s.n_kv_heads} KV heads x "
                     f"head dim {s.head_dim}, {est.kv_type} = {human_bytes(est.kv_bytes or 0, binary=True)} "
                     "(every layer at full context: an upper bound for sliding-window models).")
    if est.vram is not None:
        notes.append(f"fits: weights{' + KV cache' if has_kv else ''}"
                     f"{' + overhead' if est.overhead else ''} within {human_bytes(est.vram)} "
                     f"({human_bytes(est.vram, binary=True)}).")
    if not est.overhead:
        notes.append("Runtimes need extra memory for activations and buffers; --overhead reserves it.")
    out = console()
    out.print(table(cols, rows, title=title))
    for note in notes:
        out.print(Text(note))


def estimate_cmd(
    params: Annotated[Optional[str], typer.Option(
        "--params", help="Parameter count: 70B, 8b, 1.5T, 125M, 70e9. Default: counted from --model-dir.",
        show_default=False)] = None,
    context: Annotated[Optional[int], typer.Option(
        "--context", help="Context length in tokens; adds the KV cache (needs the model's shape).",
        show_default=False)] = None,
    model_dir: Annotated[Optional[Path], typer.Option(
        "--model-dir", help="Hugging Face model directory: shape from config.json, parameters from the "
                            "safetensors headers.", show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option("--layers", help="Transformer layers.", show_default=False)] = None,
    kv_heads: Annotated[Optional[int], typer.Option("--kv-heads", help="Key/value heads per layer.",
                                                    show_default=False)] = None,
    head_dim: Annotated[Optional[int], typer.Option("--head-dim", help="Size of one attention head.",
                                                    show_default=False)] = None,
    kv_type: Annotated[str, typer.Option("--kv-type", help="KV cache element type: F16, F32, Q8_0, Q4_0...")] = "F16",
    vram: Annotated[Optional[str], typer.Option(
        "--vram", help="Memory to fit in: 24GB (decimal), 24GiB (binary); a bare G means GB.",
        show_default=False)] = None,
    overhead: Annotated[str, typer.Option("--overhead", help="Extra memory to reserve, e.g. 1GiB.")] = "0B",
    json_out: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
) -> None:
    """Memory needed for the weights at FP32, FP16, INT8, Q8_0 ... Q2_K, plus the KV cache
    for --context tokens. Reads config.json and safetensors headers only."""
    est = estimate_memory(params, context=context, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                          model_dir=model_dir, vram=vram, kv_type=kv_type, overhead=overhead)
    if json_out:
        print_json(est.to_dict())
    else:
        _render(est)


def register(app: typer.Typer) -> None:
    app.command("estimate-memory")(estimate_cmd)

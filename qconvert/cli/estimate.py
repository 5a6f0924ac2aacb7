"""`qconvert estimate-memory`: weight, KV cache and runtime memory at each precision, the
KV cache per context, and the longest context that fits a VRAM; reads no weights.

Choices: runtime overhead (plan.memory.runtime_overhead_bytes) is counted by default
(--no-runtime-overhead leaves it out; --overhead is an explicit extra on top); the KV table
is printed when the model's shape is known and no --context is given (--kv-table forces it)
and is always in --json."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text

from ..plan.memory import DEFAULT_CONTEXT_CAP, THIS_FILE, MemoryEstimate, estimate_memory, smallest_gpu
from ._render import console, human_bytes, human_count, print_json, printable, table, text


def _units(largest: int) -> tuple[str, str, int]:
    """Decimal and binary unit names and their power k (1000^k / 1024^k bytes), chosen so
    the largest figure reads well: GB for real models, MB for toy ones."""
    for k, dec, binary in ((3, "GB", "GiB"), (2, "MB", "MiB"), (1, "kB", "KiB")):
        if largest >= 1000**k:
            return dec, binary, k
    return "B", "B", 0


def _ctx(n: int) -> str:
    """Tokens for humans: 131072 -> "128k", 1000 -> "1,000"."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else f"{n:,}"


def _render(est: MemoryEstimate, show_kv_table: bool) -> None:
    has_kv = est.kv_bytes is not None
    with_total = has_kv or est.runtime_overhead or bool(est.overhead)
    has_max = any(r.max_context is not None for r in est.rows)
    dec, binary, k = _units(max(r.total_bytes for r in est.rows))
    d, b = 1000.0**k, 1024.0**k
    cols: list = ["precision", ("bits/weight", "right"), (f"weights {dec}", "right"), (f"weights {binary}", "right")]
    if has_kv:
        cols.append((f"KV cache {binary}", "right"))
    if est.runtime_overhead:
        cols.append((f"runtime {binary}", "right"))
    if with_total:
        cols += [(f"total {dec}", "right"), (f"total {binary}", "right")]
    if est.vram is not None:
        cols.append("fits")
        if has_max:
            cols.append(("max context", "right"))
    else:
        cols.append("smallest common GPU")
    rows = []
    for r in est.rows:
        row = [text(r.name), f"{r.bits_per_weight:.4g}", f"{r.weight_bytes / d:,.2f}", f"{r.weight_bytes / b:,.2f}"]
        if has_kv:
            row.append(f"{(r.kv_bytes or 0) / b:,.2f}")
        if est.runtime_overhead:
            row.append(f"{r.runtime_overhead_bytes / b:,.2f}")
        if with_total:
            row += [f"{r.total_bytes / d:,.2f}", f"{r.total_bytes / b:,.2f}"]
        if est.vram is not None:
            row.append("yes" if r.fits else "no")
            if has_max:
                row.append("none" if not r.max_context else f"{r.max_context:,}")
        else:
            row.append(smallest_gpu(r.total_bytes) or "none (split across GPUs)")
        rows.append(row)

    title = f"{human_count(est.params)} parameters ({est.params:,}, from {printable(est.params_source)})"
    notes = [f"{dec} = 1000^{k} bytes, {binary} = 1024^{k} bytes." if k else "Sizes in bytes.",
             ("Q8_0/Q6_K/K-quant mixes: bits per weight of llama.cpp's per-tensor plan for this model"
              if any(r.note.startswith("from the") for r in est.rows) else
              "K-quant mixes are costed at their main block type (pass --model with a model directory "
              "for the real plan)")
             + "; INT8/INT4 count the integers only."]
    if any(r.name == THIS_FILE for r in est.rows):
        notes.append(f"'{THIS_FILE}': the GGUF's tensor data as stored ({est.file_size:,}-byte file).")
    s = est.shape
    if s is not None:
        heads = (f"{s.n_kv_heads} KV heads" if not s.kv_heads_per_layer else
                 f"up to {s.n_kv_heads} KV heads (per layer: {', '.join(map(str, s.kv_heads_per_layer))})")
        dims = (f"head dim {s.head_dim}" if not s.value_length else
                f"K head {s.key_length or s.head_dim}, V head {s.value_length}")
        line = f"Model: {s.n_layers} layers x {heads} x {dims}"
        if s.sliding_window:
            line += (f"; {s.n_sliding_layers} of {s.n_layers} layers use a {s.sliding_window:,}-token "
                     "sliding window")
        if s.max_context:
            line += f"; trained context {s.max_context:,}"
        notes.append(line + ".")
    if has_kv and s is not None:
        note = (f"KV cache: {est.context:,} tokens, {est.kv_type} = "
                f"{human_bytes(est.kv_bytes or 0, binary=True)}")
        if s.sliding_window and est.kv_bytes_full != est.kv_bytes:
            note += (f" (sliding layers keep min(context, {s.sliding_window:,}) tokens; every layer at full "
                     f"context would be {human_bytes(est.kv_bytes_full or 0, binary=True)})")
        notes.append(note + ".")
    if est.runtime_overhead:
        notes.append("runtime: runtime_overhead_bytes(): 512 MiB + logits of a 512-token micro-batch + its "
                     "attention mask (an allowance; --no-runtime-overhead leaves it out).")
    if est.overhead:
        notes.append(f"--overhead adds {human_bytes(est.overhead, binary=True)} to every total.")
    if est.vram is not None:
        parts = ["weights"] + (["KV cache"] if has_kv else []) + (["runtime"] if est.runtime_overhead else []) \
            + (["--overhead"] if est.overhead else [])
        notes.append(f"fits: {' + '.join(parts)} within {human_bytes(est.vram)} "
                     f"({human_bytes(est.vram, binary=True)}).")
        if has_max:
            cap = s.max_context if s and s.max_context else DEFAULT_CONTEXT_CAP
            notes.append(f"max context: the longest context whose weights + KV cache"
                         f"{' + runtime' if est.runtime_overhead else ''}"
                         f"{' + --overhead' if est.overhead else ''} fit, capped at {cap:,} tokens.")
    out = console()
    out.print(table(cols, rows, title=title))
    for n in notes:
        out.print(Text(n))
    if show_kv_table and est.kv_table:
        swa = s is not None and s.sliding_window
        kcols: list = ["context", (f"KV cache ({est.kv_type})", "right")]
        if swa:
            kcols.append(("every layer at full context", "right"))
        krows = []
        for e in est.kv_table:
            r = [_ctx(e["context"]), human_bytes(e["kv_bytes"], binary=True)]
            if swa:
                r.append(human_bytes(e["kv_bytes_full"], binary=True))
            krows.append(r)
        out.print(table(kcols, krows, title="KV cache per context"))


def estimate_cmd(
    params: Annotated[Optional[str], typer.Option(
        "--params", help="Parameter count: 70B, 8b, 1.5T, 125M, 70e9. Default: counted from --model.",
        show_default=False)] = None,
    context: Annotated[Optional[int], typer.Option(
        "--context", help="Context length in tokens; adds the KV cache (needs the model's shape).",
        show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "--model-dir", help="A Hugging Face model directory (config.json, safetensors headers) or a "
                                       ".gguf file (its header). --model-dir is the older name.",
        show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option("--layers", help="Transformer layers.", show_default=False)] = None,
    kv_heads: Annotated[Optional[int], typer.Option("--kv-heads", help="Key/value heads per layer.",
                                                    show_default=False)] = None,
    head_dim: Annotated[Optional[int], typer.Option("--head-dim", help="Size of one attention head.",
                                                    show_default=False)] = None,
    kv_type: Annotated[str, typer.Option("--kv-type", help="KV cache element type: F16, F32, Q8_0, Q4_0...")] = "F16",
    vram: Annotated[Optional[str], typer.Option(
        "--vram", help="Memory to fit in: 24GB (decimal), 24GiB (binary); a bare G means GB. With a known "
                       "model, also gives each precision's longest context that fits.",
        show_default=False)] = None,
    overhead: Annotated[str, typer.Option("--overhead", help="Extra memory to reserve, e.g. 1GiB.")] = "0B",
    runtime: Annotated[bool, typer.Option(
        "--runtime-overhead/--no-runtime-overhead",
        help="Count the runtime's own memory (512 MiB + logits and mask buffers) in every total.")] = True,
    show_kv_table: Annotated[Optional[bool], typer.Option(
        "--kv-table/--no-kv-table", help="Show KV cache bytes at 2k..128k tokens. Default: shown when the "
                                         "model's shape is known and no --context is given.",
        show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON (KV table included).")] = False,
) -> None:
    """Memory needed for the weights at FP32, FP16, INT8, Q8_0 ... Q2_K, plus the KV cache
    for --context tokens and the runtime's own buffers. Reads config.json, safetensors
    headers or a GGUF header only."""
    est = estimate_memory(params, context=context, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                          model=model, vram=vram, kv_type=kv_type, overhead=overhead, runtime_overhead=runtime)
    if json_out:
        print_json(est.to_dict())
    else:
        _render(est, show_kv_table if show_kv_table is not None else context is None)


def register(app: typer.Typer) -> None:
    app.command("estimate-memory")(estimate_cmd)

"""`qconvert eval`: how much each quantized file lost against a reference, on held-out
text (the bundled evaluation split, or the user's own with --text). GGUF files run in
llama.cpp, model directories in transformers; the figures are theirs, not qconvert's."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ._render import console, human_bytes, print_json, printable, table, text

MAX_THREADS = 1024
MAX_CTX = 1 << 20


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_numbers(n_ctx: int, max_windows: Optional[int], threads: Optional[int]) -> None:
    if not 4 <= n_ctx <= MAX_CTX:
        raise InputError(f"--ctx {n_ctx}: give a window length in tokens from 4 to {MAX_CTX:,}")
    if max_windows is not None and max_windows < 1:
        raise InputError(f"--max-windows {max_windows}: give at least 1")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise InputError(f"--threads {threads}: give 1 to {MAX_THREADS}")


def _warn_past_training_context(paths: list[Path], n_ctx: int) -> None:
    """One line of ours naming the models --ctx runs past the length they were trained for
    (the figures then measure that too, not only the quantization); llama.cpp's own warning
    is kept out of the terminal (eval/llama_model.py)."""
    from ..eval.comparison import training_context
    from .quantize import err_console

    past = [f"{printable(p)} ({t:,})" for p in paths if (t := training_context(p)) is not None and n_ctx > t]
    if past:
        err_console.print(f"warning: --ctx {n_ctx} is longer than the training context, in tokens, of "
                          f"{', '.join(past)}: positions past it are scored too")


def _fmt(x: Optional[float], spec: str) -> str:
    return "" if x is None or x != x else format(x, spec)


def _render(cmp) -> None:
    ref = cmp.reference
    w = cmp.windows
    cols = ["file", "type", ("size", "right"), ("bits/weight", "right"), ("PPL", "right")]
    if ref is not None:
        cols += [("ΔPPL", "right"), ("mean KL", "right"), ("p99 KL", "right"), ("top-1", "right")]
    rows = []
    if ref is not None:
        m = ref.metrics
        rows.append([text(f"{Path(ref.path).name} (reference)", "bold"), ref.label, human_bytes(ref.file_bytes),
                     _fmt(ref.bits_per_weight, ".3f"), f"{m.ppl:.3f} ± {m.ppl_se:.3f}", "", "", "", ""])
    for r in cmp.rows:
        m = r.metrics
        row = [Path(r.path).name, r.label, human_bytes(r.file_bytes), _fmt(r.bits_per_weight, ".3f"),
               f"{m.ppl:.3f} ± {m.ppl_se:.3f}"]
        if ref is not None:
            d = m.ppl - ref.metrics.ppl
            row += [f"{d:+.3f}", _fmt(m.mean_kl, ".4g"), _fmt(m.p99_kl, ".4g"), _fmt(100 * m.top1, ".2f") + "%"]
        rows.append(row)
    scored = (ref or cmp.rows[0]).metrics.n_positions
    caption = (f"{w.n_windows} windows x {w.n_ctx} tokens of {w.source}; positions {w.first}..{w.n_ctx - 2} of "
               f"each window predict the next token ({scored:,} scored). KL = KL(reference || file), nats/token.")
    console().print(table(cols, rows, caption=caption))


def eval_cmd(
    models: Annotated[list[str], typer.Argument(
        help="GGUF files (run by llama.cpp) and/or Hugging Face model directories (run by transformers).",
        show_default=False)],
    reference: Annotated[Optional[str], typer.Option(
        "--reference", "-r", help="What the files are compared with: the original model directory or an F16/BF16 "
                                  "GGUF. Without it, only perplexity is reported.", show_default=False)] = None,
    text_file: Annotated[Optional[str], typer.Option(
        "--text", help="UTF-8 text to evaluate on (your own use case). Default: the bundled held-out "
                       "evaluation text.", show_default=False)] = None,
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", help="Model directory or GGUF whose tokenizer cuts the text. Default: the reference's, "
                            "else the first directory given, else the first file's.", show_default=False)] = None,
    n_ctx: Annotated[int, typer.Option("--ctx", help="Window length in tokens; the second half of each "
                                                      "window is scored.")] = 512,
    max_windows: Annotated[Optional[int], typer.Option(
        "--max-windows", help="Score at most this many windows (default: all the text holds).",
        show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", help="CPU threads per model (default: the cores this process may use).",
        show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    plot_path: Annotated[Optional[str], typer.Option(
        "--plot", help="Also write a PNG of mean KL against file size (needs --reference and matplotlib).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --plot file.")] = False,
) -> None:
    """Perplexity, KL divergence and top-1 agreement of each file against a reference, on
    held-out text. Test a quant on your own text (--text) before deploying it.

    \b
    Examples:
      qconvert eval model-Q4_K_M.gguf model-Q8_0.gguf --reference ./model
      qconvert eval *.gguf -r model-F16.gguf --text my-chats.txt --plot kl.png
    """
    from ..calib.text import read_text
    from ..eval.comparison import evaluate
    from ..progress import reporter
    from ..sink.atomic import atomic_path
    from ..sink.output_check import check_output

    _check_numbers(n_ctx, max_windows, threads)
    inputs = [Path(m) for m in models] + ([Path(reference)] if reference else [])
    plot_out = None
    if plot_path is not None:
        if reference is None:
            raise InputError("--plot shows KL against a reference: give --reference too")
        reads = inputs + ([Path(text_file)] if text_file else []) + ([Path(tokenizer)] if tokenizer else [])
        plot_out = check_output(plot_path, force, reads=reads)
        from ..eval.plot import pyplot

        pyplot()  # a missing matplotlib fails now, not after the evaluation
    text_value = read_text(text_file, "evaluation text") if text_file is not None else None
    _warn_past_training_context(inputs, n_ctx)
    with reporter() as rep:
        def on_model(name: str, n: int):
            rep.start(f"eval {name}", n)
            return lambda: rep.advance(1)

        cmp = evaluate(inputs[: len(models)], reference, text=text_value, tokenizer=tokenizer, n_ctx=n_ctx,
                       max_windows=max_windows, threads=threads or _default_threads(), on_model=on_model)
    for r in cmp.rows:
        if r.metrics.nonfinite:
            from .quantize import err_console

            err_console.print(f"warning: {printable(r.path)}: NaN or Inf logits at {r.metrics.nonfinite:,} of "
                              f"{r.metrics.n_positions:,} scored positions (its weights may hold NaN or Inf); "
                              "its figures are NaN")
    if plot_out is not None:
        from ..eval.plot import plot, plottable

        if not plottable(cmp):  # every file's KL is NaN: say so, and still print the figures
            from .quantize import err_console

            err_console.print(f"warning: --plot {printable(plot_path)} not written: no file has a finite KL "
                              "against the reference")
            plot_out = None
    if plot_out is not None:
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(plot_out))
            plot(cmp, tmp)
    if json_out:
        print_json(cmp.to_dict())
    else:
        _render(cmp)
        if plot_out is not None:
            from .quantize import err_console

            err_console.print(f"wrote {plot_path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)

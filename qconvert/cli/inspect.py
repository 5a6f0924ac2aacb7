"""`qconvert inspect PATH`: what a .gguf / safetensors file or set holds, from headers only."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Column
from rich.text import Text

from ..inspection import DEFAULT_ARRAY_ITEMS, Report, inspect, json_safe
from ._render import console, human_bytes, human_count, print_json, printable, table, text

TENSOR_ROWS = 200  # beyond this the table shows the first rows and a note (unless --all)
STRING_CHARS = 200  # longer metadata strings (chat templates) are cut in the table (unless --all)


def _value_text(v: Any, cut: bool) -> str:
    """A scalar as shown in the table: strings bare (an empty one as ''), JSON null as null."""
    if v is None:
        return "null"
    if isinstance(v, str):
        if cut and len(v) > STRING_CHARS:
            return printable(v[:STRING_CHARS]) + f"… ({len(v):,} characters; --all shows them)"
        return printable(repr(v) if v == "" else v)
    return printable(json_safe(v))


def _meta_rows(rep: Report, cut: bool):
    for key, m in rep.metadata.items():
        if m.type == "ARRAY":
            if m.value is None:
                shown = f"{m.length:,} items (nested arrays are not expanded)"
            else:
                items = ", ".join(printable(repr(x) if isinstance(x, str) else x) for x in m.value)
                shown = f"{m.length:,} items: [{items}{', …' if m.truncated else ''}]"
            yield key, f"ARRAY[{m.item_type}]", Text(shown)
        else:
            yield key, m.type, text(_value_text(m.value, cut))


def _render(rep: Report, show_tensors: bool, show_all: bool) -> None:
    out = console()
    files = f"{len(rep.files)} files" if len(rep.files) > 1 else "1 file"
    bpw = f"{rep.bits_per_weight:.3f}" if rep.bits_per_weight is not None else "-"
    summary = table(["fact", "value"], [
        ("path", rep.path),
        ("format", rep.format + (f" v{rep.header['version']}" if "version" in rep.header else "")),
        ("file size", f"{human_bytes(rep.file_size)} ({rep.file_size:,} bytes, {files})"),
        ("parameters", f"{human_count(rep.n_params)} ({rep.n_params:,})"),
        ("tensors", f"{len(rep.tensors):,} holding {human_bytes(rep.tensor_bytes)}"),
        ("bits per weight", bpw),
        ("problems", f"{len(rep.problems)} (see Problems below)" if rep.problems else "none found"),
    ], title="Summary")
    out.print(summary)
    if rep.problems:
        out.print(table(["tensor", "problem"], [("-" if p["tensor"] is None else p["tensor"], p["problem"])
                                                for p in rep.problems],
                        title="Problems (llama.cpp would refuse or misread this file)"))

    if rep.metadata:
        cols = [Column("key", overflow="fold", ratio=2), Column("type", no_wrap=True),
                Column("value", overflow="fold", ratio=3)]
        out.print(table(cols, _meta_rows(rep, not show_all),
                        title=f"Metadata ({len(rep.metadata)} keys)"))

    if not rep.tensors:
        out.print(Text("No tensors (a vocabulary-only or empty file)."))
        return
    out.print(table(["type", ("tensors", "right"), ("params", "right"), ("bytes", "right"), ("share", "right")],
                    [(t.type, f"{t.count:,}", f"{t.params:,}", human_bytes(t.bytes),
                      f"{100 * t.bytes / rep.tensor_bytes:.1f}%" if rep.tensor_bytes else "-")
                     for t in rep.totals()], title="Totals per tensor type"))

    if not show_tensors:
        return
    shown = rep.tensors if show_all or len(rep.tensors) <= TENSOR_ROWS else rep.tensors[:TENSOR_ROWS]
    sharded = any(t.file for t in shown)
    cols: list = ["name", "type", "shape", ("elements", "right"), ("bytes", "right"), ("offset", "right")]
    if sharded:
        cols.append("file")
    rows = []
    for t in shown:
        row = [t.name, t.type, "[" + ", ".join(str(d) for d in t.shape) + "]",
               f"{t.n_elements:,}", f"{t.n_bytes:,}", f"{t.offset:,}"]
        if sharded:
            row.append(t.file)
        rows.append(row)
    out.print(table(cols, rows, title="Tensors"))
    out.print(Text(f"Shape order: {rep.shape_order}. Offset: absolute byte offset in the file."))
    if len(shown) < len(rep.tensors):
        out.print(Text(f"Showing {len(shown)} of {len(rep.tensors)} tensors; pass --all for every one (or --json)."))


def inspect_cmd(
    path: Annotated[str, typer.Argument(help="A .gguf (a split set: any of its files) or .safetensors file, a "
                                              "model.safetensors.index.json, or a directory holding one of them.",
                                         show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print every fact as JSON instead of tables.")] = False,
    tensors: Annotated[bool, typer.Option("--tensors/--no-tensors", help="Show the per-tensor table.")] = True,
    show_all: Annotated[bool, typer.Option(
        "--all", help=f"Show every tensor (not the first {TENSOR_ROWS}) and every item of metadata arrays "
                      f"(not the first {DEFAULT_ARRAY_ITEMS}).")] = False,
) -> None:
    """Show a model file's format, metadata, tensors, parameter count and bits per weight.

    Reads headers only; nothing is loaded into memory. GGUF shapes are listed ne0 first
    (the reverse of PyTorch order). --json lists every tensor; long metadata arrays such
    as the vocabulary keep their length and first items unless --all is given.

    A file that cannot be read is an error (exit 2). One that reads but whose layout is
    wrong (overlapping tensors, offsets off the alignment, a tensor count one too high...)
    is shown with a Problems table ("problems" in --json) and exits 0.
    """
    rep = inspect(path, max_array_items=None if show_all else DEFAULT_ARRAY_ITEMS)
    if json_out:
        d = rep.to_dict()
        if not tensors:
            d.pop("tensors")
        print_json(d)
    else:
        _render(rep, tensors, show_all)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)

"""GGUF output as the routes write it: one file (gguf_file.py), or with --split-max-size /
--split-max-tensors (a job.Split) llama.cpp's split set (gguf_split_out.py). The choice is
made here so that neither writer module knows the other's callers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..plan.tensor_plan import Plan
from ..source.model_source import Source
from . import gguf_file, gguf_split_out
from .gguf_file import Encoder


def output_path(src: Source, output: Optional[Path], label: str, force: bool, reads=(), split=None,
                plan: Optional[Plan] = None) -> Path:
    """The checked output path: the file, or (with `split`) the first member of the set
    `plan` makes, every member checked."""
    if split is None:
        return gguf_file.output_path(src, output, label, force, reads)
    out = output if output is not None else gguf_file.default_output(src, label)
    return gguf_split_out.checked_set(src, plan, out, split, force, (src.path, *src.files, *reads))[0]


def write_gguf(src: Source, plan: Plan, out: Path, encoder: Encoder, progress, split=None) -> Optional[object]:
    """Write the file, or the set whose first member is `out`, atomically; returns the
    tokenizer facts the metadata step found."""
    if split is None:
        return gguf_file.write_gguf(src, plan, out, encoder, progress)
    return gguf_split_out.write_split(src, plan, out, encoder, progress, split)


def written(out: Path, split=None) -> dict:
    """GGUFResult's `files` and `file_size` for a finished write: `out`, or every member of
    the split set whose first member `out` is."""
    files = gguf_split_out.output_files(out, split)
    return {"files": files, "file_size": sum(f.stat().st_size for f in files)}

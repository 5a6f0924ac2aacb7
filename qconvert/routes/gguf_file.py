"""Writing a GGUF file from a source and its plan: metadata, tensor infos from the plan,
then one tensor at a time, paired with its plan entry by name. Shared by the GGUF routes."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import gguf

from ..errors import InputError
from ..plan.tensor_plan import Plan, TensorPlan
from ..progress import reporter
from ..sink.atomic import atomic_path
from ..sink.gguf import GGUFSink
from ..sink.output_check import check_output
from ..sink.tensor_pipeline import Encoder, write_tensors
from ..source.model_source import Source
from ..source.source_tensor import SourceTensor


def file_type(type_name: str) -> gguf.LlamaFileType:
    if type_name == "F32":
        return gguf.LlamaFileType.ALL_F32
    if type_name == "MXFP4":  # no file type of its own: llama.cpp's one MXFP4 type
        return gguf.LlamaFileType.MOSTLY_MXFP4_MOE
    try:
        return gguf.LlamaFileType[f"MOSTLY_{type_name}"]
    except KeyError:  # a plain K type written everywhere: name the file as its _M mix
        return gguf.LlamaFileType[f"MOSTLY_{type_name}_M"]


def default_output(src: Source, label: str) -> Path:
    return Path.cwd() / f"{src.name}-{label}.gguf"


def output_path(src: Source, output: Optional[Path], label: str, force: bool, reads=()) -> Path:
    """The checked output file (sink/output_check.py), never one of the files the run reads
    (a split GGUF input: every file of its set)."""
    out = output if output is not None else default_output(src, label)
    return check_output(out, force, reads=(src.path, *src.files, *reads))


def paired(src: Source, plan: Plan) -> list[tuple[SourceTensor, TensorPlan]]:
    """Each source tensor with its plan entry, matched by name, in the plan's order. The
    names must be the same set: a plan made for another source is an error, not a
    silently shifted pairing."""
    by_name = {s.name: s for s in src.tensors}
    planned = [tp.name for tp in plan.tensors]
    missing = sorted(set(planned) - by_name.keys())
    extra = sorted(by_name.keys() - set(planned))
    if missing or extra or len(set(planned)) != len(planned):
        raise InputError(f"{src.path}: the plan does not match the model's tensors (planned but absent: "
                         f"{', '.join(missing[:5]) or '-'}; present but unplanned: {', '.join(extra[:5]) or '-'})")
    return [(by_name[tp.name], tp) for tp in plan.tensors]


def add_metadata(src: Source, w: gguf.GGUFWriter, plan: Plan, type_name: str):
    tok = src.write_metadata(w)
    if not src.is_gguf:
        # a directory name that is not UTF-8 (Python keeps its bytes as lone surrogates)
        # cannot be a GGUF string; the bytes that do not decode become U+FFFD
        w.add_name(os.fsencode(src.name).decode("utf-8", "replace"))
    ftype = file_type(type_name)
    if type_name in ("F32", "F16", "BF16") and any(t.qtype.name == "MXFP4" for t in plan.tensors):
        # a float file holding a checkpoint's MXFP4 experts: llama.cpp's converter names it so
        ftype = gguf.LlamaFileType.MOSTLY_MXFP4_MOE
    w.add_file_type(ftype)
    if any(t.qtype.quantized for t in plan.tensors):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return tok


def write_gguf(src: Source, plan: Plan, out: Path, encoder: Encoder, progress) -> Optional[object]:
    """Write the file atomically; returns the tokenizer facts the metadata step found."""
    pairs = paired(src, plan)
    with atomic_path(out) as tmp:
        with reporter(progress) as rep:
            rep.start(plan.ftype, len(pairs))
            return write_file(tmp, src, plan, pairs, encoder, rep,
                              lambda w: add_metadata(src, w, plan, plan.ftype))


def write_file(path: Path, src: Source, plan: Plan, pairs: list[tuple[SourceTensor, TensorPlan]],
               encoder: Encoder, rep, header: Callable[[gguf.GGUFWriter], Optional[object]]) -> Optional[object]:
    """One GGUF file at `path` (not yet its final name) holding `pairs`, the tensors of
    `plan` in order: a whole model, or one member of a split set. `header` adds the
    metadata (the model's, a split member's keys) and returns what add_metadata does."""
    sink = GGUFSink(path, src.arch_name)
    tok = header(sink.writer)
    sink.add_plan(plan)
    sink.begin()
    write_tensors(sink, pairs, encoder, rep)  # slice by slice, reading/encoding/writing overlapped
    sink.close()
    return tok


def header_layout(src: Source, plan: Plan) -> tuple[int, int]:
    """(bytes before the first tensor's padding, data alignment) of the file write_gguf
    would make: the header written for real, tensor data left out. Its size depends on
    names, shapes and metadata, not on the tensors' types."""
    with _scratch_file() as path:
        sink = GGUFSink(path, src.arch_name)
        add_metadata(src, sink.writer, plan, plan.ftype)
        sink.add_plan(plan)
        sink.begin()
        alignment = sink.writer.data_alignment
        sink.close()
        return os.stat(path).st_size, alignment


@contextmanager
def _scratch_file() -> Iterator[Path]:
    """A path to write a throwaway file to. On Linux an anonymous in-memory file (memfd):
    nothing lands on any filesystem, so a killed run leaves nothing behind; elsewhere a
    temporary directory."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("qconvert-header")
        try:
            yield Path(f"/proc/{os.getpid()}/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="qconvert-header-") as td:
        yield Path(td) / "header.gguf"

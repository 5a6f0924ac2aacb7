"""read -> plan -> (dry run stops here) -> quantize -> write, one tensor at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import gguf

from .arch import adapter_for
from .errors import InputError
from .plan.rules import make_plan, single_type_rules
from .plan.tensor_plan import Plan
from .progress import reporter
from .qtypes import QTYPES
from .sink.atomic import atomic_path, check_output
from .sink.gguf import GGUFSink, encode
from .source.checkpoint import Checkpoint

BITS_TO_TYPE = {32: "F32", 16: "F16", 8: "Q8_0", 4: "Q4_0"}


@dataclass
class QuantizeResult:
    output: Optional[Path]
    plan: Plan
    seconds: float = 0.0
    file_size: int = 0
    tokenizer: Optional[object] = None
    notes: list[str] = field(default_factory=list)


def resolve_type(type_name: Optional[str], bits: Optional[int]) -> str:
    if type_name and bits:
        raise InputError("give --type or --bits, not both")
    if bits is not None:
        if bits not in BITS_TO_TYPE:
            raise InputError(f"--bits {bits}: choose one of {', '.join(map(str, sorted(BITS_TO_TYPE)))}")
        return BITS_TO_TYPE[bits]
    name = (type_name or "Q8_0").upper()
    if name not in QTYPES:
        raise InputError(f"--type {type_name}: unknown type; choose one of {', '.join(QTYPES.names())}")
    return name


def default_output(model_dir: Path, type_name: str) -> Path:
    return Path.cwd() / f"{model_dir.resolve().name}-{type_name}.gguf"


def _file_type(type_name: str) -> gguf.LlamaFileType:
    if type_name == "F32":
        return gguf.LlamaFileType.ALL_F32
    return gguf.LlamaFileType[f"MOSTLY_{type_name}"]


def quantize(
    model_dir: str | Path,
    output: str | Path | None = None,
    *,
    type: Optional[str] = None,
    bits: Optional[int] = None,
    force: bool = False,
    dry_run: bool = False,
    vocab_pre: Optional[str] = None,
    no_fallback: bool = False,
    progress: Optional[bool] = False,
) -> QuantizeResult:
    """Convert a Hugging Face model directory into a GGUF file.

    type: F32, F16, BF16, Q8_0, Q4_0...; bits: shorthand (8 -> Q8_0). Returns the plan
    and, unless dry_run, the written path, its size and the time taken."""
    t0 = time.perf_counter()
    model_dir = Path(model_dir)
    type_name = resolve_type(type, bits)
    ckpt = Checkpoint(model_dir)
    adapter = adapter_for(ckpt)
    sources = adapter.tensors()
    plan = make_plan([(s.name, s.shape, s.src_dtype) for s in sources], single_type_rules(type_name),
                     ftype=type_name, no_fallback=no_fallback)
    if dry_run:
        return QuantizeResult(None, plan, time.perf_counter() - t0)

    out = Path(output) if output is not None else default_output(model_dir, type_name)
    check_output(out, force)
    from .source.tokenizer import add_tokenizer

    with atomic_path(out) as tmp:
        sink = GGUFSink(tmp, adapter.arch_name)
        w = sink.writer
        w.add_name(model_dir.resolve().name)
        w.add_file_type(_file_type(type_name))
        if any(t.qtype.quantized for t in plan.tensors):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        adapter.write_metadata(w)
        tok = add_tokenizer(w, model_dir, config=ckpt.config, vocab_size=int(adapter.hp.require("vocab_size")),
                            vocab_pre=vocab_pre, arch=adapter.arch_name)
        sink.add_plan(plan)
        sink.begin()
        with reporter(progress) as rep:
            rep.start(f"{type_name}", len(plan.tensors))
            for src, tp in zip(sources, plan.tensors):
                data = encode(tp, src.load())
                sink.write(tp, data)
                del data
                rep.advance(1, tp.name)
        sink.close()
    return QuantizeResult(out, plan, time.perf_counter() - t0, out.stat().st_size, tok)

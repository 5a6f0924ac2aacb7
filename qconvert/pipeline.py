"""read -> plan -> (dry run stops here) -> quantize -> write, one tensor at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import gguf

from .errors import InputError
from .plan.presets import BITS_TO_PRESET, PRESETS
from .plan.tensor_plan import Plan
from .plan.type_plan import make_quant_plan  # noqa: F401  (re-exported)
from .progress import reporter
from .schemes.importance import importance_for, load_importance, mark_plan
from .qtypes import QTYPES
from .sink.atomic import atomic_path
from .sink.output_check import check_output, check_parent
from .sink.gguf import GGUFSink, encode
from .source.finite import nonfinite_policy
from .source.model_source import Source, open_source

DEFAULT_TYPE = "Q4_K_M"


@dataclass
class QuantizeResult:
    output: Optional[Path]
    plan: Plan
    seconds: float = 0.0
    file_size: int = 0
    tokenizer: Optional[object] = None
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # per-tensor figures of calibrated schemes
    budget: Optional[dict] = None  # a sized plan's figures (plan/sized.py): sizes, losses, memory breakdown


def resolve_type(type_name: Optional[str], bits: Optional[int]) -> str:
    """--type (a llama-quantize preset such as Q4_K_M, or a plain tensor type such as
    Q4_K) or --bits (2..8, 16, 32) -> one name."""
    if type_name and bits is not None:
        raise InputError("give --type or --bits, not both")
    if bits is not None:
        if bits not in BITS_TO_PRESET:
            raise InputError(f"--bits {bits}: choose one of {', '.join(map(str, sorted(BITS_TO_PRESET)))}")
        return BITS_TO_PRESET[bits]
    if not type_name:
        return DEFAULT_TYPE
    # the registries normalise spellings (" q4-k-m" is Q4_K_M); return the registered name,
    # which file names, ftype and the plan's table use
    if type_name in PRESETS:
        return PRESETS.get(type_name).name
    if type_name in QTYPES:
        return QTYPES.get(type_name).name
    raise InputError(f"--type {type_name!r}: unknown type; presets: {', '.join(PRESETS.names())}; "
                     f"plain types: {', '.join(n for n in QTYPES.names() if n not in PRESETS)}")


def default_output(src: Source, type_name: str) -> Path:
    return Path.cwd() / f"{src.name}-{type_name}.gguf"


def file_type(type_name: str) -> gguf.LlamaFileType:
    if type_name == "F32":
        return gguf.LlamaFileType.ALL_F32
    try:
        return gguf.LlamaFileType[f"MOSTLY_{type_name}"]
    except KeyError:  # a plain K type written everywhere: name the file as its _M mix
        return gguf.LlamaFileType[f"MOSTLY_{type_name}_M"]


@nonfinite_policy  # allow_nonfinite holds for every weight the call reads
def quantize(
    model: str | Path,
    output: str | Path | None = None,
    *,
    type: Optional[str] = None,
    bits: Optional[int] = None,
    force: bool = False,
    dry_run: bool = False,
    vocab_pre: Optional[str] = None,
    no_fallback: bool = False,
    tensor_types: Sequence[str] = (),
    output_tensor_type: Optional[str] = None,
    token_embedding_type: Optional[str] = None,
    pure: bool = False,
    allow_requantize: bool = False,
    allow_nonfinite: bool = False,
    imatrix: Optional[str | Path | object] = None,
    calibration: Optional[str | Path | bool] = None,
    calibration_samples: int = 128,
    calibration_seqlen: int = 512,
    device: str = "auto",
    save_imatrix: Optional[str | Path] = None,
    scheme: str = "rtn",
    damp: float = 0.01,
    format: str = "gguf",
    group_size: int = 128,
    sym: bool = True,
    act_order: bool = False,
    progress: Optional[bool] = False,
    target_vram: Optional[str | int] = None,
    target_size: Optional[str | int] = None,
    target_bpw: Optional[float] = None,
    context: Optional[int] = None,
    kv_type: str = "F16",
    sensitivity_cache: Optional[str | Path] = None,
) -> QuantizeResult:
    """Convert a Hugging Face model directory (or an F32/F16/BF16 GGUF) into a GGUF file.

    type: a llama-quantize preset (Q4_K_M, Q8_0, Q3_K_S, F16...) or a plain tensor type
    (Q4_K...) written everywhere; bits: shorthand (4 -> Q4_K_M, 8 -> Q8_0). Returns the
    plan and, unless dry_run, the written path, its size and the time taken.

    imatrix: importance statistics (a file qconvert or llama.cpp wrote, or an
    ImportanceMatrix) that weight the K-quant scale searches. calibration: True for the
    bundled calibration text, or a text file: collect those statistics first with
    transformers (needs the `calib` extra), `calibration_samples` windows of
    `calibration_seqlen` tokens, on `device`; `save_imatrix` keeps them for later runs.
    scheme="gptq": GPTQ error feedback while rounding each decoder linear to its GGUF
    block type (Q4_0, Q8_0, Q4_K, Q5_K, Q6_K; other types get importance weighting),
    from the same kind of calibration pass.

    format="safetensors": an int-N checkpoint transformers loads (compressed-tensors
    pack-quantized): `bits` (default 4), `group_size` (-1 per channel), `sym`, scheme rtn
    (absmax / min-max rounding) or gptq (`act_order` with static groups, `damp`).

    target_size ("4.2GB" or bytes: the file), target_bpw (bits per weight of the tensors) or
    target_vram ("8GB": weights + KV cache at `context` tokens of `kv_type` F16/Q8_0 +
    runtime overhead, memory.runtime_overhead_bytes): instead of a preset, each tensor gets
    the GGUF type that minimises the total measured loss within that budget (plan/sized.py);
    the measurements are cached in `sensitivity_cache` (default ~/.cache/qconvert/
    sensitivity.json) and weighted by the importance statistics when given.

    A weight holding NaN or Inf is an error naming the tensor (source/finite.py), before
    anything is written; allow_nonfinite=True converts such weights anyway."""
    t0 = time.perf_counter()
    if any(v is not None for v in (target_vram, target_size, target_bpw)):
        return _quantize_sized(model, output, force=force, dry_run=dry_run, vocab_pre=vocab_pre,
                               no_fallback=no_fallback, allow_requantize=allow_requantize, imatrix=imatrix,
                               calibration=calibration, n_samples=calibration_samples, seqlen=calibration_seqlen,
                               device=device, save_imatrix=save_imatrix, progress=progress, t0=t0,
                               target_vram=target_vram, target_size=target_size, target_bpw=target_bpw,
                               context=context, kv_type=kv_type, sensitivity_cache=sensitivity_cache,
                               conflicts=dict(type=type, bits=bits, tensor_types=tuple(tensor_types),
                                              output_tensor_type=output_tensor_type, pure=pure,
                                              token_embedding_type=token_embedding_type, scheme=scheme,
                                              format=format))
    if format == "safetensors":
        return _quantize_safetensors(model, output, bits=4 if bits is None else bits, type_name=type, force=force,
                                     dry_run=dry_run, scheme=scheme, group_size=group_size, sym=sym,
                                     act_order=act_order, damp=damp, calibration=calibration,
                                     n_samples=calibration_samples, seqlen=calibration_seqlen, device=device,
                                     progress=progress, t0=t0)
    if format != "gguf":
        raise InputError(f"--format {format}: choose gguf or safetensors")
    type_name = resolve_type(type, bits)
    src = open_source(model, vocab_pre=vocab_pre, allow_requantize=allow_requantize)
    plan = make_quant_plan(src, type_name, tensor_types=tensor_types, output_tensor_type=output_tensor_type,
                           token_embedding_type=token_embedding_type, pure=pure, no_fallback=no_fallback)
    notes: list[str] = []
    if src.requantized:
        notes.append(f"{src.requantized} tensors were already quantized: they are decoded and quantized again, "
                     "so both roundings' errors add up (expect lower quality than from the original weights)")
    if scheme not in ("rtn", "gptq"):
        raise InputError(f"--scheme {scheme}: choose rtn or gptq (importance weighting comes with --imatrix/--calibration)")
    if scheme == "gptq":
        return _quantize_gptq(src, plan, output, type_name, force=force, dry_run=dry_run, calibration=calibration,
                              n_samples=calibration_samples, seqlen=calibration_seqlen, device=device, damp=damp,
                              imatrix=imatrix, progress=progress, t0=t0)
    # the output is checked before calibration, so a bad -o fails in a second, not after it
    out = None if dry_run else _output_path(src, output, type_name, force, reads=(imatrix, calibration))
    imx = _importance(src, imatrix, calibration if not dry_run else None, calibration_samples,
                      calibration_seqlen, device, save_imatrix, progress)
    if imx is not None:
        notes += mark_plan(plan, imx)
    elif calibration is not None and dry_run:
        notes.append("dry run: calibration not run; the plan's types do not depend on it")
    if dry_run:
        return QuantizeResult(None, plan, time.perf_counter() - t0, notes=notes)

    return _write(src, plan, out, type_name, lambda tp, s: encode(tp, s.load(), importance_for(imx, tp.name)),
                  progress, t0, notes)


def _output_path(src: Source, output, type_name: str, force: bool, reads=()) -> Path:
    """The checked output file (sink/output_check.py): a regular file or nothing, in a
    directory that takes files, and none of the files this run reads (the model's, by
    identity: hard links too); a symbolic link's target is written."""
    out = Path(output) if output is not None else default_output(src, type_name)
    return check_output(out, force, reads=(src.path, *reads))


def _write(src: Source, plan: Plan, out: Path, type_name: str, encoder, progress, t0: float,
           notes: list[str]) -> QuantizeResult:
    with atomic_path(out) as tmp:
        sink = GGUFSink(tmp, src.arch_name)
        tok = _add_metadata(src, sink.writer, plan, type_name)
        sink.add_plan(plan)
        sink.begin()
        with reporter(progress) as rep:
            rep.start(type_name, len(plan.tensors))
            for s, tp in zip(src.tensors, plan.tensors):
                data = encoder(tp, s)
                sink.write(tp, data)
                del data
                rep.advance(1, tp.name)
        sink.close()
    return QuantizeResult(out, plan, time.perf_counter() - t0, out.stat().st_size, tok, notes)


def _add_metadata(src: Source, w, plan: Plan, type_name: str):
    tok = src.write_metadata(w)
    if not src.is_gguf:
        w.add_name(src.name)
    w.add_file_type(file_type(type_name))
    if any(t.qtype.quantized for t in plan.tensors):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return tok


def header_layout(src: Source, plan: Plan, type_name: str) -> tuple[int, int]:
    """(bytes before the first tensor's padding, data alignment) of the file `_write` would
    make: the header written for real to a scratch file, tensor data left out. Its size
    depends on names, shapes and metadata, not on the tensors' types."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qconvert-header-") as td:
        path = Path(td) / "header.gguf"
        sink = GGUFSink(path, src.arch_name)
        _add_metadata(src, sink.writer, plan, type_name)
        sink.add_plan(plan)
        sink.begin()
        alignment = sink.writer.data_alignment
        sink.close()
        return path.stat().st_size, alignment


def _quantize_sized(model, output, *, force: bool, dry_run: bool, vocab_pre, no_fallback: bool,
                    allow_requantize: bool, imatrix, calibration, n_samples: int, seqlen: int, device: str,
                    save_imatrix, progress, t0: float, target_vram, target_size, target_bpw, context, kv_type,
                    sensitivity_cache, conflicts: dict) -> QuantizeResult:
    from .plan.sensitivity import check_cache_path
    from .plan.sized import sized_plan

    given = [o for o, v in (("--target-vram", target_vram), ("--target-size", target_size),
                            ("--target-bpw", target_bpw)) if v is not None]
    if len(given) > 1:
        raise InputError(f"give one of {', '.join(given)}, not several")
    clash = [k for k, v in conflicts.items()
             if v and not (k == "scheme" and v == "rtn") and not (k == "format" and v == "gguf")]
    if clash:
        raise InputError(f"{given[0]} chooses every tensor's type; drop "
                         + ", ".join("--" + k.replace("_", "-") for k in clash))
    if context is not None and target_vram is None:
        raise InputError("--context sizes the KV cache of --target-vram; it has no effect on other targets")
    src = open_source(model, vocab_pre=vocab_pre, allow_requantize=allow_requantize)
    base = make_quant_plan(src, DEFAULT_TYPE, no_fallback=no_fallback)
    notes: list[str] = []
    # outputs and the cache are checked before calibration and measuring; the default
    # name depends on the plan, so then only its directory can be checked up front
    check_cache_path(sensitivity_cache)
    out = None
    if not dry_run and output is not None:
        out = _output_path(src, output, "", force, reads=(imatrix, calibration))
    elif not dry_run:
        check_parent(default_output(src, "sized"))
    if dry_run and save_imatrix is not None:
        save_imatrix = None
        notes.append("dry run: --save-imatrix not written")
    # the plan depends on the statistics, so a dry run collects them too
    imx = _importance(src, imatrix, calibration, n_samples, seqlen, device, save_imatrix, progress)
    header, alignment = header_layout(src, base, DEFAULT_TYPE)
    plan, budget = sized_plan(src, base, header_bytes=header, alignment=alignment, target_size=target_size,
                              target_bpw=target_bpw, target_vram=target_vram, context=context, kv_type=kv_type,
                              imatrix=imx, sensitivity_cache=sensitivity_cache, write_cache=not dry_run)
    if imx is not None:
        notes += mark_plan(plan, imx)
    type_name = plan.ftype
    if dry_run:
        return QuantizeResult(None, plan, time.perf_counter() - t0, notes=notes, budget=budget)
    out = out or _output_path(src, output, f"{budget['bits_per_weight']:.2f}bpw", force, reads=(imatrix, calibration))
    res = _write(src, plan, out, type_name, lambda tp, s: encode(tp, s.load(), importance_for(imx, tp.name)),
                 progress, t0, notes)
    res.budget = budget
    return res


def _quantize_gptq(src: Source, plan: Plan, output, type_name: str, *, force: bool, dry_run: bool, calibration,
                   n_samples: int, seqlen: int, device: str, damp: float, imatrix, progress, t0: float) -> QuantizeResult:
    import numpy as np

    from .schemes.gptq_driver import plan_gptq, run_gptq
    from .sink.atomic_dir import staging_dir

    if src.is_gguf:
        raise InputError(f"{src.path}: GPTQ runs the Hugging Face model; give the model directory")
    if imatrix is not None:
        raise InputError("--scheme gptq collects its own statistics; drop --imatrix")
    plan_gptq(plan, src)
    if dry_run:
        return QuantizeResult(None, plan, time.perf_counter() - t0,
                              notes=["dry run: calibration not run; the plan's types do not depend on it"])
    out = _output_path(src, output, type_name, force, reads=(calibration,))
    text = None if calibration in (None, True) else calibration
    # named .qconvert-gptq.PID.partial: a killed run's is removed by the next run there
    with staging_dir(out.parent, "qconvert-gptq") as store:
        stats = run_gptq(src, plan, store, text_file=text, n_samples=n_samples, seqlen=seqlen, device=device,
                         damp=damp, progress=progress)

        def encoder(tp, s):
            if tp.scheme == "gptq":
                return np.load(store / f"{tp.name}.npy")
            if tp.scheme == "importance":
                return encode(tp, s.load(), np.load(store / f"{tp.name}.imp.npy"))
            return encode(tp, s.load())

        res = _write(src, plan, out, type_name, encoder, progress, t0, [])
    if stats:
        ratios = [v["err"] / v["rtn_err"] for v in stats.values() if v.get("rtn_err")]
        if ratios:
            res.notes.append(f"GPTQ on {len(stats)} tensors: output error {np.mean(ratios):.3f}x that of "
                             f"round-to-nearest on average (min {min(ratios):.3f}, max {max(ratios):.3f})")
    res.stats = stats
    return res


def _quantize_safetensors(model, output, *, bits: int, type_name, force: bool, dry_run: bool, scheme: str,
                          group_size: int, sym: bool, act_order: bool, damp: float, calibration, n_samples: int,
                          seqlen: int, device: str, progress, t0: float) -> QuantizeResult:
    from .sink.atomic_dir import staging_dir
    from .sink.output_check import check_output_dir
    from .arch import check_config
    from .sink.safetensors_out import plan_safetensors, write_quantized_safetensors
    from .source.checkpoint import Checkpoint

    if type_name:
        raise InputError("--type names GGUF types; for --format safetensors give --bits (2, 3, 4, 8) and --group-size")
    if bits not in (2, 3, 4, 8):
        raise InputError(f"--bits {bits}: safetensors output takes 2, 3, 4 or 8 bits")
    if scheme not in ("rtn", "absmax", "gptq"):
        raise InputError(f"--scheme {scheme}: choose rtn (absmax rounding) or gptq for safetensors output")
    if act_order and scheme != "gptq":
        raise InputError("--act-order is a GPTQ option; add --scheme gptq")
    model = Path(model)
    if model.is_file():
        raise InputError(f"{model}: safetensors output is made from a Hugging Face model directory")
    ckpt = Checkpoint(model)
    check_config(ckpt)  # bounds and tensor shapes, before calibration builds a model from it
    splan = plan_safetensors(ckpt, bits=bits, group_size=group_size, sym=sym)
    label = f"W{bits}A16-{'G' + str(group_size) if group_size > 0 else 'CH'}{'' if sym else '-ASYM'}"
    res = QuantizeResult(None, None, notes=[f"{sum(it.quantize for it in splan.items)} projections quantized "
                                            f"({label}, {scheme}); {len(splan.ignore)} names kept dense: "
                                            f"{', '.join(splan.ignore[:6])}"])
    res.safetensors_plan = splan
    if dry_run:
        res.seconds = time.perf_counter() - t0
        return res
    out = Path(output) if output is not None else Path.cwd() / f"{model.resolve().name}-{label}"
    out = check_output_dir(out, force, input_dir=model)  # before GPTQ's calibration, not after it
    quantized = None
    with staging_dir(out.parent, "qconvert-gptq") as td:
        if scheme == "gptq":
            from .schemes.gptq_safetensors import run_gptq_int, staged_results

            targets = {it.hf_name for it in splan.items if it.quantize}
            ratios = run_gptq_int(model, Path(td), targets=targets, bits=bits, group_size=group_size, sym=sym,
                                  act_order=act_order, damp=damp, scale_dtype=splan.scale_dtype,
                                  text_file=None if calibration in (None, True) else calibration,
                                  n_samples=n_samples, seqlen=seqlen, device=device, progress=progress)
            quantized = staged_results(Path(td))
            res.stats = ratios
            if ratios:
                vals = [v["err"] / v["rtn_err"] for v in ratios.values() if v["rtn_err"] > 0]
                res.notes.append(f"GPTQ on {len(ratios)} tensors: output error {sum(vals) / max(1, len(vals)):.3f}x "
                                 "that of round-to-nearest on average")
        write_quantized_safetensors(ckpt, out, bits=bits, group_size=group_size, sym=sym, scheme="absmax",
                                    quantized=quantized, force=force, progress=progress,
                                    actorder="weight" if act_order else None)
    res.output = out
    res.file_size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    res.seconds = time.perf_counter() - t0
    return res


def _importance(src: Source, imatrix, calibration, n_samples: int, seqlen: int, device: str,
                save_imatrix, progress):
    if imatrix is not None and calibration is not None:
        raise InputError("give --imatrix or --calibration, not both")
    if imatrix is not None:
        return imatrix if hasattr(imatrix, "get") and not isinstance(imatrix, (str, Path)) else load_importance(imatrix)
    if calibration is None or calibration is False:
        return None
    if src.is_gguf:
        raise InputError(f"{src.path}: calibration runs the Hugging Face model; give the model directory, "
                         "or an importance matrix with --imatrix")
    from .calib.collect import collect_importance

    if save_imatrix is not None:  # checked before the calibration pass; an existing file is replaced
        save_imatrix = check_output(Path(save_imatrix), True, reads=(src.path, calibration))
    imx = collect_importance(src.path, text_file=None if calibration is True else calibration,
                             n_samples=n_samples, seqlen=seqlen, device=device, show_progress=progress)
    if save_imatrix is not None:
        imx.save(save_imatrix)
    return imx

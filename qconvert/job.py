"""The quantize request as one frozen value, built and checked once, whether it comes from
the CLI or from `qconvert.quantize(...)`.

`Job.given` records which options the caller set (a None default, or False for an on/off
flag, means "not given"): a route consumes a set of them, and any given option no stage of
the chosen route uses is an error naming it (routes/base.py), never silently dropped."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import InputError
from .plan.units import MAX_CONTEXT, check_count
from .sink.output_check import check_apart
from .source.input_file import checked_input_file

FORMATS = ("gguf", "safetensors")
# gptq-imatrix: GPTQ whose block scales the importance-weighted search chooses (GGUF only);
# awq: activation-aware scales folded into the norms (schemes/awq.py); awq+gptq(-imatrix):
# those scales folded first, then GPTQ on the folded model (routes/awq.py)
# --scale-search: llama.cpp's K-quant block scales, or those refined by a more thorough
# search scored on the dequantized weights (kernels/scale_refine.py)
SCALE_SEARCHES = ("llama", "thorough")
SCHEMES = ("rtn", "gptq", "gptq-imatrix", "awq", "awq+gptq", "awq+gptq-imatrix")

# option (the keyword of qconvert.quantize) -> how the CLI spells it, for messages
FLAGS = {
    "output": "--output", "type": "--type", "bits": "--bits", "tensor_types": "--tensor-type",
    "output_tensor_type": "--output-tensor-type", "token_embedding_type": "--token-embedding-type",
    "pure": "--pure", "allow_requantize": "--allow-requantize", "force": "--force", "dry_run": "--dry-run",
    "no_fallback": "--no-fallback", "vocab_pre": "--vocab-pre", "imatrix": "--imatrix",
    "calibration": "--calibration", "calibration_samples": "--calibration-samples",
    "calibration_seqlen": "--calibration-seqlen", "device": "--device", "save_imatrix": "--save-imatrix",
    "format": "--format", "scheme": "--scheme", "group_size": "--group-size", "sym": "--sym/--asym",
    "act_order": "--act-order", "damp": "--damp", "progress": "--progress", "target_vram": "--target-vram",
    "target_size": "--target-size", "target_bpw": "--target-bpw", "context": "--context", "kv_type": "--kv-type",
    "sensitivity_cache": "--sensitivity-cache", "allow_nonfinite": "--allow-nonfinite",
    "split_max_size": "--split-max-size", "split_max_tensors": "--split-max-tensors",
    "candidates": "--candidates", "scale_search": "--scale-search",
}


def flag(option: str, value: object = None) -> str:
    if option == "sym" and value is not None:
        return "--sym" if value else "--asym"
    return FLAGS.get(option, "--" + option.replace("_", "-"))


@dataclass(frozen=True)
class Budget:
    """A sized target: exactly one of size (file bytes), bpw, vram (weights + KV cache at
    `context` tokens of `kv_type` + runtime overhead)."""
    size: Optional[str | int] = None
    bpw: Optional[float] = None
    vram: Optional[str | int] = None
    context: Optional[int] = None
    kv_type: str = "F16"
    sensitivity_cache: Optional[Path] = None
    families: Optional[tuple[str, ...]] = None  # candidate type families (--candidates); None: all


@dataclass(frozen=True)
class Split:
    """GGUF output as llama.cpp's split set (gguf_split.py): at most `max_bytes` per file
    (--split-max-size) and/or `max_tensors` tensors per file (--split-max-tensors)."""
    max_bytes: Optional[int] = None
    max_tensors: Optional[int] = None


@dataclass(frozen=True)
class Calibration:
    """Importance statistics: a file (or an ImportanceMatrix) given as `imatrix`, or
    collected from `text` (True: the bundled text; a path: that file)."""
    imatrix: Optional[object] = None
    text: Optional[Path | bool] = None
    samples: int = 128
    seqlen: int = 512
    device: str = "auto"
    save_imatrix: Optional[Path] = None

    @property
    def text_file(self) -> Optional[Path]:
        return None if self.text in (None, True) else self.text


@dataclass(frozen=True)
class Overrides:
    """Per-tensor type choices layered over a GGUF preset."""
    tensor_types: tuple[str, ...] = ()
    output_tensor_type: Optional[str] = None
    token_embedding_type: Optional[str] = None
    pure: bool = False
    no_fallback: bool = False


@dataclass(frozen=True)
class Scheme:
    """How weights are rounded, and the grid of safetensors output."""
    name: str = "rtn"
    damp: float = 0.01
    group_size: int = 128
    sym: bool = True
    act_order: bool = False


@dataclass(frozen=True)
class Job:
    source: Path
    output: Optional[Path]
    format: str = "gguf"
    type_name: Optional[str] = None  # as given: a GGUF preset or plain type
    bits: Optional[int] = None
    budget: Optional[Budget] = None
    scheme: Scheme = Scheme()
    calibration: Calibration = Calibration()
    overrides: Overrides = Overrides()
    vocab_pre: Optional[str] = None
    allow_requantize: bool = False
    allow_nonfinite: bool = False
    split: Optional[Split] = None  # GGUF output as a split set
    scale_search: str = "llama"  # SCALE_SEARCHES
    force: bool = False
    dry_run: bool = False
    progress: Optional[bool] = False
    given: frozenset[str] = field(default_factory=frozenset)

    def flags(self, options) -> str:
        """The CLI spelling of `options` as this job set them, comma-separated."""
        return ", ".join(flag(o, self.scheme.sym if o == "sym" else None) for o in options)


def check_input_files(job: Job) -> None:
    """The statistics files a job reads exist and are regular files, before anything else
    is read (dry run too): a FIFO would block the run, /dev/zero would never end."""
    calib = job.calibration
    for path, what in ((calib.imatrix, "importance matrix (--imatrix)"), (calib.text, "calibration text")):
        if isinstance(path, Path):
            checked_input_file(path, what)


def _given(options: dict) -> frozenset[str]:
    """None is "not given"; so is False for an on/off flag (its off state), but not for
    --sym/--asym, where False is a choice."""
    return frozenset(k for k, v in options.items()
                     if v is not None and v != () and (v is not False or k == "sym"))


def build_job(model: str | Path, output: str | Path | None = None, **options) -> Job:
    """A Job from qconvert.quantize's keywords (None: not given, the default applies).
    Checks what needs no route: known option names, format and scheme names, one target,
    one source of importance statistics, numbers in range."""
    unknown = sorted(set(options) - set(FLAGS))
    if unknown:
        raise TypeError(f"quantize() got unexpected keyword arguments: {', '.join(unknown)}")
    given = _given(dict(options, output=output))
    o = {k: options.get(k) for k in FLAGS}
    fmt = str(o["format"] or "gguf").lower()
    if fmt not in FORMATS:
        raise InputError(f"--format {o['format']}: choose {' or '.join(FORMATS)}")
    scheme = str(o["scheme"] or "rtn").lower()
    if scheme not in SCHEMES and not (fmt == "safetensors" and scheme == "absmax"):
        raise InputError(f"--scheme {o['scheme']}: choose {', '.join(SCHEMES)} "
                         "(importance weighting comes with --imatrix/--calibration)")
    scale_search = str(o["scale_search"] or "llama").lower()
    if scale_search not in SCALE_SEARCHES:
        raise InputError(f"--scale-search {o['scale_search']}: choose {' or '.join(SCALE_SEARCHES)}")
    targets = [t for t in ("target_size", "target_bpw", "target_vram") if t in given]
    if len(targets) > 1:
        raise InputError(f"give one of {', '.join(flag(t) for t in targets)}, not several")
    if o["imatrix"] is not None and o["calibration"] not in (None, False):
        raise InputError("give --imatrix or --calibration, not both")
    _check_numbers(o)
    _check_words(o)
    paths = {"output": _path(output, "output", file=fmt == "gguf"), "source": _path(model, "source", file=False)}
    for name in ("save_imatrix", "sensitivity_cache", "imatrix", "calibration"):
        paths[name] = _path(o[name], name) if isinstance(o[name], (str, Path)) else o[name]
    check_apart({flag(k): paths[k] for k in ("output", "save_imatrix", "sensitivity_cache")})
    budget = None
    if targets:
        from .plan.sensitivity import parse_families

        budget = Budget(o["target_size"], o["target_bpw"], o["target_vram"], o["context"],
                        str(o["kv_type"] or "F16").upper(), paths["sensitivity_cache"],
                        None if o["candidates"] is None else parse_families(o["candidates"]))
    calib_text = paths["calibration"]
    calib_text = None if calib_text in (None, False) else calib_text
    imatrix = paths["imatrix"]
    return Job(
        source=paths["source"], output=paths["output"], format=fmt, type_name=o["type"], bits=o["bits"], budget=budget,
        scheme=Scheme("rtn" if scheme == "absmax" else scheme, _default(o["damp"], 0.01),
                      _default(o["group_size"], 128), _default(o["sym"], True), bool(o["act_order"])),
        calibration=Calibration(imatrix, calib_text, _default(o["calibration_samples"], 128),
                                _default(o["calibration_seqlen"], 512),
                                str(_default(o["device"], "auto")).strip().lower(),
                                paths["save_imatrix"]),
        overrides=Overrides(tuple(o["tensor_types"] or ()), o["output_tensor_type"], o["token_embedding_type"],
                            bool(o["pure"]), bool(o["no_fallback"])),
        vocab_pre=o["vocab_pre"], allow_requantize=bool(o["allow_requantize"]),
        allow_nonfinite=bool(o["allow_nonfinite"]), split=_split(o), force=bool(o["force"]),
        dry_run=bool(o["dry_run"]), scale_search=scale_search,
        progress=o["progress"] if "progress" in options else False, given=given)


# counts a request may hold: (maximum, what). Calibration keeps samples x seqlen activations
# per layer in memory; a million windows or tokens is far past any useful run.
COUNTS = {"calibration_samples": (1_000_000, "a positive number of windows"),
          "calibration_seqlen": (1 << 20, "a positive number of tokens"),
          "context": (MAX_CONTEXT, "a positive number of tokens")}
MAX_GROUP_SIZE = 1 << 20  # weights per scale; row widths of real models stay far below
MAX_BPW = 32.0  # F32


def _check_numbers(o: dict) -> None:
    """Every numeric option a whole, bounded number of its kind, before any file is read."""
    for name, (maximum, what) in COUNTS.items():
        if o[name] is not None:
            check_count(flag(name), o[name], maximum, what)
    if o["bits"] is not None and (isinstance(o["bits"], bool) or not isinstance(o["bits"], int)):
        raise InputError(f"--bits {o['bits']!r}: expected a whole number of bits")
    if o["group_size"] is not None and o["group_size"] != -1:
        check_count("--group-size", o["group_size"], MAX_GROUP_SIZE,
                    "-1 (one scale per output channel) or a positive number of weights per scale")
        g = o["group_size"]
        if g < 16 or g & (g - 1):  # what real checkpoints and GPU kernels use: 32, 64, 128, 256...
            raise InputError(f"--group-size {g}: give a power of two from 16 (32, 64, 128...) or -1 "
                             "(one scale per output channel)")
    if o["target_bpw"] is not None:
        _fraction("target_bpw", o["target_bpw"], 0.0, MAX_BPW, "a number of bits per weight above 0", low_ok=False)
    if o["damp"] is not None:  # a fraction of the Hessian's mean diagonal; GPTQ raises it itself when needed
        _fraction("damp", o["damp"], 0.0, 1.0, "a fraction of the Hessian's mean diagonal from 0", low_ok=True)


# options naming a choice: '' is a mistake (an unset shell variable), not "the default"
WORDS = ("type", "output_tensor_type", "token_embedding_type", "scheme", "kv_type", "format", "device", "vocab_pre",
         "scale_search")
DEVICE = re.compile(r"(cpu|auto|cuda(:[0-9]{1,4})?)", re.IGNORECASE)


def _check_words(o: dict) -> None:
    for name in WORDS:
        v = o[name]
        if isinstance(v, str) and not v.strip():
            raise InputError(f"{flag(name)} {v!r}: empty; give a value or leave the option out")
    if o["device"] is not None and not DEVICE.fullmatch(str(o["device"]).strip()):
        raise InputError(f"--device {o['device']!r}: choose cpu, cuda, cuda:N or auto")


def _fraction(name: str, value, lo: float, hi: float, what: str, *, low_ok: bool) -> None:
    """A finite real number in (lo, hi] (or [lo, hi] with low_ok), else an InputError naming
    the option: NaN and inf are refused, not compared."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v) or not (v >= lo if low_ok else v > lo) or v > hi:
        raise InputError(f"{flag(name)} {value!r}: expected {what} to {hi:g}")


MAX_SPLIT_TENSORS = 1 << 31  # split.tensors.count is an INT32


def _split(o: dict) -> Optional[Split]:
    from .plan.units import parse_bytes

    size, tensors = o["split_max_size"], o["split_max_tensors"]
    if size is None and tensors is None:
        return None
    if tensors is not None:
        check_count("--split-max-tensors", tensors, MAX_SPLIT_TENSORS - 1, "a positive number of tensors per file")
    return Split(None if size is None else parse_bytes(size, "--split-max-size", minimum=1), tensors)


def _default(value, default):
    return default if value is None else value


def _path(value, option: str, *, file: bool = True) -> Optional[Path]:
    """None, or the Path of a non-empty string. Path() would silently turn '' into the
    current directory and drop a trailing slash, which names a directory: for a file
    ("x.gguf/") that is refused, not written as a file named x.gguf."""
    if value is None:
        return None
    text, shown = os.fspath(value), "MODEL" if option == "source" else flag(option)
    if isinstance(text, str) and not text.strip():
        raise InputError(f"{shown} {text!r}: empty path; give a {'file' if file else 'directory'} name")
    if file and isinstance(value, str) and value.endswith(("/", os.sep)):
        raise InputError(f"{shown} {value}: a trailing '/' names a directory; give a file name")
    return Path(value)

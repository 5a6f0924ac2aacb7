"""Sensitivity: how much each tensor loses at each candidate GGUF type, measured.

loss(tensor, type) = sum over input columns c of imp_c * sum over rows (w - q)^2

where q = decode(encode(w)) with the same encoder the writer uses (importance-weighted
when statistics are given, as the written file will be) and imp_c is the mean squared
activation of input column c (the importance matrix) divided by its mean over the
tensor's columns. Without statistics imp_c = 1 and the loss is the plain squared weight
error, so a tensor without statistics in a run that has them (token_embd, output) is on
the same scale as the others'. (Raw mean squares would also compare tensors by the size
of their inputs; that ranked ffn_down, whose inputs are small, as cheap to damage and
measured worse than the plain error.) A type too narrow for the tensor's largest weight
(qtypes.MAX_ABS) would write Inf: its loss is inf, and the planner never picks it.

Big tensors are measured on a deterministic sample of whole rows (every k-th row, so that
at most MAX_SAMPLE_VALUES values are encoded per type) and the sum scaled by
rows / sampled rows: rows of one matrix have alike statistics, and a 2-D tensor of 100M
values would otherwise cost minutes per candidate type.

Measurements are cached in a JSON file keyed by the model (path + weight files' sizes and
mtimes), the tensor's name and shape, the type and a hash of the importance statistics,
so a second plan at another budget reads the file and measures nothing. The file carries
a marker; a path holding anything else is refused, never overwritten, and a dry run
reads the cache but writes nothing (not even the cache directory).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .. import kernels
from ..kernels import IMPORTANCE_TYPES
from ..errors import InputError
from ..qtypes import qtype
from ..sink.atomic import atomic_path
from ..sink.output_check import check_name, check_parent, kind_of
from ..source.finite import abs_max

# candidate types by family (--candidates): runtimes without some kernels (an older
# llama.cpp, another engine) can leave a family out. Q8_0 and F16 are always candidates.
FAMILIES = {
    "k": ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"),
    "legacy": ("Q4_0", "Q4_1", "Q5_0", "Q5_1"),
    "iq": ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS", "IQ4_NL"),
}
ALWAYS = ("Q8_0", "F16")
CANDIDATES = FAMILIES["k"] + ("Q8_0",)  # the K-quant set, before the other families were candidates


def candidate_set(families=None, *, importance: bool = False) -> tuple[str, ...]:
    """The candidate types of the chosen families (default: all), ordered by size. Types
    llama-quantize writes only with importance statistics (IQ1_*, IQ2_*, IQ3_XXS) are
    candidates only when there are."""
    from .iquant_presets import NEEDS_IMPORTANCE as REQUIRES_IMPORTANCE

    chosen = tuple(FAMILIES) if families is None else tuple(families)
    types = [t for f in chosen for t in FAMILIES[f]] + list(ALWAYS)
    if not importance:
        types = [t for t in types if t not in REQUIRES_IMPORTANCE]
    return tuple(sorted(set(types), key=lambda t: (qtype(t).bits_per_weight, t)))


def parse_families(text) -> tuple[str, ...]:
    """`--candidates k,legacy,iq` -> ("k", "legacy", "iq"); an unknown family is the
    user's error, listing the valid ones."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [str(x).strip().lower() for x in items if str(x).strip()]
    bad = [n for n in names if n not in FAMILIES]
    if bad or not names:
        raise InputError(f"--candidates {text!r}: give a comma-separated list of {', '.join(FAMILIES)} "
                         f"(Q8_0 and F16 are always candidates)")
    return tuple(dict.fromkeys(names))
MAX_SAMPLE_VALUES = 1 << 20
CACHE_VERSION = 2  # 2: importance normalised per tensor
CACHE_FORMAT = "qconvert sensitivity cache"  # the marker a cache file carries


def candidates_for(row: int, types: Iterable[str] = CANDIDATES) -> list[str]:
    """The candidate types whose block divides the row width."""
    return [t for t in types if qtype(t).fits(row)]


def sample_rows(n_rows: int, row: int, limit: int) -> np.ndarray:
    """Indices of every k-th row, k the smallest step keeping rows * row <= limit."""
    step = max(1, -(-n_rows * row // limit))
    return np.arange(0, n_rows, step)


def tensor_loss(w: np.ndarray, type_name: str, importance: Optional[np.ndarray] = None,
                weight_scale: float = 1.0) -> float:
    """Importance-weighted squared error of encode -> decode for one tensor.

    w: float32, row width last (any leading dims). importance: per input column (n_in,),
    or (n_mat, n_in) for stacked expert matrices; None for the plain error, then scaled by
    `weight_scale` (the mean importance of the run, or 1)."""
    w = np.asarray(w, dtype=np.float32)
    if abs_max(w) > qtype(type_name).max_abs:  # it would write Inf (sized.py drops the option)
        return math.inf
    row = w.shape[-1]
    imp_rows = None
    if importance is not None:
        imp = np.asarray(importance, dtype=np.float32)
        # relative to the tensor's own mean: the statistics say which columns matter within
        # a tensor (and steer the importance-weighted encoders), not how tensors compare;
        # raw mean squares rank a layer whose inputs are small (ffn_down's, after SwiGLU)
        # as cheap to damage, which measured worse than the plain error (KL 1.18x the
        # imatrix preset's at its size on the narrow fixture, 0.77x plain)
        m = float(imp.mean())
        norm = np.float32(1.0 / m) if m > 0 else np.float32(0.0)
        lead = w.shape[:-1]
        if imp.ndim == 2:  # one vector per expert matrix: (n_mat, n_in) -> every row of each
            imp_rows = np.broadcast_to(imp[:, None, :], (imp.shape[0], int(np.prod(lead[1:])), row))
        else:
            imp_rows = np.broadcast_to(imp, (int(np.prod(lead)), row))
        imp_rows = imp_rows.reshape(-1, row)
    flat = w.reshape(-1, row)
    idx = sample_rows(flat.shape[0], row, MAX_SAMPLE_VALUES)
    x = np.ascontiguousarray(flat[idx])
    imp_s = np.ascontiguousarray(imp_rows[idx]) if imp_rows is not None else None
    if type_name in ("F16", "BF16", "F32"):  # float types: the error of the cast alone (F16 never
        # overflows here: a weight beyond its range has an infinite loss above)
        q = _float_roundtrip(x, type_name)
    else:
        use_imp = imp_s if type_name in IMPORTANCE_TYPES else None
        q = kernels.decode(type_name, kernels.encode(type_name, x, importance=use_imp)).reshape(x.shape)
    err = (x.astype(np.float64) - q) ** 2
    # the encoders get the statistics as given (the written file's bytes); the sum weighs by
    # them relative to the tensor's mean (an all-zero vector counts every column alike)
    if imp_s is not None:
        total = float((err * imp_s).sum()) * float(norm) if norm > 0 else float(err.sum())
    else:
        total = float(err.sum()) * weight_scale
    return total * flat.shape[0] / len(idx)


def _float_roundtrip(x: np.ndarray, type_name: str) -> np.ndarray:
    if type_name == "F16":
        return x.astype(np.float16).astype(np.float32)
    if type_name == "BF16":  # round to nearest even on the top 16 bits
        b = x.view(np.uint32)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & np.uint32(0xFFFF0000)
        return b.view(np.float32)
    return x


# -- the cache ------------------------------------------------------------------------------

def model_key(path: Path) -> str:
    """The model's path plus the size and mtime of its weight files: a rewritten
    checkpoint at the same path gets new measurements."""
    p = Path(path).resolve()
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
    parts = [str(p)] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def importance_hash(imatrix, names: Iterable[str]) -> str:
    """A digest of the statistics of the named tensors ("plain" without an imatrix)."""
    if imatrix is None:
        return "plain"
    h = hashlib.sha256()
    for n in sorted(names):
        v = imatrix.get(n)
        h.update(n.encode())
        if v is not None:
            h.update(np.ascontiguousarray(v, dtype=np.float32).tobytes())
    return h.hexdigest()[:24]


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qconvert" / "sensitivity.json"


def _not_a_cache(path: Path, why: str) -> InputError:
    return InputError(f"{path}: {why}, not a qconvert sensitivity cache, and would be overwritten; "
                      "give another --sensitivity-cache path or remove that file")


def _is_cache(d) -> bool:
    """Our marker, or the shape of a cache written before the marker existed."""
    return (isinstance(d, dict) and isinstance(d.get("models"), dict) and isinstance(d.get("version"), int)
            and (d.get("format") == CACHE_FORMAT or set(d) == {"version", "models"}))


def read_cache_file(path: Path) -> dict:
    """The cached models of the file at `path`: {} when there is none (or an empty file),
    an InputError for anything that is not a qconvert cache, which is then never
    overwritten (a mistyped path must not turn a user's file into JSON)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise InputError(f"{path}: cannot use as --sensitivity-cache ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_cache(path, kind_of(st.st_mode))
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if not head.strip():
                return {}
            if not head.lstrip().startswith(b"{"):  # reject without reading a big foreign file
                raise _not_a_cache(path, "not a JSON object")
            d = json.loads(head + f.read())
    except OSError as e:
        raise InputError(f"{path}: cannot read --sensitivity-cache ({e.strerror})") from None
    except (ValueError, RecursionError):
        raise _not_a_cache(path, "not valid JSON") from None
    if not _is_cache(d):
        raise _not_a_cache(path, "JSON of another kind")
    if d["version"] != CACHE_VERSION:
        return {}  # an older layout: measured again and rewritten
    return {m: v for m, v in d["models"].items()
            if isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())}


def check_cache_path(path: Path | str | None, writing: bool = False) -> None:
    """Refuse an unusable cache path up front, before calibration or measuring: one that
    holds anything but a cache, and, when the run will write it, a name it cannot be
    written under or an existing directory that takes no file (/proc, a read-only mount).
    A missing directory is made when the cache is saved."""
    p = Path(path) if path is not None else default_cache_path()
    read_cache_file(p)
    if writing:
        check_name(p, p)
        if p.parent.is_dir():
            check_parent(p)


class SensitivityCache:
    """{model key: {"name|shape|type|importance hash": loss}} in one JSON file."""

    def __init__(self, path: Path | str | None):
        self.path = Path(path) if path is not None else default_cache_path()
        self.data: dict = read_cache_file(self.path)
        self.dirty = False

    @staticmethod
    def entry(name: str, shape, type_name: str, imp: str) -> str:
        return f"{name}|{'x'.join(map(str, shape))}|{type_name}|{imp}"

    def get(self, model: str, key: str) -> Optional[float]:
        return self.data.get(model, {}).get(key)

    def put(self, model: str, key: str, loss: float) -> None:
        self.data.setdefault(model, {})[key] = loss
        self.dirty = True

    def save(self) -> None:
        """Atomically (temp file, fsync, rename): a concurrent reader or a killed run sees
        the old file or the new one. The file is checked again first: it may have been
        replaced by something else since it was read."""
        if not self.dirty:
            return
        read_cache_file(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "models": self.data}))
        self.dirty = False


def measure(src, targets: dict[str, list[str]], *, imatrix=None, cache_path=None,
            save: bool = True) -> tuple[dict, int]:
    """Losses {(name, type): loss} for every tensor in `targets` (name -> candidate types)
    of `src` (a Source), from the cache where present; new measurements are added to the
    cache file unless `save` is false (a dry run writes nothing). Returns (losses,
    measured count)."""
    cache = SensitivityCache(cache_path)
    mkey = model_key(src.path)
    ikey = importance_hash(imatrix, targets)
    scale = 1.0  # statistics are normalised per tensor (tensor_loss): a tensor without any is on that scale
    handles = {s.name: s for s in src.tensors}
    out: dict[tuple[str, str], float] = {}
    measured = 0
    for name in sorted(targets):
        s = handles[name]
        w = None
        imp = imatrix.get(name) if imatrix is not None else None
        for t in targets[name]:
            key = SensitivityCache.entry(name, s.shape, t, ikey)
            loss = cache.get(mkey, key)
            if loss is None:
                if w is None:
                    w = s.load()
                loss = tensor_loss(w, t, imp, scale)
                cache.put(mkey, key, loss)
                measured += 1
            out[(name, t)] = float(loss)
        del w
    if save:
        cache.save()
    return out, measured

"""How much memory a model needs at each precision: weights, plus the KV cache for a context.

weights  = params * bits_per_weight / 8
KV cache = sum over layers of tokens * kv_heads * (K head size + V head size) * bytes per element
           (tokens = context; min(context, window) on a sliding-window layer)
runtime  = runtime_overhead_bytes(): the one allowance for compute buffers and the like
total    = memory_needed() = weights + KV cache + runtime + an explicit `overhead`

Bits per weight come from `qtypes`, the table the planner and writer also use, so a
block format's scales are counted (Q8_0 is 8.5 bits, not 8). Nothing here reads weights:
a model directory contributes its config.json and its safetensors headers only, a GGUF
its header (tensor elements and stored bytes, and the KV shape from its metadata).

`longest_context()` bisects memory_needed() for the longest context within a VRAM budget.
The library's `estimate_memory` leaves the runtime allowance out unless asked
(`runtime_overhead=True`); the CLI counts it by default.
"""


from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

from ..errors import FormatError, InputError
from ..qtypes import QTYPES, qtype
# model facts and unit parsing live in their own modules; re-exported here for callers of
# the memory model
from .model_shape import (DEFAULT_SWA_PERIOD, GGUFModel, ModelShape, is_gguf, kv_cache_bytes, model_path,  # noqa: F401
                          model_shape_from_config, model_shape_from_dir, params_from_dir, read_gguf_model)
from .units import (MAX_CONTEXT, MAX_HEAD_DIM, MAX_KV_HEADS, MAX_LAYERS, check_count,  # noqa: F401
                    parse_bytes, parse_params)

_BOUND = {"--layers": MAX_LAYERS, "--kv-heads": MAX_KV_HEADS, "--head-dim": MAX_HEAD_DIM}

# --- the precision table ------------------------------------------------------------------

# A llama.cpp mix (Q4_K_M...) gives most weights one block type and a few tensors
# (attn_v, ffn_down, output) a larger one. Until the planner's presets can size the mix
# for a known model, each mix is costed at the type that dominates it, which slightly
# under-counts (by roughly 0.1-0.4 bits per weight).
MIX_DOMINANT_TYPE = {"Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "Q3_K_M": "Q3_K", "Q2_K": "Q2_K",
                     # i-quant mixes (all but IQ4_XS need importance statistics to be made)
                     "IQ4_XS": "IQ4_XS", "IQ3_M": "IQ3_S", "IQ3_XXS": "IQ3_XXS", "IQ2_M": "IQ2_S",
                     "IQ2_XXS": "IQ2_XXS", "IQ1_S": "IQ1_S"}
# the table's llama.cpp mixes, largest first (a model's own plan gives each its real bits)
MIX_ROWS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "IQ3_M", "Q3_K_M", "IQ3_XXS", "Q2_K", "IQ2_M",
            "IQ2_XXS", "IQ1_S")


@dataclass(frozen=True)
class Precision:
    name: str
    qtype: str | None  # the qtypes entry that gives the bits; None for the pure-integer rows
    bits: float  # bits per weight
    note: str = ""


def _from_qtype(name: str, qt: str, note: str = "") -> Precision:
    return Precision(name, qt, qtype(qt).bits_per_weight, note)


PRECISIONS: list[Precision] = [
    _from_qtype("FP32", "F32"),
    _from_qtype("FP16/BF16", "F16"),
    # integer weights alone: the per-group scales of a real INT8/INT4 format are ignored
    Precision("INT8", None, 8.0, "integer weights only; scales ignored"),
    _from_qtype("Q8_0", "Q8_0"),
    _from_qtype("Q6_K", "Q6_K"),
    *(_from_qtype(mix, MIX_DOMINANT_TYPE[mix], f"costed as {MIX_DOMINANT_TYPE[mix]}, the mix's main type")
      for mix in ("Q5_K_M", "Q4_K_M", "IQ4_XS")),
    Precision("INT4", None, 4.0, "integer weights only; scales ignored"),
    *(_from_qtype(mix, MIX_DOMINANT_TYPE[mix], f"costed as {MIX_DOMINANT_TYPE[mix]}, the mix's main type")
      for mix in ("IQ3_M", "Q3_K_M", "IQ3_XXS", "Q2_K", "IQ2_M", "IQ2_XXS", "IQ1_S")),
]
_ALIASES = {"FP16": "FP16/BF16", "BF16": "FP16/BF16", "F16": "FP16/BF16", "F32": "FP32"}


def _row_name(key: str) -> str:
    k = key.strip().upper()
    k = _ALIASES.get(k, k)
    if k not in {p.name for p in PRECISIONS}:
        raise InputError(f"bits-per-weight override for unknown row {key!r}; rows: "
                         + ", ".join(p.name for p in PRECISIONS))
    return k


# Common accelerators and their memory. Vendors' "24GB" on a card is 24 GiB of chips.
COMMON_GPUS: list[tuple[str, int]] = [
    ("RTX 3060 12GB", 12 * 2**30), ("RTX 4060 Ti 16GB", 16 * 2**30), ("RTX 4090 24GB", 24 * 2**30),
    ("RTX 5090 32GB", 32 * 2**30), ("A100 40GB", 40 * 2**30), ("A100/H100 80GB", 80 * 2**30),
    ("MI300X 192GB", 192 * 2**30),
]


def smallest_gpu(total: int) -> str | None:
    """The smallest single card from COMMON_GPUS with at least `total` bytes, if any."""
    return next((name for name, size in COMMON_GPUS if size >= total), None)


# --- KV cache, runtime overhead, longest context ----------------------------------------------

def kv_bytes_per_element(kv_type: str = "F16") -> Fraction:
    """Exact bytes per cached element: a block type's bytes per block over its weights
    (Q8_0: 34/32), since llama.cpp stores each token's K (and V) row in that type. Only
    the types llama.cpp's KV cache takes (its --cache-type-k/-v choices) are accepted."""
    q = qtype(kv_type)
    if q.name not in KV_TYPES:
        raise InputError(f"--kv-type {kv_type}: llama.cpp's KV cache takes {', '.join(KV_TYPES)}")
    return Fraction(q.type_size, q.block_size)


# llama.cpp's cache types (common/arg.cpp kv_cache_types)
KV_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1")


def kv_cache_bytes_for(shape: ModelShape, context: int, kv_type: str = "F16", *, sliding: bool = True) -> int:
    """KV cache bytes of `shape` at `context` tokens: per layer, tokens x KV heads x (K head
    size + V head size) x bytes per element. A sliding-window layer keeps only
    min(context, window) tokens when `sliding` (False gives the full-context upper bound).
    llama.cpp keeps one micro-batch (512 tokens) more than the window in its SWA cache,
    padded to 256 cells; that extra (a few MB) is left out."""
    full, windowed = _kv_elements_per_token(shape)
    if sliding and shape.sliding_window:
        elems = context * full + min(context, shape.sliding_window) * windowed
    else:
        elems = context * (full + windowed)
    return math.ceil(elems * kv_bytes_per_element(kv_type))


@functools.lru_cache(maxsize=32)
def _kv_elements_per_token(shape: ModelShape) -> tuple[int, int]:
    """KV elements one token adds on full-attention layers and on sliding-window layers.
    Summed once per shape: longest_context() asks for the KV cache dozens of times per
    precision row, and a walk over every layer each time took seconds at 100,000 layers."""
    full = windowed = 0
    for heads, k, v, swa in shape.layers():
        if swa:
            windowed += heads * (k + v)
        else:
            full += heads * (k + v)
    return full, windowed


RUNTIME_FIXED_BYTES = 512 * 2**20
DEFAULT_UBATCH = 512


def runtime_overhead_bytes(weight_bytes: int, context: int, *, n_vocab: int | None = None,
                           ubatch: int = DEFAULT_UBATCH) -> int:
    """Memory a llama.cpp-style runtime needs beyond weights and KV cache, by one fixed rule:

        512 MiB                      CUDA/driver context, library workspaces and the compute
                                     graph of one micro-batch (flash attention on)
      + ubatch x n_vocab x 4         F32 logits of one micro-batch (0 when the vocabulary is unknown)
      + context x ubatch x 2         the F16 attention mask llama.cpp builds per micro-batch

    Non-decreasing in `context`, so "longest context that fits" can bisect. `weight_bytes` is
    part of the signature so a rule that scales with model size can replace this one without
    touching callers; this rule does not use it. The figure is an allowance, not a measurement."""
    if context < 0:
        raise InputError(f"context {context}: must not be negative")
    return RUNTIME_FIXED_BYTES + ubatch * (n_vocab or 0) * 4 + context * ubatch * 2


def memory_needed(weight_bytes: int, shape: ModelShape | None, context: int | None, kv_type: str = "F16", *,
                  extra: int = 0, runtime: bool = True) -> int:
    """weights + KV cache at `context` (none without a shape or context) + runtime overhead
    (when `runtime`) + `extra` (--overhead): the one total that `fits`, the max-context search
    and the planner compare with a VRAM budget."""
    ctx = context or 0
    kv = kv_cache_bytes_for(shape, ctx, kv_type) if (shape is not None and ctx) else 0
    ro = runtime_overhead_bytes(weight_bytes, ctx, n_vocab=shape.n_vocab if shape else None) if runtime else 0
    return weight_bytes + kv + ro + extra


DEFAULT_CONTEXT_CAP = 1 << 20  # searched up to 1M tokens when the model states no trained context


def longest_context(vram: int, weight_bytes: int, shape: ModelShape, kv_type: str = "F16", *, extra: int = 0,
                    runtime: bool = True, cap: int | None = None) -> int:
    """The largest context c <= cap (the model's max_context, else DEFAULT_CONTEXT_CAP) with
    memory_needed(c) <= vram; 0 when not even one token fits. Exact: bisection over a
    non-decreasing function, so c fits and c + 1 does not (unless c == cap)."""
    cap = cap or shape.max_context or DEFAULT_CONTEXT_CAP

    def fits(c: int) -> bool:
        return memory_needed(weight_bytes, shape, c, kv_type, extra=extra, runtime=runtime) <= vram

    if not fits(1):
        return 0
    if fits(cap):
        return cap
    lo, hi = 1, cap  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


KV_TABLE_CONTEXTS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)


def kv_table(shape: ModelShape, kv_type: str = "F16", contexts=KV_TABLE_CONTEXTS) -> list[dict]:
    """KV cache bytes at each context up to the model's max_context (all when unknown; a
    max_context below the largest entry is added as the last row):
    `kv_bytes` counts sliding layers at their window, `kv_bytes_full` every layer at full context."""
    cs = sorted(c for c in contexts if not shape.max_context or c <= shape.max_context)
    if shape.max_context and shape.max_context < max(contexts) and shape.max_context not in cs:
        cs.append(shape.max_context)  # the trained context itself ends the table
    out = []
    for c in cs:
        out.append({"context": c, "kv_bytes": kv_cache_bytes_for(shape, c, kv_type),
                    "kv_bytes_full": kv_cache_bytes_for(shape, c, kv_type, sliding=False)})
    return out


# --- the estimate ----------------------------------------------------------------------------

@dataclass
class MemoryRow:
    name: str
    bits_per_weight: float
    weight_bytes: int
    kv_bytes: int | None
    total_bytes: int  # weights + KV cache + overhead
    fits: bool | None  # None when no VRAM was given
    note: str = ""
    runtime_overhead_bytes: int = 0  # runtime_overhead_bytes() at this context (0 when not counted)
    max_context: int | None = None  # longest context within the VRAM (needs a VRAM and a shape)

    @property
    def weight_gb(self) -> float:
        return self.weight_bytes / 1e9

    @property
    def weight_gib(self) -> float:
        return self.weight_bytes / 2**30

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(weight_gb=self.weight_gb, weight_gib=self.weight_gib,
                 total_gb=self.total_bytes / 1e9, total_gib=self.total_bytes / 2**30,
                 smallest_common_gpu=smallest_gpu(self.total_bytes))
        return d


@dataclass
class MemoryEstimate:
    params: int
    params_source: str
    context: int | None
    shape: ModelShape | None
    kv_type: str
    kv_bytes: int | None
    overhead: int
    vram: int | None
    rows: list[MemoryRow] = field(default_factory=list)
    runtime_overhead: bool = False  # whether totals include runtime_overhead_bytes()
    kv_bytes_full: int | None = None  # KV cache with every layer at full context (upper bound)
    kv_table: list[dict] | None = None  # kv_table(): KV cache bytes at 2k..128k tokens
    model_path: str | None = None
    model_format: str | None = None  # "hf" | "gguf"
    file_size: int | None = None  # GGUF input: bytes of the whole file

    def row(self, name: str) -> MemoryRow:
        key = THIS_FILE if name.strip().lower() == THIS_FILE else _row_name(name)
        return next(r for r in self.rows if r.name == key)

    def to_dict(self) -> dict:
        return {
            "params": self.params, "params_source": self.params_source, "context": self.context,
            "shape": asdict(self.shape) if self.shape else None, "kv_type": self.kv_type,
            "kv_bytes": self.kv_bytes, "kv_bytes_full": self.kv_bytes_full, "overhead": self.overhead,
            "runtime_overhead": self.runtime_overhead, "vram": self.vram, "model_path": self.model_path,
            "model_format": self.model_format, "file_size": self.file_size, "kv_table": self.kv_table,
            "rows": [r.to_dict() for r in self.rows],
        }


THIS_FILE = "this file"  # the row of a GGUF input: its own bytes and bits per weight


def _planned_bits(model_dir: str | Path, skip: dict) -> dict[str, float]:
    """Real bits per weight of each llama.cpp preset row for this model: the preset's
    per-tensor plan, made from the checkpoint's shapes (no weights read). Empty when the
    model cannot be planned (an architecture qconvert does not convert)."""
    from ..errors import QConvertError
    from .type_plan import make_quant_plan
    from ..source.model_source import open_hf

    try:
        src = open_hf(Path(model_dir), None)
    except QConvertError:
        return {}
    out = {}
    for name in MIX_ROWS:
        if name not in skip:  # i-quant mixes are planned as made: with importance statistics
            out[name] = make_quant_plan(src, name, has_imatrix=name.startswith("IQ")).bits_per_weight
    return out


def estimate_memory(params: int | str | None = None, *, context: int | None = None, layers: int | None = None,
                    kv_heads: int | None = None, head_dim: int | None = None, model_dir: str | Path | None = None,
                    vram: int | str | None = None, kv_type: str = "F16", overhead: int | str = 0,
                    bits_per_weight_override: dict[str, float] | None = None, model: str | Path | None = None,
                    runtime_overhead: bool = False) -> MemoryEstimate:
    """Memory for weights (and a KV cache when `context` is given) at every precision in
    PRECISIONS. `params` may be "70B"-style text; without it, the model is counted.
    `model` is a Hugging Face directory (config.json + safetensors headers) or a .gguf file
    (its header: tensor elements, stored bytes, and a "this file" row at its real bits per
    weight); `model_dir` is the older name for a directory. `vram` ("24GB" or bytes) fills
    each row's `fits` and, with a known shape, `max_context`. `runtime_overhead` adds
    runtime_overhead_bytes() to every total (the CLI does by default); `overhead` is an explicit
    extra on top. `bits_per_weight_override` maps row names ("Q4_K_M", "FP16"...) to bits
    per weight, e.g. from a real plan."""
    if model is not None and model_dir is not None and Path(model) != Path(model_dir):
        raise InputError("pass --model or --model-dir, not both")
    path = Path(model if model is not None else model_dir) if (model is not None or model_dir is not None) else None
    gg = None
    if path is not None:
        path = model_path(model if model is not None else model_dir)
        if is_gguf(path):
            gg = read_gguf_model(path)
        elif not path.is_dir():
            raise InputError(f"{path}: neither a .gguf file nor a Hugging Face model directory")

    if params is not None:
        n, source = parse_params(params), "--params"
    elif gg is not None:
        n, source = gg.params, f"GGUF header of {path}"
        if n < 1:
            raise InputError(f"{path}: its GGUF holds no tensors; pass --params")
    elif path is not None:
        n, source = params_from_dir(path), f"safetensors headers in {path}"
        if n < 1:
            raise InputError(f"{path}: its safetensors hold no parameters; pass --params")
    else:
        raise InputError("pass --params (e.g. 70B) or --model (a model directory or .gguf) to count them")

    explicit = {"--layers": layers, "--kv-heads": kv_heads, "--head-dim": head_dim}
    for opt, v in explicit.items():
        if v is not None:
            check_count(opt, v, _BOUND[opt])
    if kv_type not in QTYPES:
        raise InputError(f"--kv-type {kv_type!r}: not a known tensor type; use one of {', '.join(QTYPES.names())}")
    if context is not None:
        check_count("--context", context, MAX_CONTEXT, "a positive number of tokens")
    if context is None and path is None and any(v is not None for v in explicit.values()):
        raise InputError("--layers/--kv-heads/--head-dim size the KV cache; pass --context too")

    # the model's own shape: required with --context, used when available otherwise
    base, problem = None, ""
    if gg is not None:
        base, problem = gg.shape, gg.shape_problem
    elif path is not None:
        try:
            base = model_shape_from_dir(path)
        except (InputError, FormatError) as e:
            problem = str(e)
    shape = _apply_overrides(base, layers, kv_heads, head_dim)
    _check_shape(shape, path)
    if context is not None and shape is None:
        if path is not None and not any(v is not None for v in explicit.values()) and problem:
            raise InputError(problem)
        raise InputError("--context needs the model's shape: pass --model (or --model-dir), "
                         "or all of --layers, --kv-heads and --head-dim")

    kv = kv_cache_bytes_for(shape, context, kv_type) if context is not None else None
    limit = parse_bytes(vram, "--vram", minimum=1) if vram is not None else None
    extra = parse_bytes(overhead, "--overhead")
    over = {_row_name(k): float(v) for k, v in (bits_per_weight_override or {}).items()}
    planned = _planned_bits(path, over) if (path is not None and gg is None) else {}
    est = MemoryEstimate(n, source, context, shape, qtype(kv_type).name, kv, extra, limit,
                         runtime_overhead=runtime_overhead,
                         kv_bytes_full=kv_cache_bytes_for(shape, context, kv_type, sliding=False)
                         if kv is not None else None,
                         kv_table=kv_table(shape, kv_type) if shape is not None else None,
                         model_path=str(path) if path is not None else None,
                         model_format=None if path is None else "gguf" if gg is not None else "hf",
                         file_size=gg.file_size if gg is not None else None)

    def add(name: str, bits: float, wb: int, note: str) -> None:
        total = memory_needed(wb, shape, context, kv_type, extra=extra, runtime=runtime_overhead)
        ro = runtime_overhead_bytes(wb, context or 0, n_vocab=shape.n_vocab if shape else None) \
            if runtime_overhead else 0
        maxc = (longest_context(limit, wb, shape, kv_type, extra=extra, runtime=runtime_overhead)
                if limit is not None and shape is not None else None)
        est.rows.append(MemoryRow(name, bits, wb, kv, total, None if limit is None else total <= limit, note,
                                  ro, maxc))

    if gg is not None and params is None:
        add(THIS_FILE, gg.bits_per_weight, gg.weight_bytes,
            f"tensor data as stored in {Path(gg.path).name} ({gg.file_size:,}-byte file)")
    for p in PRECISIONS:
        bits = over.get(p.name, planned.get(p.name, p.bits))
        wb = math.ceil(Fraction(n) * Fraction(bits) / 8)  # exact: 8.5 and 6.5625 are binary fractions
        note = ("bits per weight overridden" if p.name in over else
                f"from the {p.name} plan for this model" if p.name in planned else p.note)
        add(p.name, bits, wb, note)
    return est


def _check_shape(shape: ModelShape | None, path: Path | None) -> None:
    """The KV shape a model file gave keeps the same bounds as the options (a config's
    `num_hidden_layers: 1e9` would otherwise build a billion-entry per-layer list)."""
    if shape is None:
        return
    where = f"{path}: " if path is not None else ""
    for what, v, top in (("layers", shape.n_layers, MAX_LAYERS), ("KV heads", shape.n_kv_heads, MAX_KV_HEADS),
                         ("head dim", shape.head_dim, MAX_HEAD_DIM),
                         ("key length", shape.key_length, MAX_HEAD_DIM),
                         ("value length", shape.value_length, MAX_HEAD_DIM),
                         ("trained context", shape.max_context, MAX_CONTEXT),
                         ("sliding window", shape.sliding_window, MAX_CONTEXT)):
        if v is not None and not (isinstance(v, int) and 0 <= v <= top):
            raise InputError(f"{where}the model's {what} ({v!r}) is outside 0..{top:,}: check its config, or "
                             "give --layers, --kv-heads and --head-dim")


def _apply_overrides(base: ModelShape | None, layers, kv_heads, head_dim) -> ModelShape | None:
    """The model's shape with --layers/--kv-heads/--head-dim put in. An override makes the
    affected figure uniform (per-layer head counts, separate K/V sizes are dropped); the
    sliding-window layout stays while the layer count does."""
    if layers is None and kv_heads is None and head_dim is None:
        return base
    vals = [v if v is not None else (getattr(base, a) if base else None)
            for v, a in zip((layers, kv_heads, head_dim), ("n_layers", "n_kv_heads", "head_dim"))]
    if any(v is None for v in vals):
        return None
    if base is None:
        return ModelShape(*vals)
    keep = vals[0] == base.n_layers
    return replace(base, n_layers=vals[0], n_kv_heads=vals[1], head_dim=vals[2],
                   kv_heads_per_layer=base.kv_heads_per_layer if keep and kv_heads is None else None,
                   key_length=base.key_length if head_dim is None else None,
                   value_length=base.value_length if head_dim is None else None,
                   sliding_window=base.sliding_window if keep else None,
                   sliding_layers=base.sliding_layers if keep else None)

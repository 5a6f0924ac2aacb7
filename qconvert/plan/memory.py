"""How much memory a model needs at each precision: weights, plus the KV cache for a context.

weights  = params * bits_per_weight / 8
KV cache = 2 (K and V) * layers * kv_heads * head_dim * context * bytes per element

Bits per weight come from `qtypes`, the table the planner and writer also use, so a
block format's scales are counted (Q8_0 is 8.5 bits, not 8). Nothing here reads weights:
a model directory contributes its config.json and its safetensors headers only.

The estimate leaves out what a runtime adds on top (compute buffers, activations, CUDA
context: often a few hundred MB to a few GB); pass `overhead` to reserve it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path

from ..errors import FormatError, InputError
from ..qtypes import QTYPES, qtype
from ..source.safetensors_file import read_header

# --- parsing ------------------------------------------------------------------------------

_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"


def _decimal(num: str, exp: str | None) -> Decimal:
    return Decimal(num) * (Decimal(10) ** int(exp or 0))


def parse_params(text: str | int, option: str = "--params") -> int:
    """A parameter count: "70B", "7b", "1.5T", "125M", "70e9", "8000000000" -> int.
    Suffixes K/M/B/T are decimal (B = billion); a fractional result is rounded."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*" + _NUMBER + r"\s*([kKmMbBtT]?)\s*", str(text))
        if not m:
            raise InputError(f"{option} {text!r}: expected a parameter count such as 7B, 1.5T, 125M or 70e9")
        try:
            n = int((_decimal(m[1], m[2]) * _COUNT_SUFFIX[m[3].upper()]).to_integral_value())
        except (InvalidOperation, OverflowError):
            raise InputError(f"{option} {text!r}: not a usable number") from None
    if n < 1:
        raise InputError(f"{option} {text!r}: must be at least one parameter")
    return n


# GB/MB/kB/TB are decimal (SI, as disks and `df -H` count); GiB/MiB/KiB/TiB are binary.
# A bare unit letter follows the decimal reading: "8G" is 8 GB, not 8 GiB.
_BYTE_UNITS = {
    "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
    "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}


def parse_bytes(text: str | int, option: str = "--vram") -> int:
    """A size with a unit: "24GB" (decimal), "24GiB" (binary), "8G" (= 8 GB), "16000MB"."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*" + _NUMBER + r"\s*([a-zA-Z]*)\s*", str(text))
        unit = _BYTE_UNITS.get(m[3].upper()) if m else None
        if not m or not m[3]:
            raise InputError(f"{option} {text!r}: expected a size with a unit, such as 24GB, 24GiB or 16000MB")
        if unit is None:
            raise InputError(f"{option} {text!r}: unknown unit {m[3]!r}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB")
        n = int((_decimal(m[1], m[2]) * unit).to_integral_value())
    if n < 0:
        raise InputError(f"{option} {text!r}: must not be negative")
    return n


# --- the precision table ------------------------------------------------------------------

# A llama.cpp mix (Q4_K_M...) gives most weights one block type and a few tensors
# (attn_v, ffn_down, output) a larger one. Until the planner's presets can size the mix
# for a known model, each mix is costed at the type that dominates it, which slightly
# under-counts (by roughly 0.1-0.4 bits per weight).
MIX_DOMINANT_TYPE = {"Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "Q3_K_M": "Q3_K", "Q2_K": "Q2_K"}


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
      for mix in ("Q5_K_M", "Q4_K_M")),
    Precision("INT4", None, 4.0, "integer weights only; scales ignored"),
    *(_from_qtype(mix, MIX_DOMINANT_TYPE[mix], f"costed as {MIX_DOMINANT_TYPE[mix]}, the mix's main type")
      for mix in ("Q3_K_M", "Q2_K")),
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


# --- model shape and KV cache ---------------------------------------------------------------

def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, context: int,
                   bytes_per_elem: float = 2) -> int:
    """Bytes of a full-attention KV cache: 2 (K and V) * layers * kv_heads * head_dim *
    context * bytes per element (2 for F16; a block type's bits/8, e.g. 34/32 for Q8_0)."""
    return math.ceil(2 * n_layers * n_kv_heads * head_dim * context * bytes_per_elem)


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    n_kv_heads: int
    head_dim: int


def model_shape_from_dir(model_dir: str | Path) -> ModelShape:
    """Layers, KV heads and head size from a Hugging Face config.json. Multimodal configs
    (Gemma 3) keep the language model under "text_config", which wins over top-level keys.
    Every layer is sized for the full context: models with sliding-window layers (Gemma 2/3,
    Mistral) need less, so for them this is an upper bound (refining it is future work)."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError
    except FileNotFoundError:
        raise InputError(f"{path}: not found; --model-dir must hold a Hugging Face config.json") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise FormatError(f"{path}: not a readable JSON object") from None
    c = {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg

    def need(key: str) -> int:
        v = c.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{path}: has no usable {key!r}; pass --layers/--kv-heads/--head-dim instead")
        return v

    layers = need("num_hidden_layers")
    kv = need("num_key_value_heads") if c.get("num_key_value_heads") is not None else need("num_attention_heads")
    if c.get("head_dim") is not None:
        hd = need("head_dim")
    else:
        hd = need("hidden_size") // need("num_attention_heads")
    return ModelShape(layers, kv, hd)


def params_from_dir(model_dir: str | Path) -> int:
    """Elements of every tensor in the directory's safetensors (index shards or
    model.safetensors), counted from the headers. Tied weights stored once count once."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            raise FormatError(f"{index}: not a safetensors index (expected a \"weight_map\" object)") from None
        files = [d / s for s in shards]
    elif (d / "model.safetensors").is_file():
        files = [d / "model.safetensors"]
    else:
        raise InputError(f"{d}: no model.safetensors or model.safetensors.index.json to count parameters "
                         "from; pass --params")
    total = 0
    for f in files:
        if not f.is_file():
            raise InputError(f"{index}: lists shard {f.name!r}, which is missing")
        header, _ = read_header(f)
        for name, e in header.items():
            if name == "__metadata__":
                continue
            try:
                total += math.prod(int(x) for x in e["shape"])
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{f}: entry for tensor {name!r} is malformed") from None
    return total


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

    def row(self, name: str) -> MemoryRow:
        key = _row_name(name)
        return next(r for r in self.rows if r.name == key)

    def to_dict(self) -> dict:
        return {
            "params": self.params, "params_source": self.params_source, "context": self.context,
            "shape": asdict(self.shape) if self.shape else None, "kv_type": self.kv_type,
            "kv_bytes": self.kv_bytes, "overhead": self.overhead, "vram": self.vram,
            "rows": [r.to_dict() for r in self.rows],
        }


def _planned_bits(model_dir: str | Path, skip: dict) -> dict[str, float]:
    """Real bits per weight of each llama.cpp preset row for this model: the preset's
    per-tensor plan, made from the checkpoint's shapes (no weights read). Empty when the
    model cannot be planned (an architecture qconvert does not convert)."""
    from ..errors import QConvertError
    from ..pipeline import make_quant_plan
    from ..source.model_source import open_hf

    try:
        src = open_hf(Path(model_dir), None)
    except QConvertError:
        return {}
    out = {}
    for name in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"):
        if name not in skip:
            out[name] = make_quant_plan(src, name).bits_per_weight
    return out


def estimate_memory(params: int | str | None = None, *, context: int | None = None, layers: int | None = None,
                    kv_heads: int | None = None, head_dim: int | None = None, model_dir: str | Path | None = None,
                    vram: int | str | None = None, kv_type: str = "F16", overhead: int | str = 0,
                    bits_per_weight_override: dict[str, float] | None = None) -> MemoryEstimate:
    """Memory for weights (and a KV cache when `context` is given) at every precision in
    PRECISIONS. `params` may be "70B"-style text; without it, `model_dir`'s safetensors are
    counted. `vram` ("24GB" or bytes) fills each row's `fits`. `bits_per_weight_override`
    maps row names ("Q4_K_M", "FP16"...) to bits per weight, e.g. from a real plan."""
    if params is not None:
        n, source = parse_params(params), "--params"
    elif model_dir is not None:
        n, source = params_from_dir(model_dir), f"safetensors headers in {model_dir}"
        if n < 1:
            raise InputError(f"{model_dir}: its safetensors hold no parameters; pass --params")
    else:
        raise InputError("pass --params (e.g. 70B) or --model-dir to count them")

    explicit = {"--layers": layers, "--kv-heads": kv_heads, "--head-dim": head_dim}
    for opt, v in explicit.items():
        if v is not None and v < 1:
            raise InputError(f"{opt} {v}: must be a positive whole number")
    if kv_type not in QTYPES:
        raise InputError(f"--kv-type {kv_type!r}: not a known tensor type; use one of {', '.join(QTYPES.names())}")
    shape = kv = None
    if context is not None:
        if context < 1:
            raise InputError(f"--context {context}: must be a positive number of tokens")
        base = model_shape_from_dir(model_dir) if model_dir is not None else None
        vals = [v if v is not None else (getattr(base, a) if base else None)
                for v, a in zip(explicit.values(), ("n_layers", "n_kv_heads", "head_dim"))]
        if any(v is None for v in vals):
            raise InputError("--context needs the model's shape: pass --model-dir, "
                             "or all of --layers, --kv-heads and --head-dim")
        shape = ModelShape(*vals)
        kv = kv_cache_bytes(shape.n_layers, shape.n_kv_heads, shape.head_dim, context,
                            QTYPES.get(kv_type).bits_per_weight / 8)
    elif any(v is not None for v in explicit.values()):
        raise InputError("--layers/--kv-heads/--head-dim size the KV cache; pass --context too")

    limit = parse_bytes(vram) if vram is not None else None
    extra = parse_bytes(overhead, "--overhead")
    over = {_row_name(k): float(v) for k, v in (bits_per_weight_override or {}).items()}
    planned = _planned_bits(model_dir, over) if model_dir is not None else {}
    est = MemoryEstimate(n, source, context, shape, qtype(kv_type).name, kv, extra, limit)
    for p in PRECISIONS:
        bits = over.get(p.name, planned.get(p.name, p.bits))
        wb = math.ceil(Fraction(n) * Fraction(bits) / 8)  # exact: 8.5 and 6.5625 are binary fractions
        total = wb + (kv or 0) + extra
        note = ("bits per weight overridden" if p.name in over else
                f"from the {p.name} plan for this model" if p.name in planned else p.note)
        est.rows.append(MemoryRow(p.name, bits, wb, kv, total, None if limit is None else total <= limit, note))
    return est

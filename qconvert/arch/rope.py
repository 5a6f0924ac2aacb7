"""Rope factor tables: per-frequency factors llama.cpp reads from generated tensors.

- Llama 3.1 (`rope_type: llama3`): one `rope_freqs` table computed from the config.
- LongRoPE (Phi-3/3.5/4, `rope_type: longrope` or 4.x `su`): the config lists a long and a
  short factor per frequency; llama.cpp takes them as `rope_factors_long/short` and picks
  one by context size, as transformers picks by sequence length, and scales attention by
  the factor transformers derives from the context extension."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..errors import FormatError
from ..source.safetensors_file import TensorHandle
from ..source.source_tensor import SourceTensor
from .hparams import HParams, is_number, show


def generated(name: str, values: np.ndarray) -> SourceTensor:
    """A tensor the checkpoint does not hold, computed from the config."""
    arr = np.ascontiguousarray(values, dtype=np.float32)
    h = TensorHandle(name, "F32", arr.shape, lambda: arr, "generated")
    return SourceTensor(f"{name}.weight", "(generated)", arr.shape, "F32", h)


def llama3_rope_factors(rp: dict, head_dim: int) -> np.ndarray:
    """Per-frequency scale factors of Llama 3.1's rope scaling, as llama.cpp reads them
    from the rope_freqs tensor: 1 for short wavelengths, `factor` for long ones, and a
    smooth blend between."""
    base = float(rp.get("rope_theta", 10000.0))
    factor = float(rp.get("factor", 8.0))
    lo = float(rp.get("low_freq_factor", 1.0))
    hi = float(rp.get("high_freq_factor", 4.0))
    old_ctx = float(rp.get("original_max_position_embeddings", 8192))
    freqs = _inverse_frequencies(base, head_dim)
    f32 = np.float32
    out = []
    for f in freqs:
        # float32 step by step as llama.cpp's converter computes it with torch scalars
        # (a / x there is reciprocal(x) * a), so the table is bit-identical to its own
        wavelen = (f32(1) / f) * f32(2 * math.pi)
        if wavelen < f32(old_ctx / hi):
            out.append(f32(1))
        elif wavelen > f32(old_ctx / lo):
            out.append(f32(factor))
        else:
            smooth = ((f32(1) / wavelen) * f32(old_ctx) - f32(lo)) / f32(hi - lo)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.asarray(out, dtype=f32)


def _inverse_frequencies(base: float, head_dim: int) -> np.ndarray:
    """1 / base^(2i/d) in float32. torch's float32 pow (what llama.cpp's converter and
    transformers use) differs from any NumPy pow in the last bit for some exponents, so
    torch computes it when it is installed; otherwise the correctly rounded value."""
    try:
        import torch
    except ImportError:
        e = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
        return (1.0 / np.float64(base) ** e).astype(np.float32)
    t = base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return (t.reciprocal()).numpy()


class LongRope:
    """LongRoPE facts of a config, checked: the two factor tables, the original context
    and the attention factor."""

    def __init__(self, hp: HParams, n_pairs: int) -> None:
        rp = hp.rope()
        self.long = self._table(hp, rp, "long_factor", n_pairs)
        self.short = self._table(hp, rp, "short_factor", n_pairs)
        # Phi-3 keeps it beside the rope parameters; transformers 5 copies that value over
        # the one inside them, so it wins
        orig = hp.integer("original_max_position_embeddings", lo=1, hi=2**32 - 1, default=None)
        if orig is None:
            orig = rp.get("original_max_position_embeddings")  # checked by rope()
        if orig is None:
            raise FormatError(f"{hp.source}: longrope needs original_max_position_embeddings")
        self.original_context = int(orig)
        factor = rp.get("factor")
        if factor is None:  # transformers: the ratio of the extended to the original context
            ctx = hp.context_length or self.original_context
            factor = ctx / self.original_context
        attn = rp.get("attention_factor")
        if attn is None:
            attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(self.original_context))
        self.attention_factor = float(attn)

    @staticmethod
    def _table(hp: HParams, rp: dict, key: str, n: int) -> np.ndarray:
        v = rp.get(key)
        name = hp.rope_key_name(key)
        if not isinstance(v, list) or len(v) != n or not all(is_number(x) and 0 < x <= 1e6 for x in v):
            raise FormatError(f"{hp.source}: {name} is {show(v)}; expected {n} positive numbers "
                              "(one per rotated pair of head dimensions)")
        return np.asarray(v, dtype=np.float32)

    def tensors(self) -> list[SourceTensor]:
        return [generated("rope_factors_long", self.long), generated("rope_factors_short", self.short)]


def is_longrope(rp: dict) -> bool:
    return (rp.get("rope_type") or "").lower() in ("longrope", "su")


def optional_longrope(hp: HParams, n_pairs: int) -> Optional[LongRope]:
    rp = hp.rope()
    if not is_longrope(rp):
        return None
    return LongRope(hp, n_pairs)

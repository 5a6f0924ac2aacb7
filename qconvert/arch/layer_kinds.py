"""Per-layer kinds a config describes: which layers use a sliding window, which skip rope.

transformers 5 lists `layer_types` ("sliding_attention" / "full_attention"); older configs
give a period (`sliding_window_pattern`: every period-th layer is global) or nothing, in
which case the family's own default holds. llama.cpp knows a built-in period per
architecture and reads a per-layer array only when one is written, so the array is
written only where it differs (older llama.cpp builds lack the array key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import gguf

from ..errors import FormatError, UnsupportedError
from .hparams import HParams, show

KINDS = ("sliding_attention", "full_attention")


def period_pattern(n_layers: int, period: int, dense_first: bool = False) -> list[bool]:
    """llama.cpp's built-in pattern: with period p, layer i slides unless it is the last of
    each group of p (or the first, when dense_first); period 0 means every layer slides."""
    if period == 0:
        return [True] * n_layers
    if dense_first:
        return [i % period != 0 for i in range(n_layers)]
    return [i % period < period - 1 for i in range(n_layers)]


def sliding_layers(hp: HParams, default_period: int) -> list[bool]:
    """Which layers use the sliding window: `layer_types` when given, else every
    `sliding_window_pattern`-th layer is global, else the family's default period."""
    n = hp.n_layers
    types = hp.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n:
            raise FormatError(f"{hp.source}: {hp.key_name('layer_types')} should list {n} entries "
                              f"({hp.label('n_layers')}), not {show(types)}")
        bad = sorted({show(t) for t in types if t not in KINDS})
        if bad:
            raise UnsupportedError(f"{hp.source}: {hp.key_name('layer_types')} holds {', '.join(bad)}; "
                                   f"only {' and '.join(KINDS)} are supported")
        return [t == "sliding_attention" for t in types]
    spelled = hp.get("sliding_window_pattern")
    if isinstance(spelled, str):  # EXAONE 4 spells one period as letters: "LLLG"
        if not spelled or set(spelled) - {"L", "G"} or len(spelled) > n:
            raise hp.bad("sliding_window_pattern", spelled, "a period (integer) or letters L (local) and G (global)")
        return [spelled[i % len(spelled)] == "L" for i in range(n)]
    period = hp.integer("sliding_window_pattern", "_sliding_window_pattern", lo=1, hi=1 << 16,
                        default=default_period)
    return period_pattern(n, period)


@dataclass
class SlidingWindow:
    """The sliding-window facts of a config, checked once; `write` puts them in the GGUF."""

    layers: list[bool]
    window: Optional[int]  # the config's window; set whenever a layer slides

    @classmethod
    def read(cls, hp: HParams, default_period: int) -> "SlidingWindow":
        layers = sliding_layers(hp, default_period)
        window = hp.integer("sliding_window", lo=1, hi=2**32 - 1, default=None)
        if any(layers) and window is None:
            raise FormatError(f"{hp.source}: layers use sliding attention but "
                              f"{hp.key_name('sliding_window')} is not set")
        return cls(layers, window)

    def write(self, w: gguf.GGUFWriter, llama_period: int, *, swa_by_default: bool,
              dense_first: bool = False) -> None:
        """The window, and the per-layer array where llama.cpp's built-in period
        (`llama_period` for this architecture) would give another pattern. An architecture
        whose graph slides only when a window is written (`swa_by_default` False) gets
        nothing when no layer slides."""
        if not any(self.layers) and not swa_by_default:
            return
        if self.window is not None:
            w.add_sliding_window(self.window)
        if self.layers != period_pattern(len(self.layers), llama_period, dense_first):
            w.add_sliding_window_pattern(self.layers)


def check_no_rope_layers(hp: HParams, llama_step: int) -> None:
    """SmolLM3-style layers without rope: llama.cpp fixes them to every `llama_step`-th layer;
    a config that puts them elsewhere would convert into another model."""
    n = hp.n_layers
    expected = [int((i + 1) % llama_step != 0) for i in range(n)]
    flags = hp.get("no_rope_layers")
    key = hp.key_name("no_rope_layers")
    if flags is None:
        step = hp.integer("no_rope_layer_interval", lo=1, hi=1 << 16, default=llama_step)
        flags = [int((i + 1) % step != 0) for i in range(n)]
        key = hp.key_name("no_rope_layer_interval")
    elif not isinstance(flags, list) or len(flags) != n or any(type(f) is not int or f not in (0, 1)
                                                              for f in flags):
        raise FormatError(f"{hp.source}: {key} should list {n} flags of 0 or 1 "
                          f"({hp.label('n_layers')}), not {show(flags)}")
    if [int(f) for f in flags] != expected:
        raise UnsupportedError(f"{hp.source}: {key} puts layers without rope elsewhere than every "
                               f"{llama_step}th layer, the only pattern llama.cpp's graph runs")

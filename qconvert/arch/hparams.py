"""Reading hyperparameters out of config.json as transformers 4.x and 5.x write them.

Configs differ in spelling across versions and families: `rope_theta` + `rope_scaling`
(4.x) versus `rope_parameters` (5.x, sometimes keyed by layer type), `type` versus
`rope_type`, a multimodal wrapper's `text_config`. This module hides those spellings.

Every value is checked as it is read: an integer fact must be an integer (not a bool, a
string or a float with a fraction; `4096.0` passes) within bounds well past any released
model, a float must be finite and in its range, a flag must be a bool. A bad value is one
FormatError naming the key as the file spells it (`text_config.hidden_size`), its value
and what was expected; so `num_hidden_layers: 1e9` fails at once instead of building a
name table for a billion layers, and `hidden_size: 0` is never written. `check()` reads
every fact once, plus the rules between them (heads divisible by KV heads, an even head
size for rope); the adapter then checks the facts against the tensors' shapes."""

from __future__ import annotations

import math
from typing import Any

from ..errors import FormatError

_MISSING = object()

# fact -> (config keys, most to least usual, lowest value, highest value). The highest values
# are far past any released model (405B Llama: 126 layers, hidden 16384, FFN 53248; vocab
# ~262k; contexts ~10M) and low enough that nothing sized by them can exhaust memory.
INT_FACTS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "n_layers": (("num_hidden_layers", "n_layer", "num_layers"), 1, 10_000),
    "n_embd": (("hidden_size", "n_embd", "dim"), 1, 1 << 20),
    "n_head": (("num_attention_heads", "n_head", "n_heads"), 1, 1 << 14),
    "n_head_kv": (("num_key_value_heads", "n_kv_heads"), 1, 1 << 14),
    "head_dim": (("head_dim",), 1, 1 << 14),
    "n_ff": (("intermediate_size", "n_inner", "hidden_dim"), 1, 1 << 22),
    "vocab_size": (("vocab_size",), 1, 1 << 24),
    "context_length": (("max_position_embeddings", "n_ctx", "n_positions", "max_sequence_length"), 1, 2**32 - 1),
}
# rope parameters (the 5.x names) -> (integer?, lowest, highest, lowest is excluded)
ROPE_FACTS: dict[str, tuple[bool, float, float, bool]] = {
    "rope_theta": (False, 0.0, 1e15, True),
    "factor": (False, 0.0, 1e6, True),
    "original_max_position_embeddings": (True, 1, 2**32 - 1, False),
    "low_freq_factor": (False, 0.0, 1e6, True),
    "high_freq_factor": (False, 0.0, 1e6, True),
    "extrapolation_factor": (False, 0.0, 1e6, False),
    "attention_factor": (False, 0.0, 1e6, False),
    "beta_fast": (False, 0.0, 1e6, False),
    "beta_slow": (False, 0.0, 1e6, False),
    "partial_rotary_factor": (False, 0.0, 1.0, True),
}


def show(v: Any) -> str:
    """A config value for an error message: short, one line."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def as_int(v: Any) -> int | None:
    """v as an integer when it is one (4096 or 4096.0), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return None


def is_number(v: Any) -> bool:
    """A finite JSON number. An int is one as it stands: math.isfinite(10**400) would
    overflow converting it to float, and comparing it with a bound needs no conversion."""
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))


class HParams:
    def __init__(self, config: dict, source: str = "config.json", defaults: dict | None = None) -> None:
        text = config.get("text_config")
        # a multimodal wrapper keeps the language model's facts under text_config
        self.text_keys = set(text) if isinstance(text, dict) else set()
        self.c: dict = {**(defaults or {}), **config, **(text if isinstance(text, dict) else {})}
        self.source = source

    def key_name(self, key: str) -> str:
        """`key` as the file spells it, for messages."""
        return f"text_config.{key}" if key in self.text_keys else key

    def bad(self, key: str, value: Any, expected: str) -> FormatError:
        return FormatError(f"{self.source}: {self.key_name(key)} is {show(value)}; expected {expected}")

    def get(self, *keys: str, default: Any = None) -> Any:
        for k in keys:
            v = self.c.get(k)
            if v is not None:
                return v
        return default

    def find(self, *keys: str) -> tuple[str | None, Any]:
        """(the first of `keys` the config sets, its value), or (None, None)."""
        for k in keys:
            if self.c.get(k) is not None:
                return k, self.c[k]
        return None, None

    def require(self, *keys: str) -> Any:
        v = self.get(*keys, default=_MISSING)
        if v is _MISSING:
            raise FormatError(f"{self.source}: missing {' / '.join(keys)}")
        return v

    def integer(self, *keys: str, lo: int = 1, hi: int = 1 << 31, default: Any = _MISSING) -> int | None:
        """A checked integer from the first key set; `default` (returned as is) when none is,
        else a missing-key error."""
        key, v = self.find(*keys)
        if key is None:
            if default is _MISSING:
                raise FormatError(f"{self.source}: missing {' / '.join(keys)}")
            return default
        n = as_int(v)
        if n is None or not lo <= n <= hi:
            raise self.bad(key, v, f"an integer from {lo:,} to {hi:,}")
        return n

    def number(self, *keys: str, lo: float = 0.0, hi: float = 1e15, lo_excluded: bool = True,
               default: Any = None) -> float | None:
        """A checked finite float from the first key set, or `default`."""
        key, v = self.find(*keys)
        if key is None:
            return default
        ok = is_number(v) and (v > lo if lo_excluded else v >= lo) and v <= hi
        if not ok:
            raise self.bad(key, v, f"a number {'above' if lo_excluded else 'from'} {lo:g} "
                                   f"{'and at most' if lo_excluded else 'to'} {hi:g}")
        return float(v)

    def flag(self, key: str) -> bool | None:
        """A checked true/false switch, or None when the config does not set it."""
        v = self.get(key)
        if v is not None and not isinstance(v, bool):
            raise self.bad(key, v, "true or false")
        return v

    def fact(self, name: str, default: Any = _MISSING) -> int | None:
        keys, lo, hi = INT_FACTS[name]
        return self.integer(*keys, lo=lo, hi=hi, default=default)

    def label(self, name: str) -> str:
        """The key a fact was read from, as the file spells it (its usual name when unset)."""
        keys = INT_FACTS[name][0]
        return self.key_name(self.find(*keys)[0] or keys[0])

    # -- shapes ---------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.fact("n_layers")

    @property
    def n_embd(self) -> int:
        return self.fact("n_embd")

    @property
    def n_head(self) -> int:
        return self.fact("n_head")

    @property
    def n_head_kv(self) -> int:
        n_head = self.n_head
        kv = self.fact("n_head_kv", default=n_head)
        if kv > n_head or n_head % kv:
            raise FormatError(f"{self.source}: {self.label('n_head')} {n_head} is not a multiple of "
                              f"{self.label('n_head_kv')} {kv}; every KV head must serve the same number "
                              "of query heads")
        return kv

    @property
    def head_dim(self) -> int:
        d = self.fact("head_dim", default=None)
        if d is None:  # the usual default: hidden size split evenly over the heads
            n_embd, n_head = self.n_embd, self.n_head
            if n_embd % n_head:
                raise FormatError(f"{self.source}: {self.label('n_embd')} {n_embd} is not a multiple of "
                                  f"{self.label('n_head')} {n_head}, and no head_dim is given")
            d = n_embd // n_head
        if d % 2:
            raise FormatError(f"{self.source}: head size {d} is odd; rope rotates pairs of dimensions "
                              "(check head_dim / hidden_size / num_attention_heads)")
        return d

    @property
    def n_ff(self) -> int:
        return self.fact("n_ff")

    @property
    def vocab_size(self) -> int:
        return self.fact("vocab_size")

    @property
    def context_length(self) -> int | None:
        return self.fact("context_length", default=None)

    @property
    def norm_eps(self) -> float | None:
        return self.number("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "norm_eps",
                           lo=0.0, hi=0.5)

    @property
    def rotary_fraction(self) -> float:
        """The rotated part of each head: 5.x keeps it among the rope parameters, 4.x beside
        them (`partial_rotary_factor`, GPT-NeoX-style `rotary_pct`)."""
        in_rope = self.rope().get("partial_rotary_factor")
        if in_rope is not None:
            return float(in_rope)  # checked by rope()
        return self.number("partial_rotary_factor", "rotary_pct", lo=0.0, hi=1.0, default=1.0)

    @property
    def tied_embeddings(self) -> bool | None:
        """None when the config does not say: the class default differs by family
        (LlamaConfig and Qwen2Config untie, Gemma3TextConfig ties)."""
        v = self.get("tie_word_embeddings")
        if v is not None and not isinstance(v, bool):
            raise self.bad("tie_word_embeddings", v, "true or false")
        return v

    def check(self) -> None:
        """Read every fact once, so a bad value fails before any work (and a dry run too)."""
        for name in ("n_layers", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "vocab_size",
                     "context_length", "norm_eps", "rotary_fraction", "tied_embeddings"):
            getattr(self, name)
        for layer_type in ("full_attention", "sliding_attention"):
            self.rope(layer_type)

    # -- rope -------------------------------------------------------------------------
    def rope(self, layer_type: str = "full_attention") -> dict:
        """Rope parameters for one kind of layer, normalised to the 5.x spelling:
        {"rope_type", "rope_theta", "factor", ...}, each numeric one checked (ROPE_FACTS).
        Empty when the config says nothing.

        5.x may key rope_parameters by layer type (Gemma 3); each entry is then complete.
        4.x Gemma 3 instead gives the local layers' base as `rope_local_base_freq`, and its
        `rope_scaling` belongs to the global layers only (transformers builds the local
        rotary embedding with default rope), so a sliding layer gets plain rope."""
        rp = self._section("rope_parameters", self.c.get("rope_parameters"))
        where: dict[str, str] = {}  # parameter -> the key it came from, for messages
        if self.has_rope_layer_types():
            kind = layer_type if rp.get(layer_type) else "full_attention"
            out = dict(self._section(f"rope_parameters.{kind}", rp.get(kind)))
            where = dict.fromkeys(out, f"rope_parameters.{kind}.")
            if "rope_theta" not in out and layer_type == "full_attention" and self.c.get("rope_theta") is not None:
                out["rope_theta"], where["rope_theta"] = self.c["rope_theta"], ""
        elif layer_type == "sliding_attention" and self.c.get("rope_local_base_freq") is not None:
            out = {"rope_type": "default", "rope_theta": self.c["rope_local_base_freq"]}
            where = {"rope_theta": "rope_local_base_freq"}
        else:
            scaling = self._section("rope_scaling", self.c.get("rope_scaling"))
            out = {**scaling, **rp}
            where = {**dict.fromkeys(scaling, "rope_scaling."), **dict.fromkeys(rp, "rope_parameters.")}
            if "rope_theta" not in out and self.c.get("rope_theta") is not None:
                out["rope_theta"], where["rope_theta"] = self.c["rope_theta"], ""
        if "rope_type" not in out and "type" in out:
            out["rope_type"], where["rope_type"] = out["type"], where.get("type", "")
        self._check_rope(out, where)
        return out

    def rope_key_name(self, param: str) -> str:
        """A rope parameter's key as the file spells it (rope_parameters.x or rope_scaling.x)."""
        for section in ("rope_parameters", "rope_scaling"):
            v = self.c.get(section)
            if isinstance(v, dict) and param in v:
                return self.key_name(section) + "." + param
        return self.key_name(param)

    def _section(self, key: str, v: Any) -> dict:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.bad(key, v, "a JSON object")
        return v

    def _check_rope(self, rp: dict, where: dict[str, str]) -> None:
        def name(k: str) -> str:
            w = where.get(k, "")
            return self.key_name(w if w and not w.endswith(".") else (w + k if w else k))

        rtype = rp.get("rope_type")
        if rtype is not None and not isinstance(rtype, str):
            raise FormatError(f"{self.source}: {name('rope_type')} is {show(rtype)}; expected a string")
        for k, (integer, lo, hi, lo_excluded) in ROPE_FACTS.items():
            v = rp.get(k)
            if v is None:
                continue
            ok = (as_int(v) is not None) if integer else \
                is_number(v)
            ok = ok and (v > lo if lo_excluded else v >= lo) and v <= hi
            if not ok:
                kind = "an integer" if integer else "a number"
                raise FormatError(f"{self.source}: {name(k)} is {show(v)}; expected {kind} "
                                  f"{'above' if lo_excluded else 'from'} {lo:g} up to {hi:g}")
        # the defaults transformers assumes for llama3 rope when a factor is left out
        lo_f, hi_f = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
        if (rtype or "").lower() == "llama3" and hi_f <= lo_f:
            raise FormatError(f"{self.source}: {name('high_freq_factor')} {hi_f} should be above "
                              f"{name('low_freq_factor')} {lo_f} (llama3 rope blends between them)")

    def has_rope_layer_types(self) -> bool:
        """True when rope_parameters is keyed by layer type (5.x Gemma 3 and kin)."""
        rp = self.c.get("rope_parameters")
        return isinstance(rp, dict) and any(isinstance(v, dict) for v in rp.values())

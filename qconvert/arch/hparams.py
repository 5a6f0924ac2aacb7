"""Reading hyperparameters out of config.json as transformers 4.x and 5.x write them.

Configs differ in spelling across versions and families: `rope_theta` + `rope_scaling`
(4.x) versus `rope_parameters` (5.x, sometimes keyed by layer type), `type` versus
`rope_type`, a multimodal wrapper's `text_config`. This module hides those spellings."""

from __future__ import annotations

from typing import Any

from ..errors import FormatError

_MISSING = object()


class HParams:
    def __init__(self, config: dict, source: str = "config.json") -> None:
        text = config.get("text_config")
        # a multimodal wrapper keeps the language model's facts under text_config
        self.c: dict = {**config, **text} if isinstance(text, dict) else dict(config)
        self.source = source

    def get(self, *keys: str, default: Any = None) -> Any:
        for k in keys:
            v = self.c.get(k)
            if v is not None:
                return v
        return default

    def require(self, *keys: str) -> Any:
        v = self.get(*keys, default=_MISSING)
        if v is _MISSING:
            raise FormatError(f"{self.source}: missing {' / '.join(keys)}")
        return v

    # -- shapes ---------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.require("num_hidden_layers", "n_layer", "num_layers"))

    @property
    def n_embd(self) -> int:
        return int(self.require("hidden_size", "n_embd", "dim"))

    @property
    def n_head(self) -> int:
        return int(self.require("num_attention_heads", "n_head", "n_heads"))

    @property
    def n_head_kv(self) -> int:
        return int(self.get("num_key_value_heads", "n_kv_heads", default=self.n_head))

    @property
    def head_dim(self) -> int:
        return int(self.get("head_dim", default=self.n_embd // self.n_head))

    @property
    def n_ff(self) -> int:
        return int(self.require("intermediate_size", "n_inner", "hidden_dim"))

    @property
    def context_length(self) -> int | None:
        v = self.get("max_position_embeddings", "n_ctx", "n_positions", "max_sequence_length")
        return int(v) if v is not None else None

    @property
    def tied_embeddings(self) -> bool | None:
        """None when the config does not say: the class default differs by family
        (LlamaConfig and Qwen2Config untie, Gemma3TextConfig ties)."""
        v = self.get("tie_word_embeddings")
        return None if v is None else bool(v)

    # -- rope -------------------------------------------------------------------------
    def rope(self, layer_type: str = "full_attention") -> dict:
        """Rope parameters for one kind of layer, normalised to the 5.x spelling:
        {"rope_type", "rope_theta", "factor", ...}. Empty when the config says nothing.

        5.x may key rope_parameters by layer type (Gemma 3); each entry is then complete.
        4.x Gemma 3 instead gives the local layers' base as `rope_local_base_freq`, and its
        `rope_scaling` belongs to the global layers only (transformers builds the local
        rotary embedding with default rope), so a sliding layer gets plain rope."""
        rp = self.c.get("rope_parameters")
        if self.has_rope_layer_types():
            out = dict(rp.get(layer_type) or rp.get("full_attention") or {})
            if "rope_theta" not in out and layer_type == "full_attention" and self.c.get("rope_theta") is not None:
                out["rope_theta"] = self.c["rope_theta"]
        elif layer_type == "sliding_attention" and self.c.get("rope_local_base_freq") is not None:
            out = {"rope_type": "default", "rope_theta": self.c["rope_local_base_freq"]}
        else:
            out = dict(self.c.get("rope_scaling") or {})
            out.update(rp if isinstance(rp, dict) else {})
            if "rope_theta" not in out and self.c.get("rope_theta") is not None:
                out["rope_theta"] = self.c["rope_theta"]
        if "rope_type" not in out and "type" in out:
            out["rope_type"] = out["type"]
        return out

    def has_rope_layer_types(self) -> bool:
        """True when rope_parameters is keyed by layer type (5.x Gemma 3 and kin)."""
        rp = self.c.get("rope_parameters")
        return isinstance(rp, dict) and any(isinstance(v, dict) for v in rp.values())

"""The plan for one type name: a llama-quantize preset (its mix rules plus the user's
per-tensor overrides) or a plain tensor type written everywhere. Shared by the GGUF
routes and by estimate-memory's bits-per-weight table, so it lives with the planners."""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import InputError
from ..source.model_source import Source
from .presets import PRESETS, parse_override, preset_plan
from .rules import make_plan, single_type_rules
from .tensor_plan import Plan


def make_quant_plan(src: Source, type_name: str, *, tensor_types: Sequence[str] = (),
                    output_tensor_type: Optional[str] = None, token_embedding_type: Optional[str] = None,
                    pure: bool = False, no_fallback: bool = False) -> Plan:
    items = [(s.name, s.shape, s.src_dtype) for s in src.tensors]
    if type_name in PRESETS:
        return preset_plan(items, type_name, n_layers=src.n_layers, n_head=src.n_head, n_head_kv=src.n_head_kv,
                           n_expert=src.n_expert, arch_name=src.arch_name,
                           overrides=[parse_override(t) for t in tensor_types],
                           output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                           pure=pure, no_fallback=no_fallback)
    if tensor_types or output_tensor_type or token_embedding_type:
        raise InputError(f"--type {type_name} is a plain tensor type; per-tensor overrides need a preset "
                         f"(e.g. {type_name}_M or {type_name}_S where it exists)")
    return make_plan(items, single_type_rules(type_name), ftype=type_name, no_fallback=no_fallback)

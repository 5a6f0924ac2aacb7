"""A type name from --type / --bits, and the plan for it: a llama-quantize preset (its mix rules plus the user's
per-tensor overrides) or a plain tensor type written everywhere. Shared by the GGUF
routes and by estimate-memory's bits-per-weight table, so it lives with the planners."""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import InputError
from ..qtypes import QTYPES
from ..source.model_source import Source
from .presets import BITS_TO_PRESET, PRESETS, parse_override, preset_plan
from .rules import make_plan, single_type_rules
from .tensor_plan import Plan


def make_quant_plan(src: Source, type_name: str, *, tensor_types: Sequence[str] = (),
                    output_tensor_type: Optional[str] = None, token_embedding_type: Optional[str] = None,
                    pure: bool = False, no_fallback: bool = False, has_imatrix: bool = False) -> Plan:
    items = [(s.name, s.shape, s.src_dtype) for s in src.tensors]
    keep = {s.name: s.packed_type for s in src.tensors if s.packed_type}
    if type_name in PRESETS:
        return preset_plan(items, type_name, n_layers=src.n_layers, n_head=src.n_head, n_head_kv=src.n_head_kv,
                           n_expert=src.n_expert, arch_name=src.arch_name,
                           overrides=[parse_override(t) for t in tensor_types],
                           output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                           pure=pure, no_fallback=no_fallback, keep=keep, has_imatrix=has_imatrix)
    if tensor_types or output_tensor_type or token_embedding_type:
        raise InputError(f"--type {type_name} is a plain tensor type; per-tensor overrides need a preset "
                         f"(e.g. {type_name}_M or {type_name}_S where it exists)")
    return make_plan(items, single_type_rules(type_name, keep), ftype=type_name, no_fallback=no_fallback)


DEFAULT_TYPE = "Q4_K_M"


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

"""Architecture adapters, registered by the HF `architectures` string."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import FormatError, UnsupportedError
from ..registry import Registry

if TYPE_CHECKING:
    from ..source.checkpoint import Checkpoint
    from .base import ArchAdapter

ARCHS: Registry[type] = Registry("architecture")

_FAMILIES = ("llama", "qwen", "gemma")


def _load_all() -> None:
    for fam in _FAMILIES:
        try:
            importlib.import_module(f"{__name__}.{fam}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{fam}":
                raise


def adapter_for(ckpt: "Checkpoint") -> "ArchAdapter":
    _load_all()
    archs = ckpt.config.get("architectures")
    if not archs or not isinstance(archs, list):
        raise FormatError(f"{ckpt.dir / 'config.json'}: no 'architectures' list; cannot tell the model type")
    name = archs[0]
    if name not in ARCHS:
        raise UnsupportedError(
            f"{ckpt.dir / 'config.json'}: architecture {name!r} is not supported; "
            f"supported: {', '.join(ARCHS.names())}"
        )
    return ARCHS.get(name)(ckpt, name)


def supported() -> list[str]:
    _load_all()
    return ARCHS.names()

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

# modules of this package that hold shared machinery, not families; every other module
# registers one or more families when imported, so a new family is a new file
_NOT_FAMILIES = frozenset({"base", "hparams", "shape_check", "moe", "transforms", "layer_kinds", "rope",
                           "scalars", "catalog"})


def _family_modules() -> list[str]:
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_FAMILIES)


def _load_all() -> None:
    for fam in _family_modules():
        importlib.import_module(f"{__name__}.{fam}")


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


def check_config(ckpt: "Checkpoint") -> None:
    """Check config.json against its bounds and the checkpoint's tensors before a route
    that does not write GGUF (safetensors output) relies on it: in full through the
    architecture's adapter when there is one, else the family-independent facts."""
    _load_all()
    archs = ckpt.config.get("architectures")
    name = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if name is not None and name in ARCHS:
        ARCHS.get(name)(ckpt, name).tensors()
        return
    from .hparams import HParams

    HParams(ckpt.config, str(ckpt.dir / "config.json")).check()

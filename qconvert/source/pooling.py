"""How a sentence-transformers model turns token states into one embedding.

A sentence-transformers directory lists its modules in modules.json: the transformer,
then a Pooling module (its config.json in e.g. 1_Pooling/ names the mode), often a
Normalize module. llama.cpp applies the pooling itself when the GGUF names it
(`{arch}.pooling_type`: mean, cls or last token), so the mode is written there; the L2
normalisation is left to the caller (llama.cpp's embedding examples and
llama-cpp-python's `embed(normalize=True)` apply it; it changes no cosine). Modules
llama.cpp cannot run after the pooling (Dense projections...) would make its embeddings
differ from the model's, so such a directory is refused rather than converted wrong.
Without modules.json nothing is written, as llama.cpp's own converter does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gguf

from ..errors import FormatError, UnsupportedError
from .special_tokens import read_json

MODES = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}
# sentence-transformers < 5 spelled the mode as booleans; 5+ writes "pooling_mode"
LEGACY_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
               "pooling_mode_lasttoken": "lasttoken", "pooling_mode_max_tokens": "max",
               "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
               "pooling_mode_weightedmean_tokens": "weightedmean"}
HARMLESS = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class Pooling:
    kind: gguf.PoolingType
    normalize: bool  # the model ends in a Normalize module (unit-length embeddings)
    source: str


def _modules(path: Path) -> list:
    if not path.is_file():
        return []
    from .json_text import parse_json

    try:
        data = parse_json(path.read_bytes(), str(path))
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in data):
        raise FormatError(f"{path}: should list modules as objects with a string 'type'")
    return data


def _mode(config: dict, path: Path) -> str:
    mode = config.get("pooling_mode")
    if mode is None:
        on = [name for key, name in LEGACY_KEYS.items() if config.get(key)]
        mode = on[0] if len(on) == 1 else on
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if not isinstance(mode, str):
        raise UnsupportedError(f"{path}: pooling mode {mode!r}; llama.cpp pools one way (mean, cls or lasttoken)")
    return mode


def read_pooling(model_dir: Path) -> Optional[Pooling]:
    """The pooling modules.json describes, or None when the directory has no modules.json."""
    modules_path = model_dir / "modules.json"
    modules = _modules(modules_path)
    pooling: Optional[gguf.PoolingType] = None
    source = str(modules_path)
    for mod in modules:
        kind = mod["type"].rsplit(".", 1)[-1]
        if kind not in HARMLESS:
            raise UnsupportedError(f"{modules_path}: module {mod['type']!r} runs after the transformer and "
                                   "llama.cpp cannot apply it; the GGUF's embeddings would differ")
        if kind == "Pooling" and pooling is None:
            rel = mod.get("path")
            if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise FormatError(f"{modules_path}: the Pooling module's path should be a folder inside the model")
            config_path = model_dir / rel / "config.json"
            if not config_path.is_file():  # read_json's {} would read as "no pooling mode"
                raise FormatError(f"{config_path}: missing or not a regular file, but {modules_path.name} names "
                                  "a Pooling module there; restore the model's pooling config")
            mode = _mode(read_json(config_path), config_path)
            if mode not in MODES:
                raise UnsupportedError(f"{config_path}: pooling mode {mode!r}; llama.cpp pools by "
                                       f"{', '.join(MODES)} only")
            pooling, source = MODES[mode], str(config_path)
    if pooling is None:
        return None
    normalize = any(m["type"].rsplit(".", 1)[-1] == "Normalize" for m in modules)
    return Pooling(pooling, normalize, source)

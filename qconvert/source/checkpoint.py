"""A Hugging Face model directory: config.json plus safetensors weights (one file or
shards listed in model.safetensors.index.json), as lazy tensor handles.

Everything that can be checked without reading weights is checked here, before any long
loop: the config parses, every shard is a plain file name in the directory and exists,
every header entry is consistent (safetensors_file.validate_header), every tensor the
index lists is in the shard it names and in no other, every weight has a float dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import FormatError, InputError, UnsupportedError
from .json_text import parse_json
from .safetensors_file import FLOAT_DTYPES, SafetensorsFile, TensorHandle
from .quantized_input import dequantized
from .shard_index import INDEX, read_index, shard_paths

# integer buffers transformers saved beside the weights of older encoder checkpoints
INDEX_BUFFERS = ("position_ids", "token_type_ids")

SINGLE = "model.safetensors"


def read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror})") from None
    data = parse_json(text, f"{path}: {what}")
    if not isinstance(data, dict):
        raise FormatError(f"{path}: {what} should hold a JSON object")
    return data


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.exists():
        raise InputError(
            f"{path} not found: {model_dir} is not a Hugging Face model directory "
            "(expected config.json beside the safetensors weights)"
        )
    return read_json(path, "config.json")


def _shard_files(model_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    index = model_dir / INDEX
    if index.exists():
        weight_map = read_index(index)[0]
        return shard_paths(index, weight_map), weight_map
    if (model_dir / SINGLE).is_file():
        return [model_dir / SINGLE], None
    found = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file())
    if found:
        return found, None
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise UnsupportedError(
            f"{model_dir}: only PyTorch .bin/.pt weights found; qconvert reads safetensors "
            "(re-save the model with save_pretrained(..., safe_serialization=True))"
        )
    raise InputError(f"{model_dir}: no safetensors weights found (model.safetensors or {INDEX})")


# checkpoint quantization formats (config.json quantization_config.quant_method) whose
# integer tensors an adapter reads and repacks: the name endings of those tensors, and how
# many model weights one stored element holds (MXFP4: two 4-bit values a byte; scales none)
PACKED_FORMATS = {"mxfp4": {"_blocks": 2, "_scales": 0}}


def packed_suffixes(config: dict) -> tuple[str, ...]:
    q = config.get("quantization_config")
    method = q.get("quant_method") if isinstance(q, dict) else None
    return tuple(PACKED_FORMATS.get(method, ())) if isinstance(method, str) else ()


def weights_held(config: dict, name: str, dtype: str, n_elements: int) -> int:
    """Model weights a stored tensor holds (parameter counts of a packed checkpoint)."""
    q = config.get("quantization_config")
    method = q.get("quant_method") if isinstance(q, dict) else None
    per = PACKED_FORMATS.get(method, {}) if isinstance(method, str) else {}
    for suffix, k in per.items():
        if dtype == "U8" and name.endswith(suffix):
            return k * n_elements
    return n_elements


class Checkpoint:
    """config + lazily readable tensors of one HF model directory."""

    def __init__(self, model_dir: Path | str) -> None:
        self.dir = Path(model_dir)
        if not self.dir.exists():
            raise InputError(f"{self.dir}: no such directory")
        if not self.dir.is_dir():
            raise InputError(f"{self.dir}: expected a model directory, got a file")
        self.config = read_config(self.dir)
        paths, weight_map = _shard_files(self.dir)
        self.files = [SafetensorsFile(p) for p in paths]
        self.handles: dict[str, TensorHandle] = {}
        for f in self.files:
            for name in f.names():
                if name in self.handles:
                    raise FormatError(f"{f.path}: tensor {name!r} is also in {self.handles[name].source}; "
                                      "which copy is meant?")
                self.handles[name] = f.handle(name)
        if weight_map is not None:
            for name, shard in weight_map.items():
                h = self.handles.get(name)
                if h is None or Path(h.source).name != shard:
                    raise FormatError(
                        f"{self.dir / shard}: tensor {name!r} is listed in {INDEX} but absent from the shard"
                    )
        # modules stored quantized (FP8, GPTQ, AWQ, compressed-tensors): one float handle each
        self.handles, self.decoded = dequantized(self.config, self.handles, self.files)
        packed = packed_suffixes(self.config)
        # integer index buffers older encoder checkpoints saved (BERT's embeddings.position_ids,
        # int64 0..n-1): not weights, so not the model's business here
        self.handles = {n: h for n, h in self.handles.items()
                        if not (n.endswith(INDEX_BUFFERS) and h.dtype in ("I64", "I32"))}
        for h in self.handles.values():
            if h.name in self.decoded:
                continue
            if h.dtype not in FLOAT_DTYPES and not (h.dtype == "U8" and h.name.endswith(packed)):
                raise UnsupportedError(
                    f"{h.source}: tensor {h.name!r} has dtype {h.dtype}; qconvert converts F32/F16/BF16 "
                    "checkpoints (is this model already quantized?)"
                )

    def raw(self, name: str):
        """A stored tensor's array as it is in the file (read-only, stored dtype): the
        integer parts of a quantized format that an adapter repacks (gpt-oss MXFP4)."""
        return self._file_of(name).raw(name)

    def raw_rows(self, name: str, start: int, stop: int, expert: Optional[int] = None):
        """A copy of rows start..stop (axis 0) of a stored tensor, its pages released after
        (one expert of a stacked tensor, without the rest staying resident); with `expert`,
        rows start..stop of axis 1 of that expert (a slice of one expert's rows)."""
        f = self._file_of(name)
        raw = f.raw(name)
        if expert is not None:
            raw = raw[expert]
        arr = np.array(raw[start:stop])
        row = raw[0:1].nbytes
        first = 0 if expert is None else expert * raw.nbytes
        f.release(name, first + start * row, first + stop * row)
        return arr

    def _file_of(self, name: str):
        path = self.handles[name].source
        return next(f for f in self.files if str(f.path) == path)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.handles

    def __getitem__(self, name: str) -> TensorHandle:
        return self.handles[name]

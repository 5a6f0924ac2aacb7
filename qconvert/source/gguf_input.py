"""A GGUF file as input: requantize an F32/F16/BF16 GGUF (or, when the user accepts the
quality cost, an already-quantized one). Metadata is carried over key by key; tensors
are read lazily from GGUFReader's memmap, one at a time."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ..errors import FormatError, InputError
from .safetensors_file import TensorHandle
from .source_tensor import SourceTensor

FLOAT_TYPES = {"F32", "F16", "BF16"}
# keys that describe the file being written, not the model: the writer sets them anew
_OWN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


def _loader(t) -> callable:
    def load() -> np.ndarray:
        name = t.tensor_type.name
        if name == "F32":
            return np.array(t.data, dtype=np.float32)
        if name == "F16":
            return np.asarray(t.data).astype(np.float32)
        if name == "BF16":
            return (np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)

    return load


class GGUFInput:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.reader = gguf.GGUFReader(self.path)
        except (ValueError, OSError, IndexError, KeyError) as e:
            raise FormatError(f"{self.path}: not a readable GGUF file ({e})") from None
        f = self.reader.fields.get("general.architecture")
        if f is None:
            raise FormatError(f"{self.path}: GGUF has no general.architecture key")
        self.arch_name = str(f.contents())

    def value(self, key: str, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def arch_value(self, suffix: str, default=None):
        return self.value(f"{self.arch_name}.{suffix}", default)

    def quantized_tensors(self) -> list[str]:
        return [t.name for t in self.reader.tensors if t.tensor_type.name not in FLOAT_TYPES
                and len(t.shape) > 1]

    def check_requantize(self, allow: bool) -> None:
        q = self.quantized_tensors()
        if q and not allow:
            kinds = sorted({t.tensor_type.name for t in self.reader.tensors if t.name in set(q)})
            raise InputError(
                f"{self.path}: {len(q)} tensors are already quantized ({', '.join(kinds)}); requantizing "
                "compounds rounding error (quality below quantizing the original weights). "
                "Convert from the F16/BF16/F32 model, or pass --allow-requantize to accept the loss"
            )

    def tensors(self) -> list[SourceTensor]:
        out = []
        for t in self.reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            h = TensorHandle(t.name, t.tensor_type.name, shape, _loader(t), str(self.path))
            out.append(SourceTensor(t.name, t.name, shape, t.tensor_type.name, h))
        return out

    def copy_metadata(self, w: gguf.GGUFWriter) -> None:
        for key, field in self.reader.fields.items():
            if key.startswith("GGUF.") or key in _OWN_KEYS:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
            w.add_key_value(key, field.contents(), vtype, sub_type=sub)

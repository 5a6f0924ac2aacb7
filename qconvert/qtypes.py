"""One table of format facts: every GGUF tensor type qconvert writes, with its block
geometry. The planner, the writer, `inspect` and `estimate-memory` all read sizes from
here, so a predicted size and a written size cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import ShapeError
from .registry import Registry


@dataclass(frozen=True)
class QType:
    name: str
    ggml: GGMLQuantizationType
    block_size: int  # weights per block (1 for float types)
    type_size: int  # bytes per block
    quantized: bool

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    def fits(self, row_width: int) -> bool:
        """True when a row of this width splits into whole blocks."""
        return row_width % self.block_size == 0

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of this shape (HF order: last dim is the row)."""
        n = 1
        for d in shape:
            n *= int(d)
        row = int(shape[-1]) if shape else 1
        if row % self.block_size:
            raise ShapeError(
                f"row width {row} is not a multiple of {self.name}'s block size {self.block_size}"
            )
        return n // self.block_size * self.type_size


QTYPES: Registry[QType] = Registry("tensor type")

_NAMES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
for _n in _NAMES:
    _g = GGMLQuantizationType[_n]
    _bs, _ts = GGML_QUANT_SIZES[_g]
    QTYPES.add(_n, QType(_n, _g, _bs, _ts, quantized=_bs > 1))


def qtype(name: str) -> QType:
    return QTYPES.get(name)


def by_ggml(t: GGMLQuantizationType | int) -> QType | None:
    """The QType for a ggml type id, or None for types qconvert does not write."""
    t = GGMLQuantizationType(int(t))
    for n in _NAMES:
        q = QTYPES.get(n)
        if q.ggml == t:
            return q
    return None


def ggml_bits_per_weight(t: GGMLQuantizationType | int) -> float:
    """Bits per weight of any ggml type gguf knows (for inspecting foreign files)."""
    bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType(int(t))]
    return ts * 8 / bs

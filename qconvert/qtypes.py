"""One table of format facts: every GGUF tensor type qconvert writes, with its block
geometry. The planner, the writer, `inspect` and `estimate-memory` all read sizes from
here, so a predicted size and a written size cannot disagree."""

from __future__ import annotations

import math
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
    max_abs: float = math.inf  # the largest |weight| it holds without writing Inf (see MAX_ABS)

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

F16_MAX = 65504.0
BF16_MAX = 3.3895313892515355e38  # bits 0x7F7F
# The largest |weight| each type stores finitely. F16/BF16: their largest value. Every
# quantized type keeps F16 scales, and a block's largest weight sets them: Q8_0 d = amax/127,
# Q4_0 amax/8, Q5_0 amax/16; Q4_1/Q5_1 store the block's minimum itself (m = min) in F16.
# The K-quants search their scales (with importance, too), so their bound was measured:
# the first Inf/NaN decoded at 14.4 (Q2_K), 89 (Q3_K), 61 (Q4_K, Q5_K) and 3900 (Q6_K) x
# F16_MAX over random, one-signed and +-amax blocks; the bounds below keep a quarter of
# headroom, which also covers GPTQ's error feedback moving weights within a step.
# Q4_0/Q5_0/Q4_1/Q5_1 with importance search their scale and minimum as well: the first
# Inf came at 6.4, 14.3 and 0.99 (both _1 types) x F16_MAX, hence the lower bounds here.
MAX_ABS = {"F32": math.inf, "F16": F16_MAX, "BF16": BF16_MAX,
           "Q8_0": 127 * F16_MAX, "Q4_0": 5 * F16_MAX, "Q5_0": 11 * F16_MAX, "Q4_1": 0.75 * F16_MAX,
           "Q5_1": 0.75 * F16_MAX,
           "Q2_K": 12 * F16_MAX, "Q3_K": 64 * F16_MAX, "Q4_K": 48 * F16_MAX, "Q5_K": 48 * F16_MAX,
           "Q6_K": 3072 * F16_MAX,
           # MXFP4's E8M0 scale reaches 2**127: any finite float32 block encodes finitely
           "MXFP4": math.inf,
           # i-quants, measured as the K-quants (first Inf: IQ4_NL 116, IQ4_XS > 4000, IQ3_XXS 276,
           # IQ3_S 334, IQ2_XXS 59, IQ2_XS 120, IQ2_S 105, IQ1_S 1.9, IQ1_M 1.56 x F16_MAX)
           "IQ4_NL": 87 * F16_MAX, "IQ4_XS": 3000 * F16_MAX, "IQ3_XXS": 200 * F16_MAX, "IQ3_S": 250 * F16_MAX,
           "IQ2_XXS": 44 * F16_MAX, "IQ2_XS": 90 * F16_MAX, "IQ2_S": 78 * F16_MAX,
           "IQ1_S": 1.4 * F16_MAX, "IQ1_M": 1.15 * F16_MAX}

_NAMES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "MXFP4", "IQ4_NL", "IQ4_XS",
          "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S",
          "IQ1_S", "IQ1_M"]
for _n in _NAMES:
    _g = GGMLQuantizationType[_n]
    _bs, _ts = GGML_QUANT_SIZES[_g]
    QTYPES.add(_n, QType(_n, _g, _bs, _ts, quantized=_bs > 1, max_abs=MAX_ABS[_n]))


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

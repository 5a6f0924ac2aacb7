"""The compressed-tensors `pack-quantized` layout: how one quantized Linear is stored, and
the `quantization_config` that tells transformers (through the compressed-tensors
package) how to read it back.

For a Linear `P` with weight (out, in), `bits` b and n_groups = in / group_size (1 per
row for the "channel" strategy), the checkpoint holds instead of `P.weight`:

    P.weight_packed      I32 (out, ceil(in * b / 32))    codes, packed along rows
    P.weight_scale       BF16/F16/F32 (out, n_groups)
    P.weight_zero_point  I32 (ceil(out * b / 32), n_groups)  asymmetric only; packed
                                                              down the columns
    P.weight_shape       I64 (2,) = [out, in]

and a loader computes  w = scale * (q - zero_point)  with q, zero_point signed
(-2^(b-1) .. 2^(b-1)-1). Stored values are offset by +2^(b-1), i.e. they are exactly
our unsigned codes (qweight, zeros in GPTQResult / GridQuant).

Packing (`pack_int32`): each row is one little-endian bit stream; element i takes bits
i*b .. i*b+b-1, counted from bit 0 of word 0, and the stream ends at a word boundary.
For b = 4 (8 codes a word, c0 in the low nibble):

    word 0:  bits 31..28 27..24 23..20 19..16 15..12 11..8 7..4 3..0
             c7     c6     c5     c4     c3     c2    c1   c0

For b = 3 a code may straddle two words: c10 has bits 30,31 of word 0 and bit 0 of
word 1 (its low bits in the lower word). This dense layout equals the older "pack
32 // b codes a word" layout for b = 2, 4, 8; for 3, 5, 6, 7 bits it is what
compressed-tensors writes and reads since 0.18 (earlier releases left the high bits of
each word empty, so a 3-bit file needs compressed-tensors >= 0.18 to load).
"""

from __future__ import annotations

import numpy as np

FORMAT = "pack-quantized"


def packed_words(n: int, bits: int) -> int:
    return -(-n * bits // 32)


def pack_int32(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, n) unsigned codes < 2^bits -> (rows, ceil(n * bits / 32)) int32."""
    rows, n = codes.shape
    n32 = -(-n // 32) * 32
    v = np.zeros((rows, n32), dtype=np.uint32)
    v[:, :n] = codes
    v = v.reshape(rows, n32 // 32, 32)  # 32 codes fill exactly `bits` words
    out = np.zeros((rows, n32 // 32, bits), dtype=np.uint32)
    for i in range(32):
        word, off = divmod(i * bits, 32)
        out[:, :, word] |= v[:, :, i] << np.uint32(off)  # uint32: bits past 31 fall off
        if off + bits > 32:  # the high part spills into the next word
            out[:, :, word + 1] |= v[:, :, i] >> np.uint32(32 - off)
    return out.reshape(rows, -1)[:, :packed_words(n, bits)].view(np.int32)


def unpack_int32(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The inverse of pack_int32: (rows, words) int32 -> (rows, n) uint8 codes."""
    rows, words = packed.shape
    groups = -(-n // 32)
    w = np.zeros((rows, groups * bits + 1), dtype=np.uint64)  # +1: a spill word read past the end
    w[:, :words] = packed.view(np.uint32)
    out = np.empty((rows, groups, 32), dtype=np.uint8)
    mask = np.uint64((1 << bits) - 1)
    for i in range(32):
        word, off = divmod(i * bits, 32)
        idx = np.arange(groups) * bits + word
        pair = w[:, idx] | (w[:, idx + 1] << np.uint64(32))  # 64 bits hold any straddling code
        out[:, :, i] = (pair >> np.uint64(off)) & mask
    return out.reshape(rows, -1)[:, :n]


def module_tensors(prefix: str, shape: tuple[int, int], bits: int, group_size: int, sym: bool,
                   scale_dtype: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors dtype, shape) of what replaces `prefix`.weight, in file order."""
    n_out, n_in = shape
    n_groups = 1 if group_size == -1 else n_in // group_size
    out = [(f"{prefix}.weight_packed", "I32", (n_out, packed_words(n_in, bits))),
           (f"{prefix}.weight_scale", scale_dtype, (n_out, n_groups))]
    if not sym:
        out.append((f"{prefix}.weight_zero_point", "I32", (packed_words(n_out, bits), n_groups)))
    out.append((f"{prefix}.weight_shape", "I64", (2,)))
    return out


def module_arrays(prefix: str, qweight: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
                  bits: int, sym: bool) -> dict[str, np.ndarray]:
    """The arrays of module_tensors, from unsigned codes (out, in), scales already in
    their stored dtype (bf16 as uint16 bits) and unsigned zero points (out, n_groups)."""
    out = {f"{prefix}.weight_packed": pack_int32(qweight, bits), f"{prefix}.weight_scale": scales}
    if not sym:
        out[f"{prefix}.weight_zero_point"] = np.ascontiguousarray(pack_int32(zeros.T, bits).T)
    out[f"{prefix}.weight_shape"] = np.asarray(qweight.shape, dtype=np.int64)
    return out


def quantization_config(*, bits: int, group_size: int, sym: bool, targets: list[str], ignore: list[str],
                        actorder: str | None = None, fallback_groups: dict[int, list[str]] | None = None) -> dict:
    """config.json's `quantization_config`: one scheme for the modules `targets` names
    (class names such as "Linear", or "re:" + a regex of module names) minus `ignore`,
    built with compressed-tensors' own config models (so they validate what we claim, and
    the dump is the form its loader parses back). `fallback_groups` (group size -> module
    names) adds a scheme per other group size, targeting those modules by exact name:
    compressed-tensors gives an exact-name target precedence over a regex."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    def scheme(targets: list[str], g: int) -> QuantizationScheme:
        weights = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, group_size=None if g == -1 else g,
                                   strategy="channel" if g == -1 else "group", dynamic=False,
                                   observer="minmax", actorder=actorder)
        return QuantizationScheme(targets=targets, weights=weights, format=FORMAT)

    groups = {"group_0": scheme(targets, group_size)}
    for i, (g, modules) in enumerate(sorted((fallback_groups or {}).items(), reverse=True), start=1):
        groups[f"group_{i}"] = scheme(sorted(modules), g)
    config = QuantizationConfig(config_groups=groups, format=FORMAT, quantization_status="compressed",
                                ignore=ignore).model_dump()
    if not sym:
        # A loader option of transformers' CompressedTensorsConfig, not part of the scheme:
        # transformers 5.23-5.24 (with compressed-tensors 0.20) builds each compressed Linear
        # with an unpacked (out, n_groups) zero point, so the packed one (the layout vLLM and
        # compressed-tensors' own writer use) fails its shape check. `dequantize` makes it
        # decode each Linear while loading through compressed-tensors' decompressor, which
        # does unpack the zero point; the model ends up as dense as it would after its first
        # forward pass anyway.
        config["dequantize"] = True
    return config

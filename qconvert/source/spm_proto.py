"""The few fields of a SentencePiece ModelProto that the sentencepiece API does not expose.

SentencePieceProcessor gives pieces, scores and types, but says nothing about the
algorithm (BPE or unigram) or the normalizer (is a space prefixed? are runs of spaces
squeezed?). Those live in the serialized protobuf, so this reads the wire format directly
rather than adding a protobuf dependency for a handful of fields.

Protobuf wire format: each field is a varint key (field_number << 3 | wire_type), then
  wire 0  varint (7 bits a byte, high bit = more)     wire 2  varint length + bytes
  wire 1  8 bytes little-endian                        wire 5  4 bytes little-endian
ModelProto (sentencepiece_model.proto):
  1 pieces (repeated; read through SentencePieceProcessor instead)
  2 trainer_spec { 3 model_type = UNIGRAM (1; BPE 2, WORD 3, CHAR 4),
                   24 treat_whitespace_as_suffix }
  3 normalizer_spec { 1 name, 2 precompiled_charsmap, 3 add_dummy_prefix = true,
                      4 remove_extra_whitespaces = true }
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError

MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass(frozen=True)
class SpmProto:
    model_type: str
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    normalizer_name: str
    has_charsmap: bool
    treat_whitespace_as_suffix: bool


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, value) where value is an int or a bytes slice."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise FormatError(f"protobuf wire type {wire} at byte {pos} is not one this reader knows")
        yield number, value


def read_spm_proto(data: bytes, source: str = "tokenizer.model") -> SpmProto:
    try:
        normalizer = trainer = b""
        for number, value in _fields(data):
            if number == 2:
                trainer = value
            elif number == 3:
                normalizer = value
        norm = dict(_fields(normalizer))
        train = dict(_fields(trainer))
    except (IndexError, ValueError, TypeError) as exc:
        raise FormatError(f"{source}: not a SentencePiece model ({exc})") from exc
    return SpmProto(
        model_type=MODEL_TYPES.get(train.get(3, 1), f"type {train.get(3)}"),
        add_dummy_prefix=bool(norm.get(3, 1)),
        remove_extra_whitespaces=bool(norm.get(4, 1)),
        normalizer_name=bytes(norm.get(1, b"")).decode("utf-8", "replace"),
        has_charsmap=len(norm.get(2, b"")) > 0,
        treat_whitespace_as_suffix=bool(train.get(24, 0)),
    )

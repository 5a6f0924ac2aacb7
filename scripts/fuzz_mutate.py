"""Mutators for scripts/fuzz.py: binary damage aimed at a file's fields and boundaries, and
JSON damage aimed at values, types, nesting and names. Every mutator takes a `random.Random`
and returns (new bytes, a short description of what it did) so a case can be reproduced
from its saved file alone.

Values JSON cannot hold (1e999, NaN, 5,000-digit integers, 100,000 levels of nesting) go
into the text through placeholders (`Raw`), since `json.dumps` refuses or recurses on them.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

from fuzz_seeds import Field, Layout

U64_SPECIAL = [0, 1, 2, 2**64 - 1, 2**63, 2**63 - 1, 2**32 - 1, 2**32, 2**31, 255, 65535, 10**12]
U32_SPECIAL = [0, 1, 2, 3, 9, 13, 31, 39, 64, 99, 2**32 - 1, 2**31, 65535]


class Raw(str):
    """JSON text inserted as is (not as a string)."""


def deep(n: int, open_: str = "[", close: str = "]") -> Raw:
    return Raw(open_ * n + "1" + close * n) if open_ == "[" else Raw('{"a":' * n + "1" + "}" * n)


JSON_SPECIAL: list[Any] = [
    0, -1, 1, 2, 10**9, 10**30, -(10**30), 1.5, -0.0, 1e-300, 1e308,
    "", "abc", "[/x]", "[bold red]x[/]", "\x1b[31mred", "\u202e", "\ud800", "a\nb", "\x00", "../../x", "/abs/path",
    "x" * 5000, True, False, None, [], {}, [1, "a", None], {"a": {"b": [1]}},
    Raw("1e999"), Raw("-1e999"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("9" * 5000),
    Raw("1" + "0" * 400), Raw("1e-99999"), Raw("-0"), deep(50), deep(300), deep(100_000), deep(3000, "{"),
]
ODD_KEYS = ["", "[/x]", "\x1b[2J", "\u202ekey", "a" * 3000, "__metadata__", "..", "model.norm.weight"]


def _u(size: int) -> str:
    return "<I" if size == 4 else "<Q"


# ------------------------------------------------------------------ binary


def _pos(rng: random.Random, raw: bytes, lay: Layout, header_bias: float = 0.8) -> int:
    """A byte position: mostly in the header, often right at a boundary."""
    r = rng.random()
    if r < 0.3 and lay.boundaries:
        return min(max(0, rng.choice(lay.boundaries) + rng.choice((-1, 0, 0, 1))), max(0, len(raw) - 1))
    top = lay.data_start if r < header_bias and lay.data_start else len(raw)
    return rng.randrange(max(1, top))


def set_field(raw: bytearray, f: Field, rng: random.Random) -> str:
    old = struct.unpack_from(_u(f.size), raw, f.pos)[0]
    pool = U32_SPECIAL if f.size == 4 else U64_SPECIAL
    new = rng.choice(pool + [old + 1, max(old - 1, 0), old * 2, rng.randrange(2 ** (8 * f.size))])
    new %= 2 ** (8 * f.size)
    struct.pack_into(_u(f.size), raw, f.pos, new)
    return f"{f.kind} of {f.label!r} at byte {f.pos}: {old} -> {new}"


def mutate_binary(rng: random.Random, data: bytes, lay: Layout, fmt: str) -> tuple[bytes, str]:
    """One or two mutations of a GGUF (fmt "gguf") or safetensors ("safetensors") file."""
    out, notes = bytearray(data), []
    for _ in range(1 if rng.random() < 0.7 else 2):
        ops = ["bitflip", "overwrite", "insert", "delete", "truncate", "field", "field", "append", "nonfinite",
               "huge"]
        if fmt == "protobuf":  # varint lengths, not fixed-width fields
            ops = [o for o in ops if o != "field"] + ["varint", "varint", "varint"]
        elif fmt in ("gguf", "safetensors"):
            ops += ["gguf", "gguf", "gguf"] if fmt == "gguf" else ["header_json", "header_json", "header_json"]
        op = rng.choice(ops)
        out, note = _BINARY_OPS[op](rng, out, lay)
        notes.append(note)
    return bytes(out), "; ".join(notes)


def _bitflip(rng, out, lay):
    flips = [_pos(rng, out, lay) for _ in range(rng.randint(1, 8))]
    for p in flips:
        if p < len(out):
            out[p] ^= 1 << rng.randrange(8)
    return out, f"bit flips at {flips}"


def _overwrite(rng, out, lay):
    p, n = _pos(rng, out, lay), rng.randint(1, 8)
    out[p:p + n] = bytes(rng.randrange(256) for _ in range(n))[:max(0, len(out) - p)]
    return out, f"{n} random bytes at {p}"


def _insert(rng, out, lay):
    p, n = _pos(rng, out, lay), rng.choice((1, 2, 4, 8, 16))
    fill = bytes(n) if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(n))
    return out[:p] + fill + out[p:], f"{n} bytes inserted at {p}"


def _delete(rng, out, lay):
    p, n = _pos(rng, out, lay), rng.choice((1, 2, 4, 8, 16))
    return out[:p] + out[p + n:], f"{n} bytes deleted at {p}"


def _truncate(rng, out, lay):
    b = rng.choice(lay.boundaries or [len(out)]) + rng.choice((-8, -1, 0, 0, 1, 8))
    b = min(max(0, b), len(out))
    return out[:b], f"truncated to {b} bytes"


def _field(rng, out, lay):
    fields = [f for f in lay.fields if f.pos + f.size <= len(out)]
    if not fields:
        return _bitflip(rng, out, lay)
    return out, set_field(out, rng.choice(fields), rng)


def _append(rng, out, lay):
    tail = rng.choice([bytes(rng.randint(1, 64)), b"GGUF" + bytes(20), bytes(rng.randrange(256) for _ in range(40))])
    return out + tail, f"{len(tail)} bytes appended"


def _nonfinite(rng, out, lay):
    """Write Inf or NaN into a float tensor's data: the weights must be refused (or allowed
    explicitly), never quantized into garbage."""
    floats = [t for t in lay.tensors if t[1] in ("BF16", "F16", "F32") and t[2] + t[3] <= len(out)]
    if not floats:
        return _bitflip(rng, out, lay)
    name, dtype, off, nbytes = rng.choice(floats)
    size = 4 if dtype == "F32" else 2
    value = {"BF16": [b"\x80\x7f", b"\xc0\x7f", b"\x80\xff"], "F16": [b"\x00\x7c", b"\x00\x7e", b"\x00\xfc"],
             "F32": [b"\x00\x00\x80\x7f", b"\x00\x00\xc0\x7f"]}[dtype]
    i = rng.randrange(nbytes // size)
    v = rng.choice(value)
    out[off + i * size:off + (i + 1) * size] = v
    return out, f"non-finite {v.hex()} written into {name!r} element {i}"


def _huge(rng, out, lay):
    """Write a large but finite value into a float tensor: it must not become Inf in the
    output (F16 tops out at 65504, and a block's F16 scale at about amax/127)."""
    floats = [t for t in lay.tensors if t[1] in ("BF16", "F32") and t[2] + t[3] <= len(out)]
    if not floats:
        return _bitflip(rng, out, lay)
    name, dtype, off, nbytes = rng.choice(floats)
    size = 4 if dtype == "F32" else 2
    value = rng.choice([99840.0, 3.0e38, 2.0e9, -7.0e6])
    raw = struct.pack("<f", value)
    raw = raw[2:] if dtype == "BF16" else raw  # bfloat16: the high half of the float32
    i = rng.randrange(nbytes // size)
    out[off + i * size:off + (i + 1) * size] = raw
    return out, f"large value {value:g} written into {name!r} element {i}"


def _gguf_semantic(rng, out, lay):
    """Layout faults a bit flip rarely makes: counts off by one, shared or misaligned offsets,
    unknown types, zero or huge dimensions."""
    by_kind: dict[str, list[Field]] = {}
    for f in lay.fields:
        if f.pos + f.size <= len(out):  # an earlier mutation may have cut the file
            by_kind.setdefault(f.kind, []).append(f)
    op = rng.choice(["count", "offset_same", "offset_shift", "type", "ne", "alignment_key"])
    if op == "count" and by_kind.get("n_tensors"):
        f = rng.choice(by_kind["n_tensors"] + by_kind["n_kv"])
        old = struct.unpack_from("<Q", out, f.pos)[0]
        new = old + rng.choice((1, -1, 2))
        struct.pack_into("<Q", out, f.pos, max(new, 0))
        return out, f"{f.kind} {old} -> {new}"
    if op.startswith("offset") and len(by_kind.get("offset", [])) >= 2:
        a, b = rng.sample(by_kind["offset"], 2)
        va = struct.unpack_from("<Q", out, a.pos)[0]
        vb = struct.unpack_from("<Q", out, b.pos)[0]
        new = va if op == "offset_same" else vb + rng.choice((1, 16, 31, 32, 64, -32))
        struct.pack_into("<Q", out, b.pos, max(new, 0))
        return out, f"offset of {b.label!r} {vb} -> {new} ({'same as' if op == 'offset_same' else 'near'} {a.label!r})"
    if op == "type" and by_kind.get("ggml_type"):
        f = rng.choice(by_kind["ggml_type"])
        new = rng.choice((0, 1, 2, 4, 5, 8, 12, 14, 30, 39, 40, 99, 2**31))
        struct.pack_into("<I", out, f.pos, new)
        return out, f"ggml type of {f.label!r} -> {new}"
    if op == "ne" and by_kind.get("ne"):
        f = rng.choice(by_kind["ne"])
        new = rng.choice((0, 1, 2**32, 2**63, 2**64 - 1, 2**31 + 1))
        struct.pack_into("<Q", out, f.pos, new)
        return out, f"ne of {f.label!r} -> {new}"
    if op == "alignment_key":
        i = out.find(b"general.alignment")
        if 0 < i < len(out) - len("general.alignment") - 8:
            new = rng.choice((0, 1, 3, 16, 48, 64, 2**31))
            struct.pack_into("<I", out, i + len("general.alignment") + 4, new)
            return out, f"general.alignment -> {new}"
    return _field(rng, out, lay)


def _header_json(rng, out, lay):
    """Mutate a safetensors header as JSON; the length prefix follows the new text (mostly)."""
    n = struct.unpack_from("<Q", out)[0]
    if n > len(out) - 8:
        return _bitflip(rng, out, lay)
    text, note = mutate_json(rng, bytes(out[8:8 + n]), safetensors_values)
    length = len(text) if rng.random() < 0.8 else n
    return bytearray(struct.pack("<Q", length)) + text + out[8 + n:], f"header JSON: {note} (length {length})"


def _varint(rng, out, lay):
    """A protobuf length (a varint) set to a lie: 0, off by one, or beyond the file."""
    fields = [f for f in lay.fields if f.kind == "varint_len" and f.pos + f.size <= len(out)]
    if not fields:
        return _bitflip(rng, out, lay)
    f = rng.choice(fields)
    old = read_varint(out, f.pos)[0]
    new = rng.choice([0, 1, 127, 128, 2**31, 2**32 + 1, 2**63, 2**64 - 1, old + 1, max(old - 1, 0), old * 2])
    out[f.pos:f.pos + f.size] = varint(new)
    return out, f"protobuf length of {f.label} at byte {f.pos}: {old} -> {new}"


def varint(n: int) -> bytes:
    b = bytearray()
    while True:
        b.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(b)


def read_varint(raw, pos: int) -> tuple[int, int]:
    """(value, position after it)."""
    n = shift = 0
    while True:
        b = raw[pos]
        n |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            return n, pos


_BINARY_OPS = {"varint": _varint, "bitflip": _bitflip, "overwrite": _overwrite, "insert": _insert, "delete": _delete,
               "truncate": _truncate, "field": _field, "append": _append, "nonfinite": _nonfinite, "huge": _huge,
               "gguf": _gguf_semantic, "header_json": _header_json}


# ------------------------------------------------------------------ JSON


def safetensors_values(path: tuple, rng: random.Random) -> list:
    """Values aimed at a safetensors header entry's fields."""
    if path and path[-1] == "dtype" or (len(path) >= 2 and path[-2] == "dtype"):
        return ["F64", "I8", "BOOL", "F8_E4M3", "Q4", "", "bf16", 3, None]
    if "data_offsets" in path:
        return [[0, 0], [0, 2**64], [-1, 10], [10, 0], [0, 1e30], ["0", "8"], [0], [0, 8, 16], 0]
    if "shape" in path:
        return [[], [0], [-1, 4], [2**63, 2], [2**40, 2**40], [1.5], ["4"], [[4]], None]
    return []


def _walk_pick(rng: random.Random, doc: Any) -> tuple:
    """A random path into `doc`, stopping early often (shallow nodes matter most)."""
    path: tuple = ()
    node = doc
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path, node = path + (key,), node[key]
    return path


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def mutate_json(rng: random.Random, data: bytes, values=None) -> tuple[bytes, str]:
    """One JSON mutation; `values(path, rng)` offers values aimed at a path (may be empty)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # an earlier mutation nested it too deep to walk
        doc = None
    if doc is None or rng.random() < 0.15:
        return _text_mutation(rng, data)
    raws: list[str] = []

    def enc(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(str(v))
            return f"@@RAW{len(raws) - 1}@@"
        return v

    path = _walk_pick(rng, doc)
    aimed = values(path, rng) if values else []
    op = rng.random()
    if not path:
        doc, note = enc(rng.choice(JSON_SPECIAL)), "whole document replaced"
    else:
        parent, key = _get(doc, path[:-1]), path[-1]
        old = parent[key]
        if op < 0.1 and isinstance(parent, dict):
            del parent[key]
            note = f"deleted {path}"
        elif op < 0.18 and isinstance(parent, dict):
            odd = rng.choice(ODD_KEYS)
            parent[odd] = enc(rng.choice(JSON_SPECIAL))
            note = f"added key {odd[:20]!r} beside {path}"
        elif op < 0.3:
            parent[key] = rng.choice([str(old), [old], {"v": old}, json.dumps(old)])
            note = f"type of {path} swapped"
        else:
            new = rng.choice(aimed) if aimed and rng.random() < 0.7 else rng.choice(JSON_SPECIAL)
            parent[key] = enc(new)
            note = f"{path} = {str(new)[:40]!r}"
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    for i, r in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', r)
    return text.encode("utf-8", "surrogatepass"), note


def _text_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    op = rng.randrange(6)
    if op == 0 and data:
        p = rng.randrange(len(data))
        return data[:p], f"JSON text truncated at {p}"
    if op == 1 and data:
        p = rng.randrange(len(data))
        c = rng.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\xff", b"\x00"])
        return data[:p] + c + data[p:], f"{c!r} inserted at {p}"
    if op == 2:
        return b"\xef\xbb\xbf" + data, "UTF-8 BOM prepended"
    if op == 3:
        whole = rng.choice([b"", b"null", b"[]", b"{}", b"1e999", b"\xff\xfe", b"[" * 100_000, b'"x"'])
        return whole, f"replaced by {whole[:12]!r}"
    if op == 4 and data:
        p = rng.randrange(len(data))
        return data[:p] + data[p + 1:], f"byte deleted at {p}"
    dup = data.replace(b"{", b'{"dup": 1, "dup": [2], ', 1)
    return dup, "duplicate key added"


# ------------------------------------------------------------------ text

ODD_TEXT = [b"", b" \n\t\n", b"\xff\xfe\x00\x01" * 64, b"\xef\xbb\xbf", b"\x00" * 1000, b"\xed\xa0\x80",
            "[/x] [bold]x[/bold] \x1b[31mred\u202e".encode(), b"a" * (1 << 20), b"ab " * (1 << 20),
            b"\r\n" * 5000, "\U0001f600".encode() * 20000, "x y\n".encode("utf-16")]
TEMPLATES = ["{% for %}", "{{ raise_exception('x') }}", "{% for x in range(10**9) %}{{ x }}{% endfor %}",
             "{{ messages[0]['content'] | e }}", "{% extends 'x' %}", "{% include '/etc/passwd' %}",
             "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{#", "{{", "{% endif %}", "[/x]"]


def mutate_text(rng: random.Random, data: bytes, extra: list = ()) -> tuple[bytes, str]:
    """A text file (chat template, calibration text) damaged or replaced by odd content."""
    op = rng.randrange(5)
    if op == 0:
        whole = rng.choice(ODD_TEXT + [t.encode() for t in extra])
        return whole, f"replaced by {whole[:16]!r} ({len(whole)} bytes)"
    if op == 1 and data:
        p = rng.randrange(len(data))
        ins = rng.choice(ODD_TEXT[2:7] + [t.encode() for t in extra] or [b"x"])
        return data[:p] + ins + data[p:], f"{ins[:16]!r} inserted at {p}"
    if op == 2 and data:
        p = rng.randrange(len(data))
        return data[:p], f"truncated at {p}"
    if op == 3:
        n = rng.choice((1 << 10, 1 << 16, 1 << 20))
        return bytes(rng.randrange(256) for _ in range(256)) * (n // 256), f"{n} random bytes"
    bad = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if bad:
            bad[rng.randrange(len(bad))] = rng.randrange(256)
    return bytes(bad), "random bytes overwritten"

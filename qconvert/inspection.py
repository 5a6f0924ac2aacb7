"""What is inside a model file, read from its headers alone.

`inspect(path)` takes a .gguf file, a .safetensors file, a sharded set's
`model.safetensors.index.json`, or a directory holding one of those, and returns a
`Report`: format, metadata, one row per tensor, totals per tensor type, parameter count,
file size and average bits per weight. No tensor data is read: GGUF headers go through
`gguf_header.read_gguf_header` (bounds-checked, and far faster than gguf-py's GGUFReader on
a large vocabulary; it reports the same keys, including GGUFReader's GGUF.* header
entries), safetensors through `read_header`. Every broken file is one FormatError naming it.

Shapes are reported in each format's own order: GGUF lists ne0..ne3 (ne0 is the row, the
contiguous dimension), the reverse of the PyTorch/numpy order safetensors uses.

Errors and problems. A file whose header cannot be read, or one of whose tensors cannot be
located in it (truncated, garbled counts, unknown value or tensor types, dimensions whose
product overflows 64 bits, data past the end of the file, an invalid `general.alignment`),
is an error: one FormatError naming the file and the tensor, exit 2 in the CLI. A file that
reads but whose layout is wrong (overlapping tensor data, offsets off the alignment or
a `general.alignment` that disagrees with them, tensors not back to back, a tensor count one
too high, empty or over-long names, a zero dimension) is reported whole, with the faults in
`Report.problems` ({"tensor": name or None, "problem": text}): `--json` lists them under a
top-level "problems" key (always present, empty when none) and the table shows a
"Problems" section; the exit code stays 0, since inspect's job is to show what is there.
See gguf_header's module doc for the exact rules.

JSON. `Report.to_dict()` is valid JSON for every file inspect accepts (`allow_nan=False`):
non-finite floats in metadata are the strings "nan", "inf" and "-inf" (their "type" still
says FLOAT32/FLOAT64, or "float" for safetensors metadata), and metadata values nested deeper
than JSON_DEPTH levels are replaced by a string saying so.
"""

from __future__ import annotations

import math
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from .errors import FormatError, InputError
from .gguf_header import read_gguf_header
from .gguf_split import one_set, read_set
from .source.input_file import checked_input_file, stat_input
from .source.safetensors_file import overlaps, read_header, validate_header
from .source.shard_index import read_index, shard_paths

GGUF_SHAPE_ORDER = "ne0..ne3 (GGUF order: ne0 is the contiguous row; reverse of PyTorch/numpy order)"
ST_SHAPE_ORDER = "row-major (PyTorch/numpy order: last dimension is contiguous)"
DEFAULT_ARRAY_ITEMS = 8
JSON_DEPTH = 32  # far deeper than any real metadata; json's encoder recurses per level


def json_safe(v: Any, depth: int = 0) -> Any:
    """`v` with non-finite floats as "nan"/"inf"/"-inf" and nesting cut at JSON_DEPTH, so
    `json.dumps(..., allow_nan=False)` accepts it (see the module doc)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple, dict)) and depth >= JSON_DEPTH:
        return f"<{type(v).__name__} nested deeper than {JSON_DEPTH} levels, not shown>"
    if isinstance(v, (list, tuple)):
        return [json_safe(x, depth + 1) for x in v]
    if isinstance(v, dict):
        return {str(k): json_safe(x, depth + 1) for k, x in v.items()}
    return v


@dataclass
class MetaValue:
    """One metadata entry. Arrays longer than the item limit keep their first items only
    (`truncated` says so; `length` is always the full length)."""

    type: str
    value: Any
    item_type: str | None = None
    length: int | None = None
    truncated: bool = False

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"type": self.type, "value": json_safe(self.value)}
        if self.type == "ARRAY":
            d.update(item_type=self.item_type, length=self.length, truncated=self.truncated)
        return d


@dataclass
class TensorInfo:
    name: str
    type: str  # ggml type name (GGUF) or safetensors dtype
    shape: list[int]  # in the format's own order, see Report.shape_order
    n_elements: int
    n_bytes: int
    offset: int  # absolute byte offset of the tensor's data in its file
    file: str | None = None  # shard file name: sharded safetensors, a split GGUF set


@dataclass
class TypeTotal:
    type: str
    count: int
    params: int
    bytes: int


@dataclass
class Report:
    path: str
    format: str  # "gguf" | "safetensors"
    files: list[dict]  # [{"path": str, "size": int}]
    shape_order: str
    metadata: dict[str, MetaValue] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    header: dict = field(default_factory=dict)  # format facts: GGUF version, alignment...
    problems: list[dict] = field(default_factory=list)  # [{"tensor": str | None, "problem": str}]

    @property
    def file_size(self) -> int:
        return sum(f["size"] for f in self.files)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float | None:
        return self.tensor_bytes * 8 / self.n_params if self.n_params else None

    def totals(self) -> list[TypeTotal]:
        """Per tensor type, largest share of bytes first."""
        acc: dict[str, TypeTotal] = {}
        for t in self.tensors:
            tt = acc.setdefault(t.type, TypeTotal(t.type, 0, 0, 0))
            tt.count += 1
            tt.params += t.n_elements
            tt.bytes += t.n_bytes
        return sorted(acc.values(), key=lambda x: (-x.bytes, x.type))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "files": self.files,
            "file_size": self.file_size,
            "header": self.header,
            "n_params": self.n_params,
            "tensor_bytes": self.tensor_bytes,
            "bits_per_weight": self.bits_per_weight,
            "shape_order": self.shape_order,
            "problems": self.problems,
            "metadata": {k: v.to_dict() for k, v in self.metadata.items()},
            "totals": [asdict(t) for t in self.totals()],
            "tensors": [asdict(t) for t in self.tensors],
        }


def inspect(path: str | Path, max_array_items: int | None = DEFAULT_ARRAY_ITEMS) -> Report:
    """Report on a model file, sharded set or directory (see module doc). Arrays in the
    metadata keep their first `max_array_items` items (None keeps all)."""
    p = Path(path)
    if stat.S_ISDIR(stat_input(path, "model file").st_mode):
        p = _pick_in_dir(p)
    p = checked_input_file(p, "model file")  # a FIFO would block the read of its magic
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    if magic == b"GGUF":
        return _inspect_gguf(p, max_array_items)
    if p.suffix == ".gguf":
        raise FormatError(f"{p}: not a GGUF file (magic bytes {magic!r}, expected b'GGUF')")
    if p.suffix == ".json":
        return _inspect_index(p)
    return _inspect_safetensors(p)


def _pick_in_dir(d: Path) -> Path:
    for name in ("model.safetensors.index.json", "model.safetensors"):
        if (d / name).is_file():
            return d / name
    for pattern in ("*.gguf", "*.safetensors.index.json", "*.safetensors"):
        found = sorted(d.glob(pattern))
        if len(found) == 1 or (pattern == "*.gguf" and one_set(found)):
            return found[0]
        if len(found) > 1:
            names = ", ".join(f.name for f in found[:5])
            raise InputError(f"{d}: holds several {pattern} files ({names}); name the one to inspect")
    raise InputError(f"{d}: no .gguf, model.safetensors or model.safetensors.index.json here")


# --- GGUF -------------------------------------------------------------------------------

def _inspect_gguf(path: Path, max_items: int | None) -> Report:
    """One file, or the whole split set it is a member of (gguf_split.py): metadata and
    header facts from the first member, tensors and problems from every member (the
    tensor rows name their file)."""
    members = read_set(path, lambda p: read_gguf_header(p, max_items), lambda h: {kv.key: kv.value for kv in h.kv},
                       lambda h: len(h.tensors))
    h = members[0]
    rep = Report(str(path), "gguf", [{"path": str(m.path), "size": m.file_size} for m in members],
                 GGUF_SHAPE_ORDER)
    rep.header = {"version": h.version, "alignment": h.alignment, "data_offset": h.data_offset,
                  "big_endian": h.big_endian}
    # the header's own counts, under the names gguf-py's GGUFReader gives them
    rep.metadata = {"GGUF.version": MetaValue("UINT32", h.version),
                    "GGUF.tensor_count": MetaValue("UINT64", h.n_tensors),
                    "GGUF.kv_count": MetaValue("UINT64", h.n_kv)}
    for kv in h.kv:
        if kv.type == GGUFValueType.ARRAY:
            rep.metadata[kv.key] = MetaValue("ARRAY", kv.value, kv.item_type.name if kv.item_type else None,
                                             kv.length, kv.truncated)
        else:
            rep.metadata[kv.key] = MetaValue(kv.type.name, kv.value)
    named = len(members) > 1
    for m in members:
        label = m.path.name if named else None
        rep.tensors += [TensorInfo(t.name, t.type.name, list(t.ne), t.n_elements, t.n_bytes, t.offset, label)
                        for t in m.tensors]
        rep.problems += [{"tensor": p.tensor, "problem": f"{label + ': ' if label else ''}{p.problem}"}
                         for p in m.problems]
    return rep


# --- safetensors --------------------------------------------------------------------------

def _json_type(v: Any) -> str:
    return {str: "str", bool: "bool", int: "int", float: "float", list: "list", dict: "object"}.get(
        type(v), "null")


def _st_tensors(path: Path, label: str | None) -> tuple[list[TensorInfo], dict, int, list[dict]]:
    """Tensor rows, __metadata__, file size and layout problems of one safetensors file,
    every entry checked by the validator quantize uses (safetensors_file.validate_header)."""
    header, data_start = read_header(path)
    size = path.stat().st_size
    entries, meta = validate_header(path, header, data_start, size)
    rows = [TensorInfo(e.name, e.dtype, list(e.shape), e.n_elements, e.n_bytes, data_start + e.begin, label)
            for e in entries.values()]
    problems = [{"tensor": b.name, "problem": f"{label + ': ' if label else ''}{why}"}
                for _, b, why in overlaps(entries)]
    return rows, meta, size, problems


def _inspect_safetensors(path: Path) -> Report:
    rows, meta, size, problems = _st_tensors(path, None)
    rep = Report(str(path), "safetensors", [{"path": str(path), "size": size}], ST_SHAPE_ORDER)
    rep.metadata = {k: MetaValue(_json_type(v), v) for k, v in meta.items()}
    rep.tensors = rows
    rep.problems = problems
    return rep


def _inspect_index(path: Path) -> Report:
    weight_map, index_meta = read_index(path)  # shard names are plain file names beside the index
    rep = Report(str(path), "safetensors", [], ST_SHAPE_ORDER)
    for k, v in index_meta.items():
        rep.metadata[f"index.metadata.{k}"] = MetaValue(_json_type(v), v)
    shard_meta: dict[str, dict] = {}
    found = {p.name: p for p in shard_paths(path, weight_map)}  # each exists and is a regular file
    for shard in sorted(found):
        sp = found[shard]
        rows, meta, size, problems = _st_tensors(sp, shard)
        rep.files.append({"path": str(sp), "size": size})
        rep.tensors.extend(rows)
        rep.problems.extend(problems)
        shard_meta[shard] = meta
        present = {r.name for r in rows}
        for name in (n for n, s in weight_map.items() if s == shard and n not in present):
            raise FormatError(f"{path}: says tensor {name!r} is in {shard}, but {shard} does not hold it")
    # shard __metadata__ shown once when every shard agrees, per shard where they differ
    keys = dict.fromkeys(k for m in shard_meta.values() for k in m)
    for k in keys:
        vals = [m.get(k) for m in shard_meta.values()]
        if all(v == vals[0] for v in vals):
            rep.metadata[k] = MetaValue(_json_type(vals[0]), vals[0])
        else:
            for shard, m in shard_meta.items():
                if k in m:
                    rep.metadata[f"{shard}:{k}"] = MetaValue(_json_type(m[k]), m[k])
    return rep


__all__ = ["inspect", "Report", "TensorInfo", "MetaValue", "TypeTotal"]

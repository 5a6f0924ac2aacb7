"""model.safetensors.index.json: which shard file holds each tensor.

The index is input like any other, and its shard names decide which files get opened.
Each must be a plain file name in the index's own directory, as `save_pretrained` writes
them ("model-00001-of-00004.safetensors"): no path separators, no "." or "..", no NUL, no
empty name. So `../../etc/x` or `/abs/path` never makes qconvert read a file outside the
model directory. The shard itself may be a symlink (a Hugging Face cache snapshot links
each file to ../../blobs/<hash>): containment is about the name the index gives, not
where the file's bytes live."""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError, InputError
from .json_text import parse_json

INDEX = "model.safetensors.index.json"


def plain_name_problem(name: object) -> str | None:
    """Why `name` is not a plain file name, or None when it is."""
    if not isinstance(name, str):
        return f"is a JSON {type(name).__name__}, not a file name"
    if not name or name in (".", ".."):
        return "is not a file name"
    if "\x00" in name:
        return "holds a NUL byte"
    if "/" in name or "\\" in name:
        return "is a path, not a plain file name in the model directory"
    if len(name.encode("utf-8", "surrogatepass")) > 255:  # NAME_MAX on every common file system
        return "is longer than a file name can be"
    return None


def read_index(index: Path) -> tuple[dict[str, str], dict]:
    """(weight_map {tensor name: shard file name}, the index's "metadata" object or {}),
    every shard name checked."""
    try:
        text = index.read_bytes()
    except OSError as e:
        raise InputError(f"{index}: cannot read the safetensors index ({e.strerror})") from None
    data = parse_json(text, f"{index}: safetensors index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError(f"{index}: not a safetensors index (expected JSON with a non-empty \"weight_map\" "
                          "object of tensor names to shard files)")
    for tensor, shard in weight_map.items():
        why = plain_name_problem(shard)
        if why is not None:
            shown = repr(shard) if isinstance(shard, str) else "its value"
            raise FormatError(f"{index}: weight_map entry for tensor {tensor!r}: shard {shown} {why}; "
                              "shards must be files beside the index")
    meta = data.get("metadata")
    return weight_map, meta if isinstance(meta, dict) else {}


def shard_paths(index: Path, weight_map: dict[str, str]) -> list[Path]:
    """The distinct shard files in first-mention order, each an existing regular file (or
    a symlink to one) in the index's directory."""
    out = []
    for shard in dict.fromkeys(weight_map.values()):
        p = index.parent / shard
        try:
            p.stat()
        except FileNotFoundError:
            raise InputError(f"{p}: shard listed in {index.name} is missing (incomplete download?)") from None
        except OSError as e:
            raise InputError(f"{p}: shard listed in {index.name} cannot be read ({e.strerror})") from None
        if not p.is_file():  # a FIFO or device would block or never end
            raise InputError(f"{p}: shard listed in {index.name} is not a regular file")
        out.append(p)
    return out

"""llama.cpp's split GGUF layout, as `llama-gguf-split` writes it and llama.cpp loads it.

A model too large for one file (Hugging Face refuses files over 50 GB) ships as a set:

    NAME-00001-of-00003.gguf   all the model's metadata, split keys, its share of tensors
    NAME-00002-of-00003.gguf   split keys only, its share of tensors
    NAME-00003-of-00003.gguf   ...

Split keys, in every member: split.no (UINT16, 0-based), split.count (UINT16, members),
split.tensors.count (INT32, tensors in the whole set). Each member is a complete GGUF
file (its own header, tensor infos with offsets into its own data section). llama.cpp,
given the first member, derives the others' names from its name and split.count (five
digits each, so at most 65,535 members) and refuses a member whose split.no is not its
place.

Here: the names, the keys a writer adds, and reading a set back (quantize's GGUF input and
`inspect`), given any of its members."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import gguf

from .errors import FormatError, InputError

KEY_NO = gguf.Keys.Split.LLM_KV_SPLIT_NO  # "split.no"
KEY_COUNT = gguf.Keys.Split.LLM_KV_SPLIT_COUNT  # "split.count"
KEY_TENSORS = gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT  # "split.tensors.count"
MAX_MEMBERS = 0xFFFF  # split.count is a UINT16
MEMBER = re.compile(r"(?P<prefix>.+)-(?P<no>[0-9]{5})-of-(?P<count>[0-9]{5})\.gguf")
# bytes the three keys take in a member's header (key string, value type, value)
KEYS_BYTES = sum(8 + len(k) + 4 + n for k, n in ((KEY_NO, 2), (KEY_COUNT, 2), (KEY_TENSORS, 4)))


def member_path(prefix: Path, no: int, count: int) -> Path:
    """The path of member `no` (0-based) of `count`: PREFIX-00001-of-00003.gguf."""
    return prefix.with_name(f"{prefix.name}-{no + 1:05d}-of-{count:05d}.gguf")


def member_paths(prefix: Path, count: int) -> list[Path]:
    return [member_path(prefix, i, count) for i in range(count)]


def prefix_of(path: Path) -> Path:
    """The prefix a set's names share, from a path the user gave for the output: x.gguf or
    x (PREFIX x), or an earlier set's member name x-00001-of-00004.gguf (PREFIX x)."""
    m = MEMBER.fullmatch(path.name)
    if m:
        return path.with_name(m["prefix"])
    return path.with_name(path.name[:-len(".gguf")]) if path.name.lower().endswith(".gguf") else path


def one_set(paths: list[Path]) -> bool:
    """Whether `paths` (sorted) are exactly the members of one split set, by their names."""
    m = MEMBER.fullmatch(paths[0].name) if paths else None
    return m is not None and paths == member_paths(paths[0].with_name(m["prefix"]), int(m["count"]))


def add_split_keys(w: gguf.GGUFWriter, no: int, count: int, n_tensors: int) -> None:
    w.add_uint16(KEY_NO, no)
    w.add_uint16(KEY_COUNT, count)
    w.add_int32(KEY_TENSORS, n_tensors)


def split_count(kv: dict, path: Path) -> int:
    """split.count of a header's {key: value} (1 when absent), checked to be a count."""
    count = kv.get(KEY_COUNT, 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_MEMBERS:
        raise FormatError(f"{path}: {KEY_COUNT} should be an integer from 1 to {MAX_MEMBERS}")
    return count


def _member_no(kv: dict, path: Path, count: int) -> int:
    no = kv.get(KEY_NO)
    if not isinstance(no, int) or isinstance(no, bool) or not 0 <= no < count:
        raise FormatError(f"{path}: part of a GGUF split into {count} files, but its {KEY_NO} is "
                          f"{'missing' if no is None else repr(no)} (expected 0 to {count - 1})")
    return no


def set_members(path: Path, kv: dict) -> list[Path]:
    """Every member of the split set `path` (a member, whose header's {key: value} is `kv`)
    belongs to, first first; [path] for a file that is not part of a set. The name must
    be the one llama.cpp derives, since that is how it finds the other members."""
    count = split_count(kv, path)
    if count == 1:
        return [path]
    no = _member_no(kv, path, count)
    m = MEMBER.fullmatch(path.name)
    expected = f"-{no + 1:05d}-of-{count:05d}.gguf"
    if m is None or not path.name.endswith(expected):
        raise InputError(f"{path}: member {no + 1} of a GGUF split into {count} files, but not named "
                         f"...{expected} as llama.cpp expects; rename the set's files PREFIX-00001-of-"
                         f"{count:05d}.gguf ... (or merge them with llama-gguf-split --merge)")
    return member_paths(path.with_name(m["prefix"]), count)


def read_set(path: Path, read: Callable[[Path], object], kv_of: Callable[[object], dict],
             n_tensors_of: Callable[[object], int]) -> list:
    """Read every member of the set `path` belongs to with `read` (a header reader), each
    checked to be the member its name says: split.no its place, the same split.count, and
    the tensor count the first member promises. Returns the members' headers, first first."""
    given = read(path)
    paths = set_members(path, kv_of(given))
    if len(paths) == 1:
        return [given]
    count = len(paths)
    headers = []
    for i, p in enumerate(paths):
        if p == path:
            headers.append(given)
            continue
        if not p.exists():
            raise InputError(f"{p}: member {i + 1} of the {count}-file GGUF set {paths[0].name} is missing "
                             "(incomplete download?)")
        if not p.is_file():  # a FIFO would block the read, a device never end
            raise InputError(f"{p}: member {i + 1} of the {count}-file GGUF set {paths[0].name} is not a "
                             "regular file")
        h = read(p)
        kv = kv_of(h)
        other = split_count(kv, p)
        no = _member_no(kv, p, other) if other > 1 else None
        if other != count or no != i:
            said = f"member {no + 1} of {other}" if no is not None else "a file on its own"
            raise FormatError(f"{p}: its split keys say {said}, but its name says member {i + 1} of {count}; "
                              "the set's files do not belong together")
        headers.append(h)
    promised = kv_of(headers[0]).get(KEY_TENSORS)
    found = sum(n_tensors_of(h) for h in headers)
    if promised is not None and promised != found:
        raise FormatError(f"{paths[0]}: {KEY_TENSORS} says {promised} tensors, but the {count} files hold "
                          f"{found}; the set's files do not belong together")
    return headers

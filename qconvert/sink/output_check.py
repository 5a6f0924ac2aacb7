"""What an output path may be, checked before any long work (calibration, GPTQ, writing).

qconvert runs as root in containers and CI, where permission bits protect nothing, so
these checks look at file types and identities (st_dev, st_ino), never at modes or
spellings of paths:

- Only a regular file (or nothing) is ever replaced. A device (/dev/null, /dev/full), a
  FIFO, a socket or a directory is refused: renaming over /dev/null would replace the
  device node with a file, and writing through to a device would pretend a model was
  saved. `--dry-run` is the way to write nothing.
- A symbolic link is followed: its target is the output, replaced in the target's own
  directory (what `cp` and llama.cpp's quantize do), and checked like any other path.
- No output is, or is a hard link to, a file the run reads: the GGUF input, every file
  of a Hugging Face model directory, an imatrix or calibration text.
- The directory must take a new file: one is created there and removed. A read-only
  mount, /proc or a parent that is a file only show on trying.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path
from typing import Iterable, Optional

from ..errors import InputError, OutputExistsError
from .stale import temp_name

KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
         (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def kind_of(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


NAME_MAX = 255  # bytes in one directory entry (ext4, xfs, btrfs, tmpfs, overlayfs)


def target_of(path: Path) -> Path:
    """The path a write lands on: a symbolic link's target (even a dangling one's),
    otherwise the path itself."""
    path = Path(path)
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        is_link = False
    except OSError as e:  # a name too long, a parent that is a file, a link loop
        raise InputError(f"{path}: cannot use as output ({e.strerror})") from None
    return Path(os.path.realpath(path)) if is_link else path


def check_name(target: Path, shown: Path) -> None:
    """A name qconvert can write and report: no control characters (a newline would split
    every message and listing that names the file), and short enough that the temporary
    name it is written under first, .NAME.PID.partial, fits in one directory entry."""
    for p in (shown, target):
        if any(unicodedata.category(c) == "Cc" for c in str(p)):
            raise InputError(f"{shown}: output path holds a control character (newline, tab, escape); "
                             "choose a plain name")
    size = len(os.fsencode(target.name))
    room = NAME_MAX - len(os.fsencode(temp_name("")))
    if size > room:
        raise InputError(f"{shown}: output file name is {size} bytes; with the temporary suffix it is "
                         f"first written under, at most {room} bytes fit: choose a shorter name")


def stat_or_none(path: Path, shown: Path) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:  # a link loop, a parent that is a file, a name too long
        raise InputError(f"{shown}: cannot use as output ({e.strerror})") from None


def read_identities(reads: Iterable) -> dict[tuple[int, int], Path]:
    """(st_dev, st_ino) -> path of every file a run reads: files as given, and every file
    directly inside a given directory (a Hugging Face model: config, shards, index,
    tokenizer files), links followed (a hub cache's snapshot links point at blobs)."""
    ids: dict[tuple[int, int], Path] = {}
    for r in reads:
        if not isinstance(r, (str, os.PathLike)):
            continue  # an in-memory importance matrix, or calibration=True
        p = Path(r)
        files = [p]
        if p.is_dir():
            # a GGUF beside a Hugging Face model's files is never read when converting that
            # directory: it is an earlier output (`cd model && qconvert quantize .` puts the
            # default output there), which --force may replace
            try:
                files = [p / e.name for e in os.scandir(p) if not e.name.endswith(".gguf")]
            except OSError:
                files = []
        for f in files:
            try:
                st = os.stat(f)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                ids[(st.st_dev, st.st_ino)] = f
    return ids


def check_not_read(shown: Path, st: os.stat_result, reads: Iterable) -> None:
    hit = read_identities(reads).get((st.st_dev, st.st_ino))
    if hit is None:
        return
    if os.path.abspath(hit) == os.path.abspath(shown):
        raise InputError(f"{shown}: output path is a file this run reads (the input); choose another output path")
    raise InputError(f"{shown}: output path is the same file as {hit} (a link to it), which this run reads; "
                     "choose another output path")


def check_parent(path: Path, shown: Optional[Path] = None) -> None:
    """The output's directory exists and takes a new file (tried for real)."""
    shown = shown or path
    parent = path.parent
    st = stat_or_none(parent, shown)
    if st is None:
        raise InputError(f"{shown}: output directory {parent} does not exist")
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{shown}: {parent} is {kind_of(st.st_mode)}, not a directory")
    probe = parent / temp_name("qconvert-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # our own probe name, left by this process: the directory takes files
    except OSError as e:
        raise InputError(f"{shown}: cannot write in {parent} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_output(path: Path | str, force: bool, *, reads: Iterable = ()) -> Path:
    """Check an output file path; returns the path to write (a link's target)."""
    shown = Path(path)
    target = target_of(shown)
    check_name(target, shown)
    st = stat_or_none(target, shown)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{shown}: output path is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{shown}: output path is {kind_of(st.st_mode)}; qconvert only writes regular files "
                             "(give a file path, or use --dry-run to write nothing)")
        check_not_read(shown, st, reads)
        if not force:
            raise OutputExistsError(f"{shown} already exists; pass --force to overwrite it")
    check_parent(target, shown)
    return target


def check_output_dir(path: Path | str, force: bool, *, input_dir: Path | str | None = None) -> Path:
    """Check an output directory path (safetensors); returns the path to write."""
    shown = Path(path)
    target = target_of(shown)
    check_name(target, shown)
    st = stat_or_none(target, shown)
    if st is not None:
        if input_dir is not None:
            check_not_over_model(shown, target, Path(input_dir))
        if stat.S_ISREG(st.st_mode):
            raise InputError(f"{shown}: output path is a file; give a directory name")
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{shown}: output path is {kind_of(st.st_mode)}; give a directory name")
        if not force:
            raise OutputExistsError(f"{shown} already exists; pass --force to overwrite it")
        check_replaceable(shown, target)
    check_parent(target, shown)
    return target


# what a checkpoint directory (an earlier safetensors output) holds: weights, index,
# config and the tokenizer files copied beside them
CHECKPOINT_SUFFIXES = (".safetensors", ".json", ".jinja")
CHECKPOINT_NAMES = ("tokenizer.model", "merges.txt")


def check_replaceable(shown: Path, target: Path) -> None:
    """--force replaces a directory as a whole, so only one holding nothing but a
    checkpoint's files (an earlier output) or nothing at all: `-o ~ --force` must not
    delete a home directory, nor `-o results --force` someone's notes."""
    try:
        entries = sorted(os.scandir(target), key=lambda e: e.name)
    except OSError as e:
        raise InputError(f"{shown}: cannot read the existing output directory ({e.strerror})") from None
    foreign = [e.name for e in entries
               if not (e.is_file(follow_symlinks=False)
                       and (e.name.endswith(CHECKPOINT_SUFFIXES) or e.name in CHECKPOINT_NAMES))]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(f"{shown}: --force replaces the whole directory, and it holds {foreign[0]!r}{more}, "
                         "which is not a checkpoint file; choose another output directory or empty this one")


def check_not_over_model(shown: Path, target: Path, model_dir: Path) -> None:
    """Replacing `target` must not remove the model: it may not be the model directory or
    one that holds it (compared by identity, so links and `..` do not hide it)."""
    d = Path(os.path.realpath(model_dir))
    for holder in (d, *d.parents):
        try:
            if os.path.samefile(holder, target):
                raise InputError(f"{shown}: output directory is or holds the input model {model_dir}; "
                                 "choose another")
        except OSError:
            continue


def same_place(a: Path | str, b: Path | str) -> bool:
    """Whether two paths name one file: the same resolved path (links and `..` followed),
    or two names of one existing file."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_apart(paths: dict[str, Path | str | None]) -> None:
    """Every file a run writes is a different file: {option: path}, None for not given.
    `-o x.gguf --save-imatrix x.gguf` would write the statistics and then the model over
    them (or the other way round), and report both as saved."""
    given = [(k, v) for k, v in paths.items() if v is not None]
    for i, (ka, a) in enumerate(given):
        for kb, b in given[i + 1:]:
            if same_place(a, b):
                raise InputError(f"{b}: given as both {ka} and {kb}; each output needs its own path")


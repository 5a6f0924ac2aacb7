"""GGUF output as llama.cpp's split set (--split-max-size / --split-max-tensors): a layer
over the one-file writer. The plan's tensors, in order, are grouped into members
(`split_layout`, from shapes alone, so the names are known before any long work); then
each member is one call of gguf_file.write_file, and all of them reach their names
together or not at all (sink/atomic_set.py). The layout is gguf_split.py's: the first
member holds all the model's metadata, every member the split keys.

--split-max-size bounds each whole file (header and padding included), not just its
tensor data: Hugging Face's 50 GB limit is on files. A tensor too large for the limit on
its own gets a file of its own, which is then larger."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..gguf_split import KEYS_BYTES, MAX_MEMBERS, MEMBER, add_split_keys, member_paths, prefix_of
from ..plan.tensor_plan import Plan, TensorPlan
from ..progress import reporter
from ..sink.atomic_set import atomic_paths
from ..source.model_source import Source
from .gguf_file import Encoder, add_metadata, header_layout, paired, write_file

FIXED_HEADER = 4 + 4 + 8 + 8  # magic, version, tensor count, key count


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def info_bytes(tp: TensorPlan) -> int:
    """Bytes of one tensor's entry in a GGUF header: name, dimensions, type, offset."""
    return 8 + len(tp.name.encode("utf-8")) + 4 + 8 * len(tp.shape) + 4 + 8


@dataclass(frozen=True)
class Member:
    tensors: tuple[TensorPlan, ...]
    size: int  # bytes of the file


@dataclass(frozen=True)
class SplitLayout:
    members: tuple[Member, ...]

    @property
    def count(self) -> int:
        return len(self.members)


def split_layout(src: Source, plan: Plan, split) -> SplitLayout:
    """Members in plan order, each as full as `split` (a job.Split) allows."""
    header, alignment = header_layout(src, plan)
    metadata = header - FIXED_HEADER - sum(info_bytes(tp) for tp in plan.tensors)  # the model's keys

    def size(tensors: list[TensorPlan], first: bool) -> int:
        head = FIXED_HEADER + KEYS_BYTES + (metadata if first else 0) + sum(info_bytes(t) for t in tensors)
        return _pad(head, alignment) + sum(_pad(t.nbytes, alignment) for t in tensors)

    groups: list[list[TensorPlan]] = [[]]
    for tp in plan.tensors:
        cur = groups[-1]
        full = split.max_tensors is not None and len(cur) >= split.max_tensors
        over = split.max_bytes is not None and size(cur + [tp], len(groups) == 1) > split.max_bytes
        if cur and (full or over):
            groups.append([tp])
        else:
            cur.append(tp)
    if len(groups) > MAX_MEMBERS:
        raise InputError(f"the split set would have {len(groups):,} files, more than the {MAX_MEMBERS:,} "
                         "llama.cpp can name; raise --split-max-size or --split-max-tensors")
    members = tuple(Member(tuple(g), size(g, i == 0)) for i, g in enumerate(groups))
    return SplitLayout(members)


def set_paths(out: Path, count: int) -> list[Path]:
    """The member paths for the output path `out` (x.gguf, x, or a member's name)."""
    return member_paths(prefix_of(out), count)


def checked_set(src: Source, plan: Plan, out: Path, split, force: bool, reads) -> list[Path]:
    """Every member path of the set `out` names, each checked as an output file is
    (sink/output_check.py: a regular file or nothing, never a file the run reads, --force
    to replace); returns the paths to write (links' targets)."""
    from ..sink.output_check import check_output

    _check_given(out, reads)
    return [check_output(p, force, reads=reads) for p in set_paths(out, split_layout(src, plan, split).count)]


def _check_given(out: Path, reads) -> None:
    """The path the user gave names the set; where something is already there, it must be a
    file the set may sit beside: `-o /dev/null` or `-o DIR` would otherwise put the members
    beside the device or the directory (/dev/null-00001-of-00002.gguf), and `-o` naming a
    file the run reads is a slip, refused as it is for one file."""
    import os
    import stat

    from ..sink.output_check import check_not_read, kind_of, stat_or_none, target_of

    st = stat_or_none(target_of(out), out)
    if st is None:
        return
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{out}: output path is {kind_of(st.st_mode)}; a split set is named by a file path such "
                         f"as {os.path.join(out, 'model.gguf') if stat.S_ISDIR(st.st_mode) else 'model.gguf'} "
                         "(or use --dry-run to write nothing)")
    check_not_read(out, st, reads)


def output_files(out: Path, split) -> list[Path]:
    """The files a finished run wrote: `out`, or the set whose first member `out` is."""
    if split is None:
        return [out]
    m = MEMBER.fullmatch(out.name)
    return member_paths(out.with_name(m["prefix"]), int(m["count"]))


def dry_notes(job, planned) -> list[str]:
    """What a --dry-run with --split-max-* would write: the set's names and sizes."""
    if job.split is None:
        return []
    from .gguf_file import default_output

    layout = split_layout(planned.src, planned.plan, job.split)
    paths = set_paths(job.output or default_output(planned.src, planned.label), layout.count)
    sizes = [m.size for m in layout.members]
    return [f"dry run: would write a set of {layout.count} files, {paths[0]}"
            + (f" ... {paths[-1].name}" if layout.count > 1 else "")
            + f" ({sum(sizes):,} bytes; the largest file {max(sizes):,})"]


def write_split(src: Source, plan: Plan, out: Path, encoder: Encoder, progress, split) -> Optional[object]:
    """Write the set whose first member is `out` (or whose prefix `out` gives); returns
    the tokenizer facts of the first member's metadata."""
    layout = split_layout(src, plan, split)
    paths = set_paths(out, layout.count)
    by_name = {tp.name: (s, tp) for s, tp in paired(src, plan)}
    n_tensors = len(plan.tensors)
    tok = None
    with atomic_paths(paths) as tmps, reporter(progress) as rep:
        rep.start(plan.ftype, n_tensors)
        for no, (tmp, m) in enumerate(zip(tmps, layout.members)):
            part = Plan(list(m.tensors), plan.ftype)

            def header(w, no=no):
                made = add_metadata(src, w, plan, plan.ftype) if no == 0 else _drop_model_keys(w)
                add_split_keys(w, no, layout.count, n_tensors)
                return made

            made = write_file(tmp, src, part, [by_name[tp.name] for tp in m.tensors], encoder, rep, header)
            if no == 0:
                tok = made
    return tok


def _drop_model_keys(w) -> None:
    """Members after the first carry only the split keys (as llama-gguf-split writes them):
    GGUFWriter adds general.architecture on its own."""
    for kv in w.kv_data:
        kv.clear()
    return None

"""GGUF output with --scheme awq: the preset's plan, AWQ scales searched on each tensor's
planned block type and folded into the float model (schemes/awq_driver.py), then the
folded checkpoint written as --calibration writes any model: importance-weighted with the
statistics of the same pass (mean x² of each linear's scaled input).

--scheme awq+gptq / awq+gptq-imatrix: the same fold, then GPTQ (routes/gptq.py) over the
folded checkpoint: a second calibration pass whose Hessians come from the folded model's
own activations (x / s), true-sequential as for --scheme gptq. For safetensors output the
same two steps are `safetensors_awq` below.

Under torchrun every rank needs the folded checkpoint for the GPTQ pass; rank 0 keeps it in
the scratch directory beside the output, the other ranks in a temporary directory of their
own that is removed when their passes end."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError
from ..job import Job
from ..results import GGUFResult
from ..schemes.importance import importance_plan
from ..source.model_source import Source, open_source
from .base import CALIBRATION_RUN, GGUF_OUTPUT, Route
from .gguf import PRESET_OPTIONS, GGUFPlanned, preset_plan_of, write_with_importance
from .gguf_output import output_path
from .gguf_split_out import dry_notes
from .gptq import GPTQRoute
from .statistics import statistics_reads

DRY_NOTE = "dry run: calibration not run; the plan's types do not depend on it"


def with_statistics(job: Job) -> Job:
    """The job as the planner should see it: statistics are coming (from the AWQ pass), so
    the mixes llama.cpp varies with an imatrix are chosen as with one."""
    return replace(job, calibration=replace(job.calibration, text=job.calibration.text or True))


class AWQRoute(Route[GGUFPlanned, GGUFResult]):
    name = "gguf-awq"
    scratch_label = "qconvert-awq"
    title = "GGUF output with --scheme awq (it collects its own statistics)"

    def needs_scratch(self, job: Job) -> bool:
        return True

    def consumes(self, job: Job) -> frozenset[str]:
        return PRESET_OPTIONS | GGUF_OUTPUT | {"calibration"} | CALIBRATION_RUN

    def plan(self, job: Job) -> GGUFPlanned:
        src = open_source(job.source, vocab_pre=job.vocab_pre)
        if src.is_gguf:
            raise InputError(f"{src.path}: AWQ runs the Hugging Face model; give the model directory")
        type_name, plan = preset_plan_of(with_statistics(job), src)
        return GGUFPlanned(src, plan, type_name, (DRY_NOTE,) if job.dry_run else ())

    def output_path(self, job: Job, planned: GGUFPlanned) -> Path:
        return output_path(planned.src, job.output, planned.label, job.force, statistics_reads(job.calibration),
                           job.split, planned.plan)

    def prepare(self, job: Job, planned: GGUFPlanned, scratch: Optional[Path]):
        """The AWQ pass over the planned types; the folded checkpoint lands in `scratch`
        (None: a torchrun rank that writes nothing keeps no checkpoint)."""
        return gguf_folded(job, planned, scratch)

    def write(self, job: Job, planned: GGUFPlanned, prepared, out: Path) -> GGUFResult:
        folded = prepared
        src = open_source(folded.model_dir, vocab_pre=job.vocab_pre)
        _, plan = preset_plan_of(with_statistics(job), src)
        imx = awq_importance(folded, src)
        plan, notes = importance_plan(plan, imx, "--scheme awq")
        return write_with_importance(job, replace(planned, src=src), plan, imx, out,
                                     list(planned.notes) + notes + awq_notes(folded.stats))

    def dry_result(self, job: Job, planned: GGUFPlanned) -> GGUFResult:
        return GGUFResult(None, planned.plan, notes=list(planned.notes) + dry_notes(job, planned))


def awq_importance(folded, src: Source):
    """The AWQ pass's statistics as an importance matrix keyed by GGUF name."""
    from ..calib.imatrix import ImportanceMatrix

    imx = ImportanceMatrix()
    gguf_name = {s.hf_name: s.name for s in src.tensors}
    for hf_name, (meansq, rows) in folded.importance.items():
        if hf_name in gguf_name:
            imx.add(gguf_name[hf_name], meansq.astype("float64") * rows, rows)
    return imx


def awq_notes(stats: dict[str, dict]) -> list[str]:
    ratios = [v["err"] / v["rtn_err"] for v in stats.values() if v["rtn_err"] > 0]
    if not ratios:
        return []
    return [f"AWQ scales on {len(stats)} groups of linears: output error {sum(ratios) / len(ratios):.3f}x "
            f"that of the same grid without them on average (min {min(ratios):.3f})"]


def gguf_folded(job: Job, planned: GGUFPlanned, store: Optional[Path]):
    """AWQ's pass with each tensor's planned GGUF block type as its search grid."""
    from ..schemes.awq_driver import gguf_quantizer, run_awq

    by_name = {tp.name: tp for tp in planned.plan.tensors}
    types = {s.hf_name: by_name[s.name].qtype for s in planned.src.tensors if s.name in by_name}

    def quantizer_for(hf_name: str):
        qt = types.get(hf_name)
        return gguf_quantizer(qt.name) if qt is not None and qt.quantized else None

    c = job.calibration
    return run_awq(planned.src.path, store, quantizer_for, text_file=c.text_file, n_samples=c.samples,
                   seqlen=c.seqlen, device=c.device, progress=job.progress)


@contextmanager
def fold_store(scratch: Optional[Path]) -> Iterator[Path]:
    """Where this rank keeps the folded checkpoint: rank 0's scratch directory, or a
    temporary directory removed afterwards (the other torchrun ranks)."""
    if scratch is not None:
        yield scratch
        return
    with tempfile.TemporaryDirectory(prefix="qconvert-awq-") as tmp:
        yield Path(tmp)


def gptq_store(scratch: Optional[Path]) -> Optional[Path]:
    """GPTQ's staged blocks, apart from the folded checkpoint (None on ranks that stage nothing)."""
    if scratch is None:
        return None
    (scratch / "gptq").mkdir()
    return scratch / "gptq"


class AWQGPTQRoute(GPTQRoute):
    """--scheme awq+gptq / awq+gptq-imatrix for GGUF: AWQ's fold, then GPTQ on the folded model."""

    name = "gguf-awq-gptq"
    scratch_label = "qconvert-awq"
    title = "GGUF output with --scheme awq+gptq (it collects its own statistics)"

    def describe(self, job: Job) -> str:
        return self.title.replace("awq+gptq", job.scheme.name, 1)

    def prepare(self, job: Job, planned: GGUFPlanned, scratch: Optional[Path]):
        """(GPTQ's statistics and staged blocks, the plan of the folded checkpoint)."""
        from ..schemes.gptq_driver import gptq_plan, run_gptq

        c = job.calibration
        with fold_store(scratch) as store:
            folded = gguf_folded(job, planned, store)
            src = open_source(folded.model_dir, vocab_pre=job.vocab_pre)
            _, plan = preset_plan_of(job, src)
            plan, _ = gptq_plan(plan, src)
            staged = gptq_store(scratch)
            stats = run_gptq(src, plan, staged, text_file=c.text_file, n_samples=c.samples, seqlen=c.seqlen,
                             device=c.device, damp=job.scheme.damp, progress=job.progress,
                             weighted_scales=job.scheme.name.endswith("gptq-imatrix"),
                             scale_search=job.scale_search)
        notes = tuple(planned.notes) + tuple(awq_notes(folded.stats))
        return (stats, staged), replace(planned, src=src, plan=plan, notes=notes)

    def write(self, job: Job, planned: GGUFPlanned, prepared, out: Path) -> GGUFResult:
        gptq_prepared, folded_planned = prepared
        return super().write(job, folded_planned, gptq_prepared, out)


def safetensors_awq(job: Job, planned, scratch: Optional[Path]):
    """--format safetensors with --scheme awq or awq+gptq: AWQ's pass with each projection's
    own int-N grid, then (awq+gptq) GPTQ over the folded model; (the folded checkpoint,
    GPTQ's staged results or None, its statistics)."""
    import torch

    from ..schemes.awq_driver import int_quantizer, run_awq
    from .safetensors_gptq import int_gptq

    s, c, splan = job.scheme, job.calibration, planned.plan
    sd = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[splan.scale_dtype]
    grids = {it.hf_name: int_quantizer(planned.bits, it.group_size, s.sym, sd) for it in splan.items if it.quantize}
    run = dict(text_file=c.text_file, n_samples=c.samples, seqlen=c.seqlen, device=c.device, progress=job.progress)
    if s.name == "awq":  # AWQ's clipping too: rounding to nearest keeps what it chose
        clips = {it.hf_name: it.group_size for it in splan.items if it.quantize}
        return run_awq(job.source, scratch, grids.get, clip_groups=clips.get, **run).model_dir, None, {}
    with fold_store(scratch) as store:
        folded = run_awq(job.source, store, grids.get, **run)
        quantized, stats = int_gptq(job, planned, folded.model_dir, gptq_store(scratch))
    return folded.model_dir, quantized, stats

"""GGUF output with --scheme awq: the preset's plan, AWQ scales searched on each tensor's
planned block type and folded into the float model (schemes/awq_driver.py), then the
folded checkpoint written as --calibration writes any model: importance-weighted with the
statistics of the same pass (mean x² of each linear's scaled input)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..job import Job
from ..results import GGUFResult
from ..schemes.importance import importance_plan
from ..source.model_source import Source, open_source
from .base import CALIBRATION_RUN, GGUF_OUTPUT, Route
from .gguf import PRESET_OPTIONS, GGUFPlanned, preset_plan_of, write_with_importance
from .gguf_output import output_path
from .gguf_split_out import dry_notes
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
        """The AWQ pass over the planned types; the folded checkpoint lands in `scratch`."""
        from ..schemes.awq_driver import gguf_quantizer, run_awq

        by_name = {tp.name: tp for tp in planned.plan.tensors}
        types = {s.hf_name: by_name[s.name].qtype for s in planned.src.tensors if s.name in by_name}

        def quantizer_for(hf_name: str):
            qt = types.get(hf_name)
            return gguf_quantizer(qt.name) if qt is not None and qt.quantized else None

        c = job.calibration
        return run_awq(planned.src.path, scratch, quantizer_for, text_file=c.text_file, n_samples=c.samples,
                       seqlen=c.seqlen, device=c.device, progress=job.progress)

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

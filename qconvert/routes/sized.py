"""GGUF output sized for a target (--target-size / --target-bpw / --target-vram): every
quantized tensor's type chosen by measured sensitivity within the budget (plan/sized.py).
The plan depends on the importance statistics, so this route calibrates while planning,
dry run or not, and checks its outputs before that."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..job import Job
from ..plan.type_plan import DEFAULT_TYPE, make_quant_plan
from ..results import GGUFResult
from ..schemes.importance import check_importance, importance_plan
from ..sink.output_check import check_parent
from ..source.model_source import open_source
from .base import GGUF_OUTPUT, Route
from .gguf import GGUFPlanned, importance_options, requantize_notes, write_with_importance
from .gguf_file import default_output, header_layout
from .gguf_output import output_path
from .gguf_split_out import dry_notes
from .statistics import checked_save_path, collected_importance, loaded_importance, statistics_reads

TARGETS = {"target_size": "size", "target_bpw": "bpw", "target_vram": "vram"}


class SizedRoute(Route[GGUFPlanned, GGUFResult]):
    name = "gguf-sized"
    title = "a sized GGUF plan (--target-size/--target-bpw/--target-vram chooses every tensor's type)"

    def consumes(self, job: Job) -> frozenset[str]:
        b = job.budget
        own = {"target_size", "target_bpw", "target_vram", "sensitivity_cache", "no_fallback", "vocab_pre",
               "allow_requantize", "candidates", "scale_search"}
        if job.scheme.name == "rtn":  # types are chosen for round-to-nearest (importance-weighted)
            own.add("scheme")
        if b is not None and b.vram is not None:
            own |= {"context", "kv_type"}
        return frozenset(own) | GGUF_OUTPUT | importance_options(job)

    def plan(self, job: Job) -> GGUFPlanned:
        from ..calib.world import current
        from ..plan.sensitivity import check_cache_path
        from ..plan.sized import sized_plan

        b = job.budget
        src = open_source(job.source, vocab_pre=job.vocab_pre, allow_requantize=job.allow_requantize)
        base = make_quant_plan(src, DEFAULT_TYPE, no_fallback=job.overrides.no_fallback)
        notes = requantize_notes(src)
        # outputs and the cache are checked before calibration and measuring; the default
        # name depends on the plan, so then only its directory can be checked up front
        writes = not job.dry_run and current().writer  # under torchrun rank 0 alone writes
        with current().agreed("checking the output"):  # before the ranks calibrate together
            check_cache_path(b.sensitivity_cache, writing=writes)
            if writes:
                if job.output is not None and job.split is None:  # a set's names depend on the plan
                    output_path(src, job.output, "", job.force, statistics_reads(job.calibration))
                else:
                    check_parent(job.output or default_output(src, "sized"))
        imx = self._statistics(job, src)
        if not current().writer:  # torchrun: the other ranks only shared the calibration pass
            return GGUFPlanned(src, base, "sized", notes, imx)
        label = "--imatrix" if job.calibration.imatrix is not None else "--calibration"
        if imx is not None:  # another model's statistics: refused before they weight any measurement
            check_importance(base, imx, label)
        if job.dry_run and job.calibration.save_imatrix is not None:
            notes += ("dry run: --save-imatrix not written",)
        header, alignment = header_layout(src, base)
        plan, figures = sized_plan(src, base, header_bytes=header, alignment=alignment, target_size=b.size,
                                   target_bpw=b.bpw, target_vram=b.vram, context=b.context, kv_type=b.kv_type,
                                   imatrix=imx, sensitivity_cache=b.sensitivity_cache, write_cache=writes,
                                   families=b.families)
        if imx is not None:
            plan, more = importance_plan(plan, imx, label)
            notes += tuple(more)
        return GGUFPlanned(src, plan, f"{figures.bits_per_weight:.2f}bpw", notes, imx, figures)

    @staticmethod
    def _statistics(job: Job, src) -> Optional[object]:
        imx = loaded_importance(job.calibration)
        if imx is not None or job.calibration.text is None:
            return imx
        save_to = None if job.dry_run else checked_save_path(src, job.calibration)
        return collected_importance(src, job.calibration, job.progress, save_to)

    def output_path(self, job: Job, planned: GGUFPlanned) -> Path:
        return output_path(planned.src, job.output, planned.label, job.force, statistics_reads(job.calibration),
                           job.split, planned.plan)

    def write(self, job: Job, planned: GGUFPlanned, prepared, out: Path) -> GGUFResult:
        return write_with_importance(job, planned, planned.plan, planned.imatrix, out, planned.notes)

    def dry_result(self, job: Job, planned: GGUFPlanned) -> GGUFResult:
        return GGUFResult(None, planned.plan, notes=list(planned.notes) + dry_notes(job, planned),
                          budget=planned.budget)

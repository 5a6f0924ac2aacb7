"""GGUF output with --scheme gptq: the preset's plan, decoder linears solved with GPTQ on
their block grids during one calibration pass, the encoded blocks staged on disk (in the
output's directory) until the writer reaches them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..job import Job
from ..results import GGUFResult
from ..schemes.gptq_driver import gptq_plan
from ..sink.encoded_chunks import pieces, staged
from ..source.model_source import open_source
from .base import CALIBRATION_RUN, GGUF_OUTPUT, Route
from .gguf import PRESET_OPTIONS, GGUFPlanned, preset_plan_of
from .gguf_output import output_path, write_gguf, written
from .gguf_split_out import dry_notes
from .statistics import statistics_reads

DRY_NOTE = "dry run: calibration not run; the plan's types do not depend on it"


class GPTQRoute(Route[GGUFPlanned, GGUFResult]):
    name = "gguf-gptq"
    scratch_label = "qconvert-gptq"
    title = "GGUF output with --scheme gptq (it collects its own statistics)"

    def describe(self, job: Job) -> str:
        return self.title.replace("gptq", job.scheme.name, 1)

    def needs_scratch(self, job: Job) -> bool:
        return True

    def consumes(self, job: Job) -> frozenset[str]:
        return PRESET_OPTIONS | GGUF_OUTPUT | {"damp", "calibration"} | CALIBRATION_RUN

    def plan(self, job: Job) -> GGUFPlanned:
        src = open_source(job.source, vocab_pre=job.vocab_pre)
        if src.is_gguf:
            raise InputError(f"{src.path}: GPTQ runs the Hugging Face model; give the model directory")
        type_name, plan = preset_plan_of(job, src)
        plan, _ = gptq_plan(plan, src)  # run_gptq finds the marked linears again
        notes = (DRY_NOTE,) if job.dry_run else ()
        return GGUFPlanned(src, plan, type_name, notes)

    def output_path(self, job: Job, planned: GGUFPlanned) -> Path:
        return output_path(planned.src, job.output, planned.label, job.force, statistics_reads(job.calibration),
                           job.split, planned.plan)

    def prepare(self, job: Job, planned: GGUFPlanned, scratch: Optional[Path]) -> tuple[dict[str, dict], Path]:
        """GPTQ over the calibration pass; blocks land in `scratch`. Returns its statistics
        and where the blocks are."""
        from ..schemes.gptq_driver import run_gptq

        c = job.calibration
        stats = run_gptq(planned.src, planned.plan, scratch, text_file=c.text_file, n_samples=c.samples,
                         seqlen=c.seqlen, device=c.device, damp=job.scheme.damp, progress=job.progress,
                         weighted_scales=job.scheme.name == "gptq-imatrix", scale_search=job.scale_search)
        return stats, scratch

    def write(self, job: Job, planned: GGUFPlanned, prepared: tuple[dict[str, dict], Path], out: Path) -> GGUFResult:
        from ..schemes.gptq_experts import staged_name  # torch: imported when GPTQ has run

        stats, scratch = prepared

        def encoder(tp, s):
            if tp.scheme == "gptq":  # staged blocks, copied a slice at a time (an expert's alone)
                name = f"{tp.name}.npy" if tp.slab is None else staged_name(tp.name, tp.slab)
                return staged(np.load(scratch / name, mmap_mode="r"))
            if tp.scheme == "importance":
                return pieces(tp, s, np.load(scratch / f"{tp.name}.imp.npy"), job.scale_search)
            return pieces(tp, s, None, job.scale_search)

        tok = write_gguf(planned.src, planned.plan, out, encoder, job.progress, job.split)
        return GGUFResult(out, planned.plan, tokenizer=tok, notes=list(planned.notes) + gptq_notes(stats),
                          stats=stats, **written(out, job.split))

    def dry_result(self, job: Job, planned: GGUFPlanned) -> GGUFResult:
        return GGUFResult(None, planned.plan, notes=list(planned.notes) + dry_notes(job, planned))


def gptq_notes(stats: dict[str, dict]) -> list[str]:
    ratios = [v["err"] / v["rtn_err"] for v in stats.values() if v.get("rtn_err")]
    if not ratios:
        return []
    return [f"GPTQ on {len(stats)} tensors: output error {np.mean(ratios):.3f}x that of round-to-nearest "
            f"on average (min {min(ratios):.3f}, max {max(ratios):.3f})"]


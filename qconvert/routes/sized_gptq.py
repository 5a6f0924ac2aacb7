"""A sized GGUF plan solved with GPTQ: --target-size/-bpw/-vram with --scheme gptq or
gptq-imatrix. The budget solver picks every tensor's type from importance-weighted
measurements (routes/sized.py; the statistics come from --imatrix, or from a calibration
pass over --calibration's text, the bundled text when not given), then GPTQ's own
true-sequential pass rounds the decoder linears to those types with error feedback
(routes/gptq.py). Tensors GPTQ does not solve (token_embd, output, types without a GPTQ
grid) are written as the sized route writes them, importance-weighted where statistics
exist. The two are independent gains -- which type each tensor gets, and how it is
rounded -- and on widths the K-quants do not fit they add up (README, Calibrated schemes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..job import Job
from ..results import GGUFResult
from ..schemes.gptq_driver import gptq_plan
from ..schemes.importance import importance_for
from ..sink.encoded_chunks import pieces, staged
from .base import CALIBRATION_RUN
from .gguf import GGUFPlanned
from .gguf_output import write_gguf, written
from .gptq import GPTQRoute, gptq_notes
from .sized import SizedRoute


class SizedGPTQRoute(SizedRoute):
    name = "gguf-sized-gptq"
    scratch_label = GPTQRoute.scratch_label
    title = "a sized GGUF plan solved with --scheme gptq"

    def describe(self, job: Job) -> str:
        return self.title.replace("gptq", job.scheme.name, 1)

    def needs_scratch(self, job: Job) -> bool:
        return True

    def consumes(self, job: Job) -> frozenset[str]:
        return super().consumes(job) | {"scheme", "damp", "calibration"} | CALIBRATION_RUN

    @staticmethod
    def _statistics(job: Job, src) -> Optional[object]:
        if src.is_gguf:
            raise InputError(f"{src.path}: GPTQ runs the Hugging Face model; give the model directory")
        if job.calibration.imatrix is None and job.calibration.text is None:  # GPTQ calibrates anyway
            job = replace(job, calibration=replace(job.calibration, text=True))
        return SizedRoute._statistics(job, src)

    def plan(self, job: Job) -> GGUFPlanned:
        planned = super().plan(job)
        plan, _ = gptq_plan(planned.plan, planned.src)
        return replace(planned, plan=plan)

    def prepare(self, job: Job, planned: GGUFPlanned, scratch: Optional[Path]):
        return GPTQRoute().prepare(job, planned, scratch)

    def write(self, job: Job, planned: GGUFPlanned, prepared, out: Path) -> GGUFResult:
        from ..schemes.gptq_experts import staged_name  # torch: imported when GPTQ has run

        stats, scratch = prepared

        def encoder(tp, s):
            if tp.scheme == "gptq":
                name = f"{tp.name}.npy" if tp.slab is None else staged_name(tp.name, tp.slab)
                return staged(np.load(scratch / name, mmap_mode="r"))
            return pieces(tp, s, importance_for(planned.imatrix, tp.name), job.scale_search)

        tok = write_gguf(planned.src, planned.plan, out, encoder, job.progress, job.split)
        return GGUFResult(out, planned.plan, tokenizer=tok, notes=list(planned.notes) + gptq_notes(stats),
                          stats=stats, budget=planned.budget, **written(out, job.split))

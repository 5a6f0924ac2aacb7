"""GGUF output from a llama-quantize preset or a plain type, rounded to nearest or, with
--imatrix / --calibration, importance-weighted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..job import Job
from ..kernels.warmup import warm
from ..plan.sized_figures import SizedFigures
from ..plan.tensor_plan import Plan
from ..plan.type_plan import make_quant_plan, resolve_type
from ..results import GGUFResult
from ..schemes.importance import importance_for, importance_plan
from ..sink.encoded_chunks import pieces
from ..source.model_source import Source, open_source
from .base import CALIBRATION_RUN, GGUF_OUTPUT, Route
from .gguf_output import output_path, write_gguf, written
from .gguf_split_out import dry_notes
from .statistics import (check_calibration_source, checked_save_path, collected_importance, loaded_importance,
                         statistics_reads)

# a preset plan's own options, shared with the GPTQ route
PRESET_OPTIONS = frozenset({"type", "bits", "tensor_types", "output_tensor_type", "token_embedding_type", "pure",
                            "no_fallback", "vocab_pre", "scheme", "scale_search"})


@dataclass(frozen=True)
class GGUFPlanned:
    src: Source
    plan: Plan
    label: str  # names the default output: the type, or NNbpw
    notes: tuple[str, ...] = ()
    imatrix: Optional[object] = None  # statistics already in hand (--imatrix)
    budget: Optional[SizedFigures] = None  # sized plans: their figures


def requantize_notes(src: Source) -> tuple[str, ...]:
    if not src.requantized:
        return ()
    return (f"{src.requantized} tensors were already quantized: they are decoded and quantized again, "
            "so both roundings' errors add up (expect lower quality than from the original weights)",)


def importance_options(job: Job) -> frozenset[str]:
    """--imatrix, or --calibration with the options of its pass."""
    if job.calibration.imatrix is not None:
        return frozenset({"imatrix"})
    if job.calibration.text is not None:
        return frozenset({"calibration", "save_imatrix"}) | CALIBRATION_RUN
    return frozenset()


def preset_plan_of(job: Job, src: Source) -> tuple[str, Plan]:
    """The preset's plan; with importance statistics coming (--imatrix, --calibration) the
    mixes llama.cpp varies with them, without them a refusal where llama.cpp needs them."""
    from ..errors import InputError
    from ..plan.iquant_presets import missing_importance

    type_name = resolve_type(job.type_name, job.bits)
    o = job.overrides
    has_imatrix = job.calibration.imatrix is not None or job.calibration.text is not None
    plan = make_quant_plan(src, type_name, tensor_types=o.tensor_types, output_tensor_type=o.output_tensor_type,
                           token_embedding_type=o.token_embedding_type, pure=o.pure, no_fallback=o.no_fallback,
                           has_imatrix=has_imatrix)
    if not has_imatrix:
        needs = missing_importance(plan)
        if needs is not None:
            # name the option the type came from: a --tensor-type override, else the preset
            option = needs.reason if needs.reason.startswith("--tensor-type ") else f"--type {type_name}"
            raise InputError(f"{option}: tensor {needs.name} ({needs.qtype.name}) needs importance statistics, as "
                             "in llama.cpp; add --calibration default (or your text) or --imatrix FILE")
    return type_name, plan


def write_with_importance(job: Job, planned: GGUFPlanned, plan: Plan, imx, out: Path, notes) -> GGUFResult:
    def encoder(tp, s):
        return pieces(tp, s, importance_for(imx, tp.name), job.scale_search)

    # first run: the plan's encoders compiled in parallel children (rank 0 alone writes, so no race)
    warm({tp.qtype.name for tp in plan.tensors}, with_importance=imx is not None)
    tok = write_gguf(planned.src, plan, out, encoder, job.progress, job.split)
    return GGUFResult(out, plan, tokenizer=tok, notes=list(notes), budget=planned.budget, **written(out, job.split))


class PresetRoute(Route[GGUFPlanned, GGUFResult]):
    name = "gguf"
    title = "GGUF output with a preset or plain type"

    def consumes(self, job: Job) -> frozenset[str]:
        return PRESET_OPTIONS | GGUF_OUTPUT | {"allow_requantize"} | importance_options(job)

    def plan(self, job: Job) -> GGUFPlanned:
        src = open_source(job.source, vocab_pre=job.vocab_pre, allow_requantize=job.allow_requantize)
        type_name, plan = preset_plan_of(job, src)
        notes = requantize_notes(src)
        imx = loaded_importance(job.calibration)
        if imx is not None:
            plan, more = importance_plan(plan, imx)
            notes += tuple(more)
        elif job.calibration.text is not None:
            check_calibration_source(src)
            if job.dry_run:
                notes += ("dry run: calibration not run; the plan's types do not depend on it",)
        return GGUFPlanned(src, plan, type_name, notes, imx)

    def output_path(self, job: Job, planned: GGUFPlanned) -> Path:
        return output_path(planned.src, job.output, planned.label, job.force, statistics_reads(job.calibration),
                           job.split, planned.plan)

    def prepare(self, job: Job, planned: GGUFPlanned, scratch: Optional[Path]):
        """The calibration pass, when asked: statistics and the plan they mark."""
        if job.calibration.text is None:
            return planned.plan, planned.imatrix, planned.notes
        imx = collected_importance(planned.src, job.calibration, job.progress,
                                   checked_save_path(planned.src, job.calibration))
        plan, notes = importance_plan(planned.plan, imx, "--calibration")
        return plan, imx, planned.notes + tuple(notes)

    def write(self, job: Job, planned: GGUFPlanned, prepared, out: Path) -> GGUFResult:
        plan, imx, notes = prepared
        return write_with_importance(job, planned, plan, imx, out, notes)

    def dry_result(self, job: Job, planned: GGUFPlanned) -> GGUFResult:
        return GGUFResult(None, planned.plan, notes=list(planned.notes) + dry_notes(job, planned),
                          budget=planned.budget)


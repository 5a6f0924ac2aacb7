"""Safetensors output: an int-N checkpoint transformers loads (compressed-tensors
pack-quantized), rounded to nearest on absmax / min-max grids, solved with GPTQ, or
rounded to nearest after AWQ scales searched on the same grids were folded into the
float model (schemes/awq_driver.py), or both: AWQ's fold, then GPTQ (routes/awq.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..job import Job
from ..results import SafetensorsResult
from ..source.hub import hub_name
from .base import CALIBRATION_RUN, Route
from .safetensors_gptq import int_gptq

BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class SafetensorsPlanned:
    ckpt: object  # source.checkpoint.Checkpoint
    plan: object  # sink.safetensors_out.SafetensorsPlan
    bits: int
    label: str
    notes: tuple[str, ...]


class SafetensorsRoute(Route[SafetensorsPlanned, SafetensorsResult]):
    name = "safetensors"
    scratch_label = "qconvert-gptq"  # only GPTQ stages results
    title = "safetensors output"

    def describe(self, job: Job) -> str:
        return f"safetensors output with --scheme {job.scheme.name}"

    def needs_scratch(self, job: Job) -> bool:
        return job.scheme.name != "rtn"

    def consumes(self, job: Job) -> frozenset[str]:
        own = {"bits", "group_size", "sym", "scheme", "no_fallback"}
        if job.scheme.name in ("gptq", "awq+gptq"):
            own |= {"damp", "act_order", "calibration"} | CALIBRATION_RUN
        if job.scheme.name == "awq":
            own |= {"calibration"} | CALIBRATION_RUN
        return frozenset(own)

    def plan(self, job: Job) -> SafetensorsPlanned:
        from ..arch import check_config
        from ..arch.moe import refuse_per_expert_safetensors
        from ..sink.safetensors_out import plan_safetensors
        from ..source.checkpoint import Checkpoint

        if job.scheme.name.endswith("gptq-imatrix"):
            raise InputError(f"--scheme {job.scheme.name}: int-N group grids have no importance-weighted scale "
                             "search; use --scheme gptq, awq or awq+gptq with --format safetensors")
        bits = 4 if job.bits is None else job.bits
        if bits not in BITS:
            raise InputError(f"--bits {bits}: safetensors output takes {', '.join(map(str, BITS[:-1]))} or 8 bits")
        if job.source.is_file():
            raise InputError(f"{job.source}: safetensors output is made from a Hugging Face model directory")
        ckpt = Checkpoint(job.source)
        check_config(ckpt)  # bounds and tensor shapes, before calibration builds a model from it
        refuse_per_expert_safetensors(ckpt)
        s = job.scheme
        splan = plan_safetensors(ckpt, bits=bits, group_size=s.group_size, sym=s.sym,
                                 no_fallback=job.overrides.no_fallback)
        check_some_quantized(job, splan)
        label = f"W{bits}A16-{'G' + str(s.group_size) if s.group_size > 0 else 'CH'}{'' if s.sym else '-ASYM'}"
        notes = [f"{sum(it.quantize for it in splan.items)} projections quantized ({label}, {s.name}); "
                 f"{len(splan.ignore)} names kept dense: {', '.join(splan.ignore[:6])}"]
        notes += fallback_notes(splan)
        return SafetensorsPlanned(ckpt, splan, bits, label, tuple(notes))

    def output_path(self, job: Job, planned: SafetensorsPlanned) -> Path:
        from ..sink.output_check import check_output_dir

        name = hub_name(job.source) or job.source.resolve().name  # a Hub cache snapshot: the model's name
        out = job.output if job.output is not None else Path.cwd() / f"{name}-{planned.label}"
        return check_output_dir(out, job.force, input_dir=job.source)

    def prepare(self, job: Job, planned: SafetensorsPlanned, scratch: Optional[Path]):
        """(the model written, quantized supplier, statistics): GPTQ's results staged in
        `scratch`; AWQ's folded checkpoint there too (routes/awq.py)."""
        if job.scheme.name.startswith("awq"):
            from .awq import safetensors_awq

            return safetensors_awq(job, planned, scratch)
        if job.scheme.name != "gptq":
            return planned.ckpt, None, {}
        return (planned.ckpt, *int_gptq(job, planned, job.source, scratch))

    def write(self, job: Job, planned: SafetensorsPlanned, prepared, out: Path) -> SafetensorsResult:
        from ..sink.safetensors_out import write_quantized_safetensors

        source, quantized, stats = prepared
        s = job.scheme
        write_quantized_safetensors(source, out, bits=planned.bits, group_size=s.group_size, sym=s.sym,
                                    scheme="absmax", quantized=quantized, force=job.force, progress=job.progress,
                                    actorder="weight" if s.act_order else None,
                                    no_fallback=job.overrides.no_fallback, scale_dtype=planned.plan.scale_dtype)
        return SafetensorsResult(out, planned.plan, planned.label,
                                 file_size=sum(f.stat().st_size for f in out.glob("*.safetensors")),
                                 notes=list(planned.notes) + gptq_int_notes(stats), stats=stats)

    def dry_result(self, job: Job, planned: SafetensorsPlanned) -> SafetensorsResult:
        return SafetensorsResult(None, planned.plan, planned.label, notes=list(planned.notes))


def fallback_notes(splan) -> list[str]:
    """One line per fallback group size, as the GGUF plan reports its type fallbacks."""
    by_group: dict[int, list] = {}
    for it in splan.fallbacks:
        by_group.setdefault(it.group_size, []).append(it)
    out = []
    for g, items in sorted(by_group.items(), reverse=True):
        widths = sorted({it.shape[1] for it in items})
        what = "one scale per output channel" if g == -1 else f"groups of {g}"
        out.append(f"{len(items)} projections with {', '.join(map(str, widths))} input columns (not a multiple of "
                   f"{splan.group_size}) use {what}; --no-fallback makes this an error")
    return out


def check_some_quantized(job: Job, splan) -> None:
    """A checkpoint with no decoder projection would be copied with nothing quantized:
    refused. (A group size that does not divide a width falls back, see fit_group_size.)"""
    if any(it.quantize for it in splan.items):
        return
    raise InputError(f"{job.source}: no decoder-layer projection (q/k/v/o, gate/up/down) to quantize")


def gptq_int_notes(stats: dict[str, dict]) -> list[str]:
    vals = [v["err"] / v["rtn_err"] for v in stats.values() if v["rtn_err"] > 0]
    if not stats:
        return []
    return [f"GPTQ on {len(stats)} tensors: output error {sum(vals) / max(1, len(vals)):.3f}x "
            "that of round-to-nearest on average"]

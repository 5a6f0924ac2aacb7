"""Safetensors output: an int-N checkpoint transformers loads (compressed-tensors
pack-quantized), rounded to nearest on absmax / min-max grids or solved with GPTQ."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..job import Job
from ..results import SafetensorsResult
from .base import CALIBRATION_RUN, Route

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
        return job.scheme.name == "gptq"

    def consumes(self, job: Job) -> frozenset[str]:
        own = {"bits", "group_size", "sym", "scheme"}
        if job.scheme.name == "gptq":
            own |= {"damp", "act_order", "calibration"} | CALIBRATION_RUN
        return frozenset(own)

    def plan(self, job: Job) -> SafetensorsPlanned:
        from ..arch import check_config
        from ..sink.safetensors_out import plan_safetensors
        from ..source.checkpoint import Checkpoint

        bits = 4 if job.bits is None else job.bits
        if bits not in BITS:
            raise InputError(f"--bits {bits}: safetensors output takes {', '.join(map(str, BITS[:-1]))} or 8 bits")
        if job.source.is_file():
            raise InputError(f"{job.source}: safetensors output is made from a Hugging Face model directory")
        ckpt = Checkpoint(job.source)
        check_config(ckpt)  # bounds and tensor shapes, before calibration builds a model from it
        s = job.scheme
        splan = plan_safetensors(ckpt, bits=bits, group_size=s.group_size, sym=s.sym)
        check_some_quantized(job, splan)
        label = f"W{bits}A16-{'G' + str(s.group_size) if s.group_size > 0 else 'CH'}{'' if s.sym else '-ASYM'}"
        note = (f"{sum(it.quantize for it in splan.items)} projections quantized ({label}, {s.name}); "
                f"{len(splan.ignore)} names kept dense: {', '.join(splan.ignore[:6])}")
        return SafetensorsPlanned(ckpt, splan, bits, label, (note,))

    def output_path(self, job: Job, planned: SafetensorsPlanned) -> Path:
        from ..sink.output_check import check_output_dir

        out = job.output if job.output is not None else Path.cwd() / f"{job.source.resolve().name}-{planned.label}"
        return check_output_dir(out, job.force, input_dir=job.source)

    def prepare(self, job: Job, planned: SafetensorsPlanned, scratch: Optional[Path]):
        """GPTQ, when asked: results staged in `scratch`; (quantized supplier, statistics)."""
        if job.scheme.name != "gptq":
            return None, {}
        from ..schemes.gptq_safetensors import run_gptq_int, staged_results

        s, c, splan = job.scheme, job.calibration, planned.plan
        targets = {it.hf_name for it in splan.items if it.quantize}
        stats = run_gptq_int(job.source, scratch, targets=targets, bits=planned.bits, group_size=s.group_size,
                             sym=s.sym, act_order=s.act_order, damp=s.damp, scale_dtype=splan.scale_dtype,
                             text_file=c.text_file, n_samples=c.samples, seqlen=c.seqlen, device=c.device,
                             progress=job.progress)
        return staged_results(scratch), stats

    def write(self, job: Job, planned: SafetensorsPlanned, prepared, out: Path) -> SafetensorsResult:
        from ..sink.safetensors_out import write_quantized_safetensors

        quantized, stats = prepared
        s = job.scheme
        write_quantized_safetensors(planned.ckpt, out, bits=planned.bits, group_size=s.group_size, sym=s.sym,
                                    scheme="absmax", quantized=quantized, force=job.force, progress=job.progress,
                                    actorder="weight" if s.act_order else None)
        return SafetensorsResult(out, planned.plan, planned.label,
                                 file_size=sum(f.stat().st_size for f in out.glob("*.safetensors")),
                                 notes=list(planned.notes) + gptq_int_notes(stats), stats=stats)

    def dry_result(self, job: Job, planned: SafetensorsPlanned) -> SafetensorsResult:
        return SafetensorsResult(None, planned.plan, planned.label, notes=list(planned.notes))


def check_some_quantized(job: Job, splan) -> None:
    """A group size that divides none of the projections' input widths would write a copy
    of the model with nothing quantized: refused, naming --group-size."""
    if any(it.quantize for it in splan.items):
        return
    widths = sorted({it.shape[1] for it in splan.items if it.reason.startswith("kept: ") and "group size" in it.reason})
    if widths:
        raise InputError(f"--group-size {job.scheme.group_size}: no projection's input width "
                         f"({', '.join(map(str, widths))}) is a multiple of it, so nothing would be quantized; "
                         "choose a divisor of them or -1 (one scale per output channel)")
    raise InputError(f"{job.source}: no decoder-layer projection (q/k/v/o, gate/up/down) to quantize")


def gptq_int_notes(stats: dict[str, dict]) -> list[str]:
    vals = [v["err"] / v["rtn_err"] for v in stats.values() if v["rtn_err"] > 0]
    if not stats:
        return []
    return [f"GPTQ on {len(stats)} tensors: output error {sum(vals) / max(1, len(vals)):.3f}x "
            "that of round-to-nearest on average"]

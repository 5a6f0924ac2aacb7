"""GPTQ on int-N group grids for `--format safetensors`, shared by the plain and the AWQ
safetensors routes (its own module so neither route imports the other)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..job import Job


def int_gptq(job: Job, planned, model_dir: Path, store: Optional[Path]):
    """GPTQ over `model_dir`'s calibration pass, results staged in `store` (None: a
    torchrun rank that stages nothing); (quantized supplier, statistics)."""
    from ..schemes.gptq_safetensors import run_gptq_int, staged_results

    s, c, splan = job.scheme, job.calibration, planned.plan
    targets = {it.hf_name for it in splan.items if it.quantize}
    stats = run_gptq_int(model_dir, store, targets=targets, bits=planned.bits, group_size=s.group_size,
                         sym=s.sym, act_order=s.act_order, damp=s.damp, scale_dtype=splan.scale_dtype,
                         text_file=c.text_file, n_samples=c.samples, seqlen=c.seqlen, device=c.device,
                         progress=job.progress,
                         group_sizes={it.hf_name: it.group_size for it in splan.items if it.quantize})
    return (None if store is None else staged_results(store)), stats

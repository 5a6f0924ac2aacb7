"""The route contract: what one kind of output does at each stage the runner calls.

    plan(job)                      read the source, make the plan (a value); cheap except
                                   where the plan itself needs measurements (sized)
    output_path(job, planned)      the output path (default name from the plan)
    prepare(job, planned, scratch) long work the writer needs: calibration, GPTQ staging
    write(job, planned, prepared, out) -> result
    dry_result(job, planned)       what --dry-run returns

A route also says which of the job's options it consumes, for this job (an option may be
used only together with another, as --calibration-samples with --calibration); any other
option the caller gave is refused before anything is read."""

from __future__ import annotations

from pathlib import Path
from typing import Generic, Optional, TypeVar

from ..errors import InputError
from ..job import Job

# used by every route: where the output goes, whether to overwrite, stop after planning,
# show progress, the choice of format itself, and whether NaN/Inf weights are refused
COMMON = frozenset({"output", "force", "dry_run", "progress", "format", "allow_nonfinite"})
CALIBRATION_RUN = frozenset({"calibration_samples", "calibration_seqlen", "device"})
# every GGUF route: the output as a split set
GGUF_OUTPUT = frozenset({"split_max_size", "split_max_tensors"})

# where an option does belong, for the refusal message
BELONGS = {
    "type": "GGUF presets", "bits": "--type's shorthand, and safetensors' bits",
    "tensor_types": "GGUF presets", "output_tensor_type": "GGUF presets", "token_embedding_type": "GGUF presets",
    "pure": "GGUF presets", "allow_requantize": "GGUF input to GGUF output",
    "imatrix": "GGUF output with --scheme rtn", "calibration": "--imatrix-style statistics or --scheme gptq",
    "calibration_samples": "--calibration or --scheme gptq", "calibration_seqlen": "--calibration or --scheme gptq",
    "device": "--calibration or --scheme gptq", "save_imatrix": "--calibration on GGUF output",
    "group_size": "--format safetensors", "sym": "--format safetensors", "act_order": "--format safetensors --scheme gptq",
    "damp": "--scheme gptq", "target_vram": "GGUF output", "target_size": "GGUF output", "target_bpw": "GGUF output",
    "context": "--target-vram", "kv_type": "--target-vram", "sensitivity_cache": "--target-size/-bpw/-vram",
    "no_fallback": "GGUF output and --format safetensors", "vocab_pre": "GGUF output from a model directory",
    "split_max_size": "GGUF output", "split_max_tensors": "GGUF output",
    "candidates": "--target-size/-bpw/-vram", "scale_search": "GGUF output",
}

P = TypeVar("P")  # what plan() returns
R = TypeVar("R")  # what write() returns


class Route(Generic[P, R]):
    name: str = ""
    title: str = ""  # for messages: "GGUF output with a preset"
    scratch_label: str = "qconvert-staging"  # names the scratch directory (.LABEL.PID.partial)

    def describe(self, job: Job) -> str:
        return self.title

    def consumes(self, job: Job) -> frozenset[str]:
        raise NotImplementedError

    def needs_scratch(self, job: Job) -> bool:
        """Whether prepare() stages data on disk (in a scratch directory beside the output)."""
        return False

    def plan(self, job: Job) -> P:
        raise NotImplementedError

    def output_path(self, job: Job, planned: P) -> Path:
        raise NotImplementedError

    def prepare(self, job: Job, planned: P, scratch: Optional[Path]) -> Optional[object]:
        return None

    def write(self, job: Job, planned: P, prepared: Optional[object], out: Path) -> R:
        raise NotImplementedError

    def dry_result(self, job: Job, planned: P) -> R:
        raise NotImplementedError


def check_consumed(job: Job, route: Route) -> None:
    """Refuse every option the caller gave that no stage of `route` uses."""
    unused = sorted(job.given - COMMON - route.consumes(job))
    if not unused:
        return
    where: dict[str, list[str]] = {}
    for o in unused:
        where.setdefault(BELONGS.get(o, ""), []).append(o)
    hints = "; ".join(f"{job.flags(opts)}: {hint}" for hint, opts in where.items() if hint)
    raise InputError(f"{job.flags(unused)}: not used by {route.describe(job)}; drop "
                     f"{'it' if len(unused) == 1 else 'them'}" + (f" (used with {hints})" if hints else ""))

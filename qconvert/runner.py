"""The stage runner: the same stages for every route.

    route_for(job)   refuse options the route would not use (nothing read yet)
    plan             read the source, make the plan (a value)
    --dry-run        stops here and returns the plan
    output_path      check the output before any long work (rank 0 under torchrun)
    prepare          calibration, GPTQ staging (scratch beside the output)
    write            one tensor at a time, atomically
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Optional

from .errors import InputError
from .job import Job, check_input_files
from .results import QuantizeResult
from .routes import route_for
from .source.hub import fetched


def run(job: Job) -> Optional[QuantizeResult]:
    """The stages for `job`. Under torchrun (calib/world.py) every rank plans and runs its
    share of the calibration; rank 0 alone checks and writes the output and gets the
    result, the other ranks get None."""
    from .calib import world as worlds
    from .sink.atomic_dir import staging_dir
    from .sink.output_check import check_apart

    t0 = time.perf_counter()
    route = route_for(job)
    check_input_files(job)
    job = fetched(job)  # a Hugging Face model id: its files in the local cache (source/hub.py)
    check_spread(job, worlds.from_env())
    out = None
    with ExitStack() as stack:  # the scratch directory lives until the writer is done
        with worlds.joined(job.calibration.device) as world:
            planned = route.plan(job)
            if not job.dry_run:
                with world.agreed("checking the output"):
                    if world.writer:
                        out = route.output_path(job, planned)
                        # the default output name is known only now; explicit paths were compared in build_job
                        check_apart({"--output": out, "--save-imatrix": job.calibration.save_imatrix})
                scratch = None
                if route.needs_scratch(job) and world.writer:  # beside the output: same filesystem, cleaned if killed
                    scratch = stack.enter_context(staging_dir(out.parent, route.scratch_label))
                prepared = route.prepare(job, planned, scratch)
        if not world.writer:
            return None
        result = route.dry_result(job, planned) if job.dry_run else route.write(job, planned, prepared, out)
    result.seconds = time.perf_counter() - t0
    return result


def check_spread(job: Job, world) -> None:
    """Under torchrun the processes share a calibration pass; a job without one has
    nothing to share."""
    if world.distributed and job.calibration.text is None and job.scheme.name == "rtn":
        raise InputError(f"started as {world.size} processes (torchrun), but this job runs no calibration "
                         "pass to share (--calibration, or a --scheme other than rtn); run it as one process")

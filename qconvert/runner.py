"""The stage runner: the same stages for every route.

    route_for(job)   refuse options the route would not use (nothing read yet)
    plan             read the source, make the plan (a value)
    --dry-run        stops here and returns the plan
    output_path      check the output before any long work
    prepare          calibration, GPTQ staging (scratch beside the output)
    write            one tensor at a time, atomically
"""

from __future__ import annotations

import time
from contextlib import ExitStack

from .job import Job, check_input_files
from .results import QuantizeResult
from .routes import route_for
from .source.hub import fetched


def run(job: Job) -> QuantizeResult:
    from .sink.atomic_dir import staging_dir
    from .sink.output_check import check_apart

    t0 = time.perf_counter()
    route = route_for(job)
    check_input_files(job)
    job = fetched(job)  # a Hugging Face model id: its files in the local cache (source/hub.py)
    planned = route.plan(job)
    if job.dry_run:
        result = route.dry_result(job, planned)
    else:
        out = route.output_path(job, planned)
        # the default output name is known only now; explicit paths were compared in build_job
        check_apart({"--output": out, "--save-imatrix": job.calibration.save_imatrix})
        with ExitStack() as stack:
            scratch = None
            if route.needs_scratch(job):  # beside the output: same filesystem, cleaned if killed
                scratch = stack.enter_context(staging_dir(out.parent, route.scratch_label))
            prepared = route.prepare(job, planned, scratch)
            result = route.write(job, planned, prepared, out)
    result.seconds = time.perf_counter() - t0
    return result

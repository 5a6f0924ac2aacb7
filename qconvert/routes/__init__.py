"""Routes: one per kind of output, registered by name. `route_for` picks the route a job
asks for; the runner (runner.py) drives every route through the same stages.

    gguf         a preset or plain type; round-to-nearest or importance-weighted
    gguf-sized   --target-size / --target-bpw / --target-vram
    gguf-sized-gptq  the same with --scheme gptq, gptq-imatrix
    gguf-gptq    --scheme gptq, gptq-imatrix
    gguf-awq     --scheme awq
    gguf-awq-gptq --scheme awq+gptq, awq+gptq-imatrix
    safetensors  --format safetensors (rtn, gptq, awq or awq+gptq)

A new output format is a new Route subclass registered here, not a branch in a driver.
Split GGUF output (--split-max-size / --split-max-tensors) is not a route of its own: every
GGUF route consumes those options and its writer groups the plan into files
(gguf_split_out.py)."""

from __future__ import annotations

from ..job import Job
from ..registry import Registry
from .awq import AWQGPTQRoute, AWQRoute
from .base import Route, check_consumed
from .gguf import PresetRoute
from .gptq import GPTQRoute
from .safetensors import SafetensorsRoute
from .sized import SizedRoute
from .sized_gptq import SizedGPTQRoute

ROUTES: Registry[Route] = Registry("route")
for _route in (PresetRoute(), SizedRoute(), SizedGPTQRoute(), GPTQRoute(), AWQRoute(), AWQGPTQRoute(),
               SafetensorsRoute()):
    ROUTES.add(_route.name, _route)


def route_name(job: Job) -> str:
    if job.format == "safetensors":
        return "safetensors"
    if job.budget is not None:
        return "gguf-sized-gptq" if job.scheme.name in ("gptq", "gptq-imatrix") else "gguf-sized"
    return {"gptq": "gguf-gptq", "gptq-imatrix": "gguf-gptq", "awq": "gguf-awq", "awq+gptq": "gguf-awq-gptq",
            "awq+gptq-imatrix": "gguf-awq-gptq"}.get(job.scheme.name, "gguf")


def route_for(job: Job) -> Route:
    """The job's route, after refusing every option it would not use."""
    route = ROUTES.get(route_name(job))
    check_consumed(job, route)
    return route


__all__ = ["ROUTES", "Route", "route_for", "route_name"]

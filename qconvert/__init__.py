"""qconvert: Hugging Face checkpoints -> quantized GGUF / safetensors.

Python API (the CLI calls these):
    qconvert.quantize(model_dir, output=None, type="Q8_0" | bits=8, ...)
    qconvert.inspect(path)
    qconvert.estimate_memory(params, context=..., vram=...)
"""

from __future__ import annotations

__version__ = "0.1.0"


def quantize(*args, **kwargs):
    from .pipeline import quantize as _q

    return _q(*args, **kwargs)


quantize.__doc__ = "See qconvert.pipeline.quantize."


def inspect(*args, **kwargs):
    from .inspection import inspect as _i

    return _i(*args, **kwargs)


def estimate_memory(*args, **kwargs):
    from .plan.memory import estimate_memory as _e

    return _e(*args, **kwargs)


__all__ = ["quantize", "inspect", "estimate_memory", "__version__"]

"""A causal LM whose weights stay in the checkpoint until the driver needs a part of it.

The calibration pass touches the model one piece at a time -- the embeddings to compute
layer 0's inputs, then each decoder layer in turn -- so the whole model never needs to be
in memory. The module tree is built by transformers from the config (so the forward code
is transformers' own) with every *parameter* on the `meta` device: shape and dtype, no
storage. Buffers are left real: the ones that matter (rotary `inv_freq` per layer type in
Gemma 3, Gemma's embedding scale) are not in the checkpoint but computed by the modules'
constructors, and they are small.

    checkpoint shards (mmap)            model skeleton
    ------------------------            -----------------------------------------
    model.embed_tokens.weight  --read-> embed_tokens  (real during capture only)
    model.layers.0.*           --read-> layers[0]     (real while layer 0 runs)
    model.layers.1.*                    layers[1]     meta
    ...                                 ...
    model.norm.weight, lm_head          meta (the pass stops after the last layer)

`materialise(module)` reads a module's parameters in the skeleton's dtype (the stored one,
as `dtype="auto"` would pick), `release(module)` puts them back on meta so their memory is
freed. Parameters that share one object (tied embeddings) are set and released together,
so a tied lm_head cannot keep a released embedding alive.

Checkpoint names are found from the decoder stack's own names: the stack (the module with
`embed_tokens` and `layers`) may sit under another prefix in the file than in the module
tree (Gemma 3 multimodal: `language_model.model.` in 4.x files, `model.language_model.`
in transformers 5), so the prefix is looked up once by where layer 0's first weight is.
A model whose stack cannot be matched tensor for tensor (names, shapes) is not loaded
lazily: the caller falls back to transformers' full load.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedError
from ..source.checkpoint import Checkpoint, packed_suffixes
from .experts import checkpoint_names, expert_sources

TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_ATTR = "_qconvert_lazy_weights"


@contextmanager
def params_on_meta() -> Iterator[None]:
    """While active, every parameter a module registers is replaced by a meta tensor of
    the same shape and dtype; buffers are untouched. Parameters are created by the module
    constructors (torch.empty: address space, no pages touched) and replaced before their
    initialisers run, so those initialisers run on meta and cost nothing."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc only). Layer-sized tensors are a few
    MB: glibc serves the first from mmap, but freeing it raises its mmap threshold, so the
    next ones come from the heap, and the holes that each layer's tensors leave there are
    kept by the process: without this the resident set grew by most of a layer per layer
    (16 layers of 21 MB: +420 MB), as if the model were loaded after all."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _dtype_of(config, ckpt: Checkpoint) -> torch.dtype:
    """What transformers' dtype="auto" picks: the config's dtype, else the first floating
    tensor's stored dtype."""
    for obj in (config, getattr(config, "text_config", None)):
        for attr in ("dtype", "torch_dtype"):
            d = getattr(obj, attr, None) if obj is not None else None
            if isinstance(d, str) and d != "auto":
                d = getattr(torch, d, None)
            if isinstance(d, torch.dtype):
                return d
    for h in ckpt.handles.values():
        if h.dtype in TORCH_DTYPES:
            return TORCH_DTYPES[h.dtype]
    return torch.float32


class LazyWeights:
    """Reads parts of `model` (a skeleton with meta parameters) from `ckpt`.

    `stack` is the module path of the decoder stack in the model ("model",
    "model.language_model") and `stored` its prefix in the checkpoint (with trailing dot).
    """

    def __init__(self, model: nn.Module, ckpt: Checkpoint, stack: str, stored: str) -> None:
        self.model = model
        self.ckpt = ckpt
        self.stack = stack
        self.stored = stored
        self.files = {name: f for f in ckpt.files for name in f.names()}
        groups: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
        self.tied = {n: g for g in groups.values() if len(g) > 1 for n in g}

    # ------------------------------------------------------------------ names

    def key(self, name: str) -> Optional[str]:
        """Checkpoint name of model tensor `name` (or of a parameter tied to it)."""
        for n in self.tied.get(name, [name]):
            for k in checkpoint_names(self._direct(n)):  # Mixtral's block_sparse_moe too
                if k in self.files or k in self.ckpt.decoded:
                    return k
        return None

    def mxfp4(self, name: str) -> Optional[tuple[str, str]]:
        """(blocks, scales) checkpoint names when `name` is stored as MXFP4 (gpt-oss experts)."""
        direct = self._direct(name)
        if direct + "_blocks" in self.files and direct + "_scales" in self.files:
            return direct + "_blocks", direct + "_scales"
        return None

    def experts(self, name: str, shape: tuple[int, ...]) -> Optional[list[list[str]]]:
        """A fused expert parameter's per-expert checkpoint tensors (calib/experts.py)."""
        return expert_sources(self._direct(name), tuple(shape), lambda k: k in self.files)

    def _direct(self, name: str) -> str:
        if not self.stack:
            return self.stored + name
        if name.startswith(self.stack + "."):
            return self.stored + name[len(self.stack) + 1:]
        return name

    def check(self, module: nn.Module, prefix: str) -> list[str]:
        """Problems that would stop `module`'s parameters from being read (header only)."""
        problems = []
        for name, p in module.named_parameters(prefix=prefix, remove_duplicate=False):
            k = self.key(name)
            if k is None and (self.experts(name, p.shape) is not None or self.mxfp4(name) is not None):
                continue  # stacked from per-expert tensors / decoded MXFP4; shapes checked on reading
            if k is None:
                problems.append(f"{name}: not in the checkpoint")
            elif tuple(self.ckpt.handles[k].shape) != tuple(p.shape):
                problems.append(f"{name}: shape {tuple(p.shape)} in the model, "
                                f"{tuple(self.ckpt.handles[k].shape)} in the checkpoint")
        return problems

    # ------------------------------------------------------------------ tensors

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Model tensor `name` from the checkpoint, in `dtype` (a fresh CPU tensor)."""
        k = self.key(name)
        if k is None and self.mxfp4(name) is not None:
            return self._read_mxfp4(name, dtype)
        if k is None:
            shape = tuple(self.model.get_parameter(name).shape)
            parts = self.experts(name, shape)
            if parts is None:
                raise UnsupportedError(f"{self.ckpt.dir}: {name!r} is not in the checkpoint")
            out = torch.stack([torch.cat([self._read_key(k, dtype) for k in row]) for row in parts])
            if tuple(out.shape) != shape:
                raise UnsupportedError(f"{self.ckpt.dir}: experts {parts[0][0]!r}... make {tuple(out.shape)}, "
                                       f"the model's {name} is {shape}")
            return out
        return self._read_key(k, dtype)

    def _read_mxfp4(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """gpt-oss's MXFP4 experts decoded (arch/gpt_oss.py) to the (n_expert, in, out)
        parameter transformers holds: its dequantized model, without its MXFP4 loader."""
        from ..arch.gpt_oss import dequantize_hf_mxfp4

        kb, ks = self.mxfp4(name)
        w = dequantize_hf_mxfp4(self.files[kb].raw(kb), self.files[ks].raw(ks))  # (n_expert, out, in)
        self.files[kb].release(kb)
        self.files[ks].release(ks)
        shape = tuple(self.model.get_parameter(name).shape)
        if (w.shape[0], w.shape[2], w.shape[1]) != shape:
            raise UnsupportedError(f"{self.ckpt.dir}: {kb!r} decodes to {w.shape}, the model's {name} is {shape}")
        return torch.from_numpy(np.ascontiguousarray(w.transpose(0, 2, 1))).to(dtype)

    def _read_key(self, k: str, dtype: torch.dtype) -> torch.Tensor:
        if k in self.ckpt.decoded:  # stored quantized (FP8, GPTQ...): the float weight it stands for
            return torch.from_numpy(self.ckpt.handles[k].load()).to(dtype)
        f = self.files[k]
        stored = f.header[k]["dtype"]
        if stored not in TORCH_DTYPES:
            raise UnsupportedError(f"{f.path}: tensor {k!r} has dtype {stored}; cannot load it for calibration")
        raw = f.raw(k)  # the stored bytes, read-only view of the mmap (bf16 as uint16 bits)
        t = torch.from_numpy(raw.copy())
        f.release(k)  # the copy is ours: drop the mapped pages from the resident set
        if stored == "BF16":
            t = t.view(torch.bfloat16)
        return t.to(dtype)

    def _set(self, name: str, value: nn.Parameter) -> None:
        for n in self.tied.get(name, [name]):
            owner, _, attr = n.rpartition(".")
            self.model.get_submodule(owner)._parameters[attr] = value

    def materialise(self, module: nn.Module, prefix: str) -> None:
        """Read every meta parameter of `module` (module path `prefix`), and persistent
        buffers the checkpoint holds."""
        for name, p in list(module.named_parameters(prefix=prefix, remove_duplicate=False)):
            if p.device.type == "meta":
                self._set(name, nn.Parameter(self.read(name, p.dtype), requires_grad=False))
        persistent = set(module.state_dict(prefix=f"{prefix}." if prefix else "", keep_vars=True))
        for name, b in list(module.named_buffers(prefix=prefix)):
            if name in persistent and self.key(name) is not None:
                owner, _, attr = name.rpartition(".")
                self.model.get_submodule(owner)._buffers[attr] = self.read(name, b.dtype)

    def release(self, module: nn.Module, prefix: str) -> None:
        """Put `module`'s parameters back on meta (their storage is freed once nothing
        else holds it)."""
        real = [(name, p.shape, p.dtype) for name, p in module.named_parameters(prefix=prefix, remove_duplicate=False)
                if p.device.type != "meta"]
        for name, shape, dtype in real:  # no reference to the old tensors survives this loop
            self._set(name, nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"), requires_grad=False))
        if real:
            _trim_heap()

    @contextmanager
    def loaded(self, module: nn.Module, prefix: str, keep: bool = False) -> Iterator[nn.Module]:
        """`module` materialised for the duration (and afterwards too with `keep`)."""
        self.materialise(module, prefix)
        try:
            yield module
        finally:
            if not keep:
                self.release(module, prefix)

    def materialise_rest(self) -> None:
        """Read every parameter still on meta that the checkpoint has (the final norm, an
        lm_head stored under its own name or tied to the embeddings)."""
        for name, p in list(self.model.named_parameters(remove_duplicate=False)):
            if p.device.type == "meta" and self.key(name) is not None:
                self._set(name, nn.Parameter(self.read(name, p.dtype), requires_grad=False))


def lazy_weights(model: nn.Module) -> Optional[LazyWeights]:
    """The reader attached by `load_lazy`, or None for a model loaded in full."""
    return getattr(model, _ATTR, None)


def load_lazy(model_dir: Path | str, stack_of) -> tuple[Optional[nn.Module], str]:
    """(skeleton with a LazyWeights attached, "") or (None, why not). `stack_of(model)`
    gives (decoder stack module, its module path)."""
    import transformers

    ckpt = Checkpoint(model_dir)
    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    if (ckpt.decoded or packed_suffixes(ckpt.config)) and hasattr(config, "quantization_config"):
        # weights stored quantized are read decoded (source/quantized_input.py): the model
        # is built as the float model they stand for, not with the quantized layers
        # (which would need their kernels: optimum for GPTQ, a GPU for FP8)
        del config.quantization_config
    dtype = _dtype_of(config, ckpt)
    major = int(transformers.__version__.split(".")[0])
    kwargs = {"dtype" if major >= 5 else "torch_dtype": dtype}
    with params_on_meta():
        model = transformers.AutoModelForCausalLM.from_config(config, **kwargs)
    model.eval()
    stack, path = stack_of(model)
    first = next((n for n, _ in stack.layers[0].named_parameters()), None)
    if first is None:
        return None, "layer 0 has no parameters"
    tail = f"layers.0.{first}"
    candidates = [k[: -len(tail)] for k in ckpt.handles if k == tail or k.endswith("." + tail)]
    problems: list[str] = [f"no checkpoint tensor ends with {tail!r}"]
    for stored in candidates:
        weights = LazyWeights(model, ckpt, path, stored)
        problems = weights.check(stack, path or "")
        if not problems:
            setattr(model, _ATTR, weights)  # a plain attribute: not a submodule, not in state_dict
            return model, ""
    return None, "; ".join(problems[:3])

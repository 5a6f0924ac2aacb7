"""A layer-at-a-time forward pass over a transformers decoder-only causal LM.

Calibrated schemes need each linear layer's inputs on calibration text, and GPTQ needs
them computed *after* the layers before it were quantized ("true-sequential"). Running
the whole model at once would need the whole model on the compute device; this driver
holds one decoder layer there at a time, plus the activations of all samples:

    n_samples x seqlen x hidden x 4 bytes  (float32)  +  one layer in float32
    (+ per batch size the layer arguments: rotary tables, and masks where the attention
    implementation materialises them)

    ids --embeddings--> h_0 --layer 0--> h_1 --layer 1--> ... --layer L-1--> h_L
          (recorded)         |  hooks on every nn.Linear: on_linear(i, name, x)
                             |  transform(i, layer)  (e.g. quantize in place)
                             |  re-run with the transformed layer -> h_{i+1}

How the inputs of each layer are found without knowing the model's code: every decoder
layer's `forward` is temporarily replaced by a recorder that keeps its hidden states and
keyword arguments and passes the hidden states through untouched, and the last one
raises `_Stop`. One run of the model's own forward then yields exactly what it would
hand each layer -- the attention mask, rotary cos/sin, position ids, cache arguments --
per layer, which matters for Gemma 3 and Qwen 2 where sliding and full-attention layers
get different masks and rotary tables. (This generalises the usual "Catcher" that stops
at layer 0 and assumes every layer gets the same arguments.)

The windows are unpadded and all of one length, so those arguments depend only on the
batch size; they are recorded once per batch size.

By default the model is a skeleton whose weights stay in the checkpoint (lazy_model.py):
the embeddings are read for the capture above and dropped, each layer is read just
before its turn and dropped after it (after its transform and re-run), so memory holds
one layer, not the model. A layer (read, or of a fully loaded model: on CPU in the
checkpoint's dtype) is copied to the compute device in float32 for its turn. Without a
transform the original tensors are put back untouched; with one, the transformed values
are written back in the stored dtype, so its changes stay in the model for as long as
the layer is kept (`keep_weights`, or a fully loaded model).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..errors import InputError, UnsupportedError
from ..progress import reporter
from .experts import expert_hooks
from .lazy_model import lazy_weights, load_lazy

log = logging.getLogger(__name__)

OnLinear = Callable[[int, str, torch.Tensor], None]
Transform = Callable[[int, nn.Module], None]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch names it. Under
    torchrun, 'cuda' is this process's GPU, cuda:LOCAL_RANK (calib/world.py)."""
    from .world import current, rank_device

    device = rank_device(str(device), current())
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but torch sees no CUDA device; use --device cpu")
    return dev


def load_causal_lm(model_dir: Path | str, *, lazy: bool = True) -> nn.Module:
    """The model for `run_layerwise`.

    lazy (default): transformers' module tree with every parameter left in the
    checkpoint (on the meta device); `run_layerwise` reads the embeddings, then each
    decoder layer just before it runs, and drops it afterwards, so memory holds one layer
    (see lazy_model.py). A checkpoint whose decoder stack does not match the module tree
    name for name falls back to the full load.

    lazy=False: the whole model on CPU in its stored dtype (bf16 stays bf16: half the
    memory of float32; layers are upcast one at a time on the compute device)."""
    import transformers

    if lazy:
        def stack_of(m: nn.Module) -> tuple[nn.Module, str]:
            dec = find_decoder(m)
            return dec.base, dec.base_path

        try:
            model, why = load_lazy(model_dir, stack_of)
        except (OSError, ValueError, KeyError) as e:
            raise UnsupportedError(f"{model_dir}: transformers cannot build this model for calibration ({e})") from None
        if model is not None:
            return model
        log.info("%s: loading the whole model for calibration (%s)", model_dir, why)

    major = int(transformers.__version__.split(".")[0])
    # transformers 5 renamed torch_dtype to dtype and always loads with low memory
    kwargs = {"dtype": "auto"} if major >= 5 else {"torch_dtype": "auto", "low_cpu_mem_usage": True}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise UnsupportedError(f"{model_dir}: transformers cannot load this model for calibration ({e})") from None
    check_loaded(model, model_dir)
    return model.eval()


def check_loaded(model: nn.Module, model_dir: Path | str) -> None:
    """NaN/Inf in a fully loaded model's weights, refused as the safetensors reader refuses
    them (source/finite.py's policy): transformers read these, not our reader, and a
    calibration pass over them would compute NaN statistics and GPTQ solutions."""
    from ..source.finite import NonFiniteError, allowed

    if allowed():
        return
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise NonFiniteError(f"{model_dir}: tensor {name!r}", int(torch.isnan(p).sum()), int(torch.isinf(p).sum()))


@dataclass
class Decoder:
    """The parts of a causal LM the driver walks: the base model whose forward embeds
    tokens and calls the layers, and the layers with their module path."""

    base: nn.Module
    layers: nn.ModuleList
    prefix: str  # module path of `layers`, e.g. "model.layers"

    @property
    def base_path(self) -> str:
        """Module path of `base` ("model"; "" when the model is the stack itself)."""
        return self.prefix[: -len("layers")].rstrip(".")


def find_decoder(model: nn.Module) -> Decoder:
    """The first submodule with `embed_tokens` and a `layers` list: model.model for
    *ForCausalLM, model.model.language_model for Gemma3ForConditionalGeneration."""
    for name, mod in model.named_modules():
        layers = getattr(mod, "layers", None)
        if isinstance(layers, nn.ModuleList) and hasattr(mod, "embed_tokens") and len(layers) > 0:
            return Decoder(mod, layers, f"{name}.layers" if name else "layers")
    raise UnsupportedError(f"{type(model).__name__}: no decoder stack (a module with embed_tokens and layers) found")


class _Stop(Exception):
    """Raised by the last layer's recorder: nothing after the layers is needed."""


@dataclass
class LayerInputs:
    """What the model hands its layers: hidden states per batch, and per batch size the
    other arguments of every layer (positional args after hidden_states, keyword args)."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: dict[int, list[tuple[tuple, dict]]] = field(default_factory=dict)


def _as_hidden(out):
    # transformers 4.x layers return (hidden_states, ...); 5.x return the tensor
    return out[0] if isinstance(out, (tuple, list)) else out


@contextmanager
def on_device(module: nn.Module, device: torch.device, write_back: bool = False) -> Iterator[nn.Module]:
    """Give `module`'s tensors a copy on `device` (floating ones in float32) for the
    duration. Afterwards each tensor gets its original storage back untouched, or, with
    `write_back`, the (possibly changed) values converted to its original device and
    dtype. Restoring the original object matters for memory: transformers may leave
    weights mapped from the safetensors file, and a fresh copy of every layer would make
    the whole model resident. Float32 buffers such as rotary inv_freq never pass through
    a lower precision either way. A transform must change tensors in place (`copy_`,
    `.data =`), not swap in new Parameter objects."""
    saved = []
    for tensor in [*module.parameters(), *module.buffers()]:
        saved.append((tensor, tensor.data))
        dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
        tensor.data = tensor.data.to(device=device, dtype=dtype)
    try:
        yield module
    finally:
        for tensor, orig in saved:
            tensor.data = tensor.data.to(device=orig.device, dtype=orig.dtype) if write_back else orig


def capture_layer_inputs(dec: Decoder, samples: torch.Tensor, device: torch.device,
                         batch_size: int) -> LayerInputs:
    """Run the model's own forward up to the last layer with every layer replaced by a
    recorder (see the module docstring)."""
    got = LayerInputs()
    n = len(dec.layers)
    current: dict = {}

    def recorder(i: int):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            hidden = _as_hidden(hidden)  # 4.x: the previous recorder returned a tuple
            if i == 0:
                got.hidden.append(hidden.detach())
            current[i] = (tuple(args[1:]), dict(kwargs))
            if i == n - 1:
                raise _Stop
            return (hidden,)

        return forward

    others = [m for name, m in dec.base.named_children() if m is not dec.layers]
    # an instance attribute shadows the class's forward; one already there (accelerate's
    # hooks put theirs there) is put back afterwards
    shadowed = [layer.__dict__.get("forward") for layer in dec.layers]
    for i, layer in enumerate(dec.layers):
        layer.forward = recorder(i)
    try:
        with torch.no_grad(), _all_on_device(others, device):
            for ids in torch.split(samples, batch_size):
                current.clear()
                try:
                    dec.base(input_ids=ids.to(device), use_cache=False)
                except _Stop:
                    pass
                if len(current) != n:
                    raise UnsupportedError(f"{type(dec.base).__name__}: its forward called {len(current)} of "
                                           f"{n} decoder layers; layer-wise calibration cannot follow it")
                got.args.setdefault(len(ids), [current[i] for i in range(n)])
    finally:
        for layer, old in zip(dec.layers, shadowed):
            if old is None:
                del layer.forward
            else:
                layer.forward = old
    return got


@contextmanager
def _all_on_device(modules: list[nn.Module], device: torch.device):
    if not modules:
        yield
        return
    with on_device(modules[0], device), _all_on_device(modules[1:], device):
        yield


def run_layerwise(model: nn.Module, samples: torch.Tensor, *, on_linear: Optional[OnLinear] = None,
                  transform: Optional[Transform] = None, device: str | torch.device = "auto",
                  batch_size: int = 8, show_progress: Optional[bool] = None,
                  keep_weights: bool = False) -> list[torch.Tensor]:
    """Walk the decoder layers one at a time over `samples` (n, seqlen) int64.

    For layer i: `on_linear(i, name, x)` is called for every nn.Linear in it and every
    batch, with `name` the module path in the model ("model.layers.3.mlp.down_proj") and
    `x` its input (batch, seqlen, in_features), float32 on the compute device (copy it to
    keep it); then `transform(i, layer)` may change the layer (on the device, float32);
    the layer is re-run so layer i+1 sees the transformed layer's outputs. Returns the
    last layer's outputs per batch (before the final norm), on the compute device.

    A lazily loaded model (`load_causal_lm`'s default) has each part read from the
    checkpoint just before its turn and dropped after it, so a transform must save what
    it wants to keep itself. With `keep_weights` nothing is dropped (the transformed
    layers stay, in the stored dtype) and the rest of the checkpoint's tensors are read
    at the end: the model is whole afterwards. A fully loaded model keeps its weights
    either way.
    """
    dev = resolve_device(device)
    dec = find_decoder(model)
    if samples.ndim != 2:
        raise InputError(f"calibration samples should be (n, seqlen) token ids, got shape {tuple(samples.shape)}")
    weights = lazy_weights(model)

    def loaded(module: nn.Module, path: str):
        return weights.loaded(module, path, keep=keep_weights) if weights is not None else nullcontext(module)

    # the embeddings (and whatever else the stack holds beside its layers) for layer 0's inputs
    base = dec.base_path
    others = [(f"{base}.{name}" if base else name, m) for name, m in dec.base.named_children() if m is not dec.layers]
    with ExitStack() as stack:
        for path, m in others:
            stack.enter_context(loaded(m, path))
        state = capture_layer_inputs(dec, samples, dev, batch_size)
    hidden = [h.to(dev, torch.float32) for h in state.hidden]
    state.hidden.clear()  # `hidden` is overwritten layer by layer; keep no second copy
    n_layers, n_batches = len(dec.layers), len(hidden)
    passes = 2 if transform is not None else 1
    # a transformed layer about to be dropped needs no copy in the stored dtype
    write_back = transform is not None and (weights is None or keep_weights)
    with torch.no_grad(), reporter(show_progress) as rep, _threads_pinned():
        rep.start("calibrating", total=n_layers * n_batches * passes)
        for i, layer in enumerate(dec.layers):
            item = f"layer {i + 1}/{n_layers}"

            def tick(item=item):
                rep.advance(1, item)

            with loaded(layer, f"{dec.prefix}.{i}"), on_device(layer, dev, write_back=write_back):
                with _linear_hooks(layer, i, f"{dec.prefix}.{i}", on_linear):
                    # without a transform this pass's outputs are the next layer's inputs
                    _forward_all(layer, i, hidden, state, replace=transform is None, advance=tick)
                if transform is not None:
                    transform(i, layer)
                    _forward_all(layer, i, hidden, state, replace=True, advance=tick)
    if weights is not None and keep_weights:
        weights.materialise_rest()
    return hidden


@contextmanager
def _threads_pinned():
    """Keep torch's thread count for the whole pass. Given only by OMP_NUM_THREADS, it is
    not pinned: torch's matrix products follow OpenMP's count, which numba's OpenMP layer
    sets to numba's own (all the cores) at its first parallel kernel -- a GPTQ solve's --
    so layer 0 would be re-run on another thread count than it was first run on, and the
    float32 sums change (a 1-thread run of the Qwen3-MoE fixture differed from 2 torchrun
    ranks on 1 thread each by 118 bytes). Numba's kernels get the same count meanwhile."""
    from .world import _numba_threads

    n = torch.get_num_threads()
    before = _numba_threads(n)  # first: starting numba's pool may reset OpenMP's count
    torch.set_num_threads(n)
    try:
        yield
    finally:
        _numba_threads(before)


def _forward_all(layer: nn.Module, i: int, hidden: list[torch.Tensor], state: LayerInputs, *,
                 replace: bool, advance: Callable[[], None]) -> None:
    """Run every batch through layer i; with `replace`, each batch's output overwrites its
    input (batches are independent), so activations are held once, not twice."""
    for b, h in enumerate(hidden):
        args, kwargs = state.args[len(h)][i]
        out = _as_hidden(layer(h, *args, **kwargs))
        if replace:
            hidden[b] = out
        advance()


@contextmanager
def _linear_hooks(layer: nn.Module, index: int, prefix: str, on_linear: Optional[OnLinear]):
    handles = []
    if on_linear is not None:
        for name, mod in layer.named_modules():
            if isinstance(mod, nn.Linear):
                full = f"{prefix}.{name}"
                handles.append(mod.register_forward_hook(
                    lambda _m, inp, _out, full=full: on_linear(index, full, inp[0].detach())))
        # routed experts (3-D parameters, not nn.Linear): each expert's own tokens (calib/experts.py)
        handles += expert_hooks(layer, index, prefix, on_linear)
    try:
        yield
    finally:
        for h in handles:
            h.remove()

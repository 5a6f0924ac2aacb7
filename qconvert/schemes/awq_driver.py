"""The thin driver that runs AWQ (awq.py) over a whole model and writes the folded float
checkpoint the normal writers then quantize.

One layer-wise calibration pass (calib/layerwise.py). For each decoder layer the inputs of
the first linear of every group below are summed (mean |x|, mean x², XᵀX); then, in
GROUPS' order, each group's scales are searched on the grids the tensors will be written
with and folded:

    v_proj rows          -> o_proj columns      (only where v's rows are o's columns: no GQA)
    up_proj rows         -> down_proj columns   (act(gate) * up is linear in up)
    input_layernorm      -> q, k, v columns
    post_attention_norm  -> gate, up columns

(linear->linear groups first, so the norm groups search v and up as they will be written.)
Scales come from the float model's activations; folding leaves every layer's output as it
was, so the next layers see the same inputs (AWQ's own order). That is checked, not
assumed: after folding, the layer is re-run on the first batch and must give the output it
gave before. A family whose norm is not a plain weight (Gemma's x̂ · (1 + w)) or whose
"post-attention" norm does not feed the MLP fails that check and is refused in one line.

The folded checkpoint is `<store>/<model name>/`: one float32 file per decoder layer, the
other tensors copied as stored, the config and tokenizer linked. Every fold is computed in
float32 on the float32 copy of the layer and stored so; a writer narrows a dense tensor
(a folded norm) to the output's dtype once.

Under torchrun (calib/world.py) each rank runs its share of the windows and the sums above
are all-reduced per layer, as importance statistics and Hessians are; the scale search runs
on rank 0 alone and its scales are broadcast, so every rank folds the same numbers into the
same weights and runs the next layer on the same model. Each rank checks its own folds on
its own first batch. Ranks given no `store` keep no checkpoint."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UnsupportedError
from .awq import Quantizer, clip_weights, fold_into_linear, fold_into_norm, search_scales


@dataclass(frozen=True)
class Group:
    prev: str  # module path in the decoder layer of what makes the input
    consumers: tuple[str, ...]  # the linears reading it; the first one's input is recorded
    norm: bool  # prev is a norm (its weight is divided) or a linear (its rows are)


GROUPS = (
    Group("self_attn.v_proj", ("self_attn.o_proj",), norm=False),
    Group("mlp.up_proj", ("mlp.down_proj",), norm=False),
    Group("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), norm=True),
    Group("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), norm=True),
)
FIRSTS = {g.consumers[0]: g for g in GROUPS}
TOLERANCE = 1e-3  # relative max difference of a folded layer's output; float32 folds give ~1e-6


@dataclass
class Folded:
    model_dir: Optional[Path]  # the folded float checkpoint (None: run without a store)
    # hf weight name -> (mean x² of its (scaled) input channels, rows seen), for importance
    importance: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)
    # "layer i: prev" -> alpha, err, rtn_err
    stats: dict[str, dict] = field(default_factory=dict)
    # hf weight name -> err, unclipped_err of its clipped groups (int-N grids, `clip_groups`)
    clips: dict[str, dict] = field(default_factory=dict)


class _Sums:
    """Σ|x|, Σx², Σxᵀx and the row count of one group's input."""

    def __init__(self, n: int, device) -> None:
        import torch

        from .hessian import HessianSum

        self.abs = torch.zeros(n, dtype=torch.float64, device=device)
        self.sq = torch.zeros(n, dtype=torch.float64, device=device)
        self.hess = HessianSum(n, device=device)

    def tensors(self) -> list:
        """What is summed over ranks (calib/world.py), in a fixed order."""
        return [self.abs, self.sq, *self.hess.tensors()]

    def add(self, x) -> None:
        import torch

        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.abs += x.abs().sum(0).to(torch.float64)
        self.sq += (x * x).sum(0).to(torch.float64)
        self.hess.add(x)

    @property
    def rows(self) -> float:
        return float(self.hess.rows)


def gguf_quantizer(type_name: str) -> Quantizer:
    """A GGUF block type's round trip, importance-weighted where the writer will weigh it."""
    from .. import kernels

    weighted = type_name in kernels.IMPORTANCE_TYPES

    def q(w: np.ndarray, imp: np.ndarray) -> np.ndarray:
        kw = {"importance": np.broadcast_to(imp, w.shape)} if weighted else {}
        return kernels.decode(type_name, kernels.encode(type_name, w, **kw)).reshape(w.shape)

    return q


def int_quantizer(bits: int, group_size: int, sym: bool, scale_dtype) -> Quantizer:
    """The int-N group grid's round trip (what --format safetensors writes)."""
    import torch

    from .absmax import rtn_grid

    def q(w: np.ndarray, imp: np.ndarray) -> np.ndarray:
        g = rtn_grid(torch.from_numpy(w), bits=bits, group_size=group_size, sym=sym, scale_dtype=scale_dtype)
        return g.dequant.numpy()

    return q


def run_awq(model_dir: Path, store: Optional[Path], quantizer_for: Callable[[str], Optional[Quantizer]], *,
            text_file=None, n_samples: int = 128, seqlen: int = 512, device: str = "auto",
            batch_size: int = 8, progress: Optional[bool] = None,
            clip_groups: Optional[Callable[[str], Optional[int]]] = None) -> Folded:
    """Search and fold every layer's scales; `quantizer_for(hf weight name)` is the grid
    that tensor is written with (None: not quantized). Returns the folded checkpoint
    (written under `store`; with None, only the statistics: a torchrun rank that writes
    nothing). `clip_groups(hf weight name)`: the group size of an int-N grid whose weights
    get AWQ's clipping search after the fold (None: not clipped; GGUF block types choose
    their own clipped scales)."""
    import torch
    from transformers import AutoTokenizer

    from ..calib import world as worlds
    from ..calib.layerwise import _as_hidden, find_decoder, load_causal_lm, run_layerwise
    from ..calib.text import calibration_samples
    from ..source.checkpoint import Checkpoint

    world = worlds.current()
    model_dir = Path(model_dir)
    names = set(Checkpoint(model_dir).handles)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    samples = calibration_samples(tokenizer, text_file=text_file, n_samples=n_samples, seqlen=seqlen)
    samples = worlds.own_windows(samples, batch_size, world)
    model = load_causal_lm(model_dir)
    dec = find_decoder(model)
    out = None if store is None else store / model_dir.resolve().name
    if out is not None:
        out.mkdir(parents=True)
    folded = Folded(out)
    sums: dict[str, _Sums] = {}
    first_call: dict[int, tuple] = {}  # layer -> (args, kwargs, output) of its first batch, before folding
    # layers whose linears ran: the capture of layer inputs calls each layer's stand-in,
    # which also fires the layer's hooks, and must not be recorded
    armed: set[int] = set()

    def on_linear(i: int, name: str, x) -> None:
        armed.add(i)
        rel = name[len(f"{dec.prefix}.{i}."):]
        if rel in FIRSTS:
            sums.setdefault(rel, _Sums(x.shape[-1], x.device)).add(x)

    def recorder(i: int):
        def hook(_mod, args, kwargs, output):
            if i in armed and i not in first_call:
                first_call[i] = (args, kwargs, _as_hidden(output).detach().clone())
        return hook

    def transform(i: int, layer) -> None:
        prefix = f"{dec.prefix}.{i}."
        col_scale: dict[str, torch.Tensor] = {}
        _unite(world, sums, next(layer.parameters()).device)
        for g in GROUPS:
            mods = _group_modules(layer, g)
            if mods is None or g.consumers[0] not in sums:
                continue
            prev, consumers = mods
            qs = [quantizer_for(prefix + c + ".weight") for c in g.consumers]
            if all(q is None for q in qs):
                continue
            found = _searched(world, f"searching AWQ scales for layer {i}", sums[g.consumers[0]], consumers, qs)
            if g.norm:
                fold_into_norm(prev.weight.data, [m.weight.data for m in consumers], found.scales)
            else:
                fold_into_linear(prev.weight.data, None if prev.bias is None else prev.bias.data,
                                 [m.weight.data for m in consumers], found.scales)
            for c in g.consumers:
                col_scale[c] = found.scales
            folded.stats[f"layer {i}: {g.prev}"] = {"alpha": found.alpha, "err": found.err, "rtn_err": found.rtn_err}
        with world.agreed(f"checking layer {i}'s AWQ folds"):
            _check_same_function(model_dir, i, layer, first_call.pop(i), _as_hidden)
        if clip_groups is not None:
            _clip_layer(world, i, layer, prefix, sums, col_scale, quantizer_for, clip_groups, folded)
        for rel, st in sums.items():  # importance of every linear reading a recorded input
            for c in FIRSTS[rel].consumers:
                s = col_scale.get(c)
                meansq = (st.sq / st.rows).cpu().numpy()
                folded.importance[prefix + c + ".weight"] = (
                    (meansq if s is None else meansq / s.double().numpy() ** 2).astype(np.float32), st.rows)
        sums.clear()
        with world.agreed(f"saving layer {i}'s folded weights"):
            if out is not None:
                _save_layer(model_dir, out / f"layer-{i:05d}.safetensors", prefix, layer, names, col_scale)

    hooks = [layer.register_forward_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(dec.layers)]
    try:
        run_layerwise(model, samples, on_linear=on_linear, transform=transform, device=device,
                      batch_size=batch_size, show_progress=progress if world.writer else False)
    finally:
        for h in hooks:
            h.remove()
    if out is not None:
        _finish_checkpoint(model_dir, out, names)
    return folded


def _clip_layer(world, i: int, layer, prefix: str, sums: dict, col_scale: dict, quantizer_for, clip_groups,
                folded: Folded) -> None:
    """AWQ's clipping of the layer's folded int-N weights, after the fold was checked: it
    changes the weights as rounding will, so the next layer runs on the clipped ones.
    Searched on rank 0 and broadcast, as the scales are."""
    import torch

    for rel, st in sorted(sums.items()):
        for c in FIRSTS[rel].consumers:
            name = prefix + c + ".weight"
            gs, q = clip_groups(name), quantizer_for(name)
            if gs is None or q is None:
                continue
            mod = layer.get_submodule(c)
            mine = None
            with world.agreed(f"clipping layer {i}'s weights"):
                if world.writer:
                    s = col_scale.get(c)
                    H = st.hess.sum.cpu()  # of the input before the fold: the folded input is x / s
                    H = H if s is None else H / (s.double()[:, None] * s.double()[None, :])
                    w, err, plain = clip_weights(mod.weight.detach().float().cpu(), H, q, gs)
                    mine = {"weight": w, "err": err, "plain": plain}
            got = world.share(mine, src=0)
            mod.weight.data.copy_(torch.as_tensor(got["weight"]).to(mod.weight))
            folded.clips[name] = {"err": got["err"], "unclipped_err": got["plain"]}


def _unite(world, sums: dict[str, _Sums], device) -> None:
    """A layer's input sums added over the ranks (every rank gets the ones any rank has,
    so all run the same collectives in the same order)."""
    for rel, n in world.union({rel: st.abs.shape[0] for rel, st in sums.items()}).items():
        if rel not in sums:
            sums[rel] = _Sums(n, device)
    for rel in sorted(sums):
        world.all_sum(sums[rel].tensors())


def _searched(world, what: str, st: _Sums, consumers, qs):
    """One group's scales: searched on rank 0 (the only process outside torchrun) and
    broadcast, so every rank folds the same float32 numbers."""
    import torch

    from .awq import Found

    mine = None
    with world.agreed(what):
        if world.writer:
            f = search_scales((st.abs / st.rows).cpu(), (st.sq / st.rows).cpu(), st.hess.sum.float().cpu(),
                              [m.weight.detach().float().cpu() for m in consumers],
                              [q or (lambda w, imp: w) for q in qs])
            mine = {"scales": f.scales, "alpha": f.alpha, "err": f.err, "rtn_err": f.rtn_err}
    got = world.share(mine, src=0)
    return Found(torch.as_tensor(got["scales"]).cpu(), got["alpha"], got["err"], got["rtn_err"])


def _group_modules(layer, g: Group):
    """(prev, consumers) of `g` in this layer, or None where the family lacks them or the
    widths do not chain (v -> o under grouped-query attention)."""
    from torch import nn

    try:
        prev = layer.get_submodule(g.prev)
        consumers = [layer.get_submodule(c) for c in g.consumers]
    except AttributeError:
        return None
    if not all(isinstance(m, nn.Linear) for m in consumers) or getattr(prev, "weight", None) is None:
        return None
    width = consumers[0].in_features
    if any(m.in_features != width for m in consumers):
        return None
    if g.norm and tuple(prev.weight.shape) != (width,):
        return None
    if not g.norm and (not isinstance(prev, nn.Linear) or prev.out_features != width):
        return None
    return prev, consumers


def _check_same_function(model_dir: Path, i: int, layer, first, as_hidden) -> None:
    import torch

    args, kwargs, before = first
    with torch.no_grad():
        after = as_hidden(layer(*args, **kwargs))
    rel = float((after - before).abs().max() / before.abs().max().clamp(min=1e-30))
    if not rel <= TOLERANCE:
        raise UnsupportedError(f"{model_dir}: --scheme awq: folding the scales into layer {i}'s norms changes "
                               f"its output ({rel:.1e} relative); this family's norms are not plain RMSNorm "
                               "weights (Gemma's 1 + w?): use --scheme gptq or rtn")


def _save_layer(model_dir: Path, path: Path, prefix: str, layer, names: set[str], changed: dict) -> None:
    """The layer's tensors as the checkpoint names them, in float32 (the folds' precision)."""
    import torch
    from safetensors.torch import save_file

    sd = {prefix + k: v for k, v in layer.state_dict().items()}
    for c in changed:
        if prefix + c + ".weight" not in names:
            raise UnsupportedError(f"{model_dir}: --scheme awq: {prefix + c}.weight is not a tensor of the "
                                   "checkpoint under that name; AWQ cannot write this family's folded weights")
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items() if k in names}, str(path))


def _finish_checkpoint(model_dir: Path, out: Path, names: set[str]) -> None:
    """The tensors no layer file holds copied as stored, an index of every file, and the
    config and tokenizer files linked."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..source.checkpoint import Checkpoint
    from ..source.shard_index import INDEX

    weight_map: dict[str, str] = {}
    for f in sorted(out.glob("layer-*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            weight_map.update({k: f.name for k in h.keys()})
    rest = {}
    for f in Checkpoint(model_dir).files:
        with safe_open(str(f.path), framework="pt") as h:
            for k in h.keys():
                if k not in weight_map and k in names:
                    rest[k] = h.get_tensor(k)
    save_file(rest, str(out / "rest.safetensors"))
    weight_map.update({k: "rest.safetensors" for k in rest})
    (out / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    for f in model_dir.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != INDEX:
            os.symlink(f.resolve(), out / f.name)

"""Calibration inputs of routed experts: each expert sees only the tokens routed to it.

transformers 5 keeps a layer's experts in one module holding 3-D parameters (gate_up_proj
(n_expert, 2 x ff, hidden) with gate rows first, down_proj (n_expert, hidden, ff)) and
calls it as experts(hidden_states (tokens, hidden), top_k_index (tokens, k), top_k_weights)
-- Qwen2/3-MoE, Mixtral and DeepSeek-V3 alike. A forward hook on that module replays, per
expert, what it computes: the tokens whose top-k holds the expert are the input of its gate
and up projections, act(gate) * up of those tokens the input of its down projection. The
layer-wise driver's callback then gets them under the names the checkpoint gives each
expert's weights (`<module>.<e>.gate_proj` ...), so statistics land on the expert they
belong to (arch/moe.py stacks them as llama.cpp does).

An expert no calibration token was routed to is reported with zero tokens (an empty
input), so every expert of the stack has an entry: its statistics then count 0 tokens, and
the importance matrix reads them as uniform weights (calib/imatrix.py, llama.cpp's own
convention for partial data)."""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def is_experts(module: nn.Module) -> bool:
    """An experts module of the layout and call described above, or gpt-oss's (transposed,
    biased, its own activation; called with the top-k indices too: _down_input replays it),
    or Llama 4's (fed every token pre-scaled: _llama4_inputs keeps each expert's routed rows)."""
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if not (isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.ndim == 3 and down.ndim == 3):
        return False
    if _is_gpt_oss(module) or _is_llama4(module):
        return gu.shape[2] == 2 * down.shape[1] and gu.shape[1] == down.shape[2]
    if gu.shape[1] != 2 * down.shape[2] or gu.shape[2] != down.shape[1]:
        return False
    return "top_k_index" in inspect.signature(module.forward).parameters


def _is_gpt_oss(module: nn.Module) -> bool:
    # GptOssExperts.forward(hidden_states, router_indices, routing_weights)
    return hasattr(module, "_apply_gate") and isinstance(getattr(module, "gate_up_proj_bias", None), torch.Tensor) \
        and "router_indices" in inspect.signature(module.forward).parameters


def _is_llama4(module: nn.Module) -> bool:
    # Llama4TextExperts.forward(hidden_states): (n_expert x tokens, hidden), every token given
    # to every expert already scaled by its routing weight (0 where the expert was not chosen);
    # (n_expert, in, out) weights with gate then up columns
    return list(inspect.signature(module.forward).parameters) == ["hidden_states"] \
        and not hasattr(module, "gate_up_proj_bias")


def _llama4_inputs(module: nn.Module, x: torch.Tensor):
    """Per expert e: the rows of its tokens (the non-zero ones: those routed to it, already
    scaled, which is also what llama.cpp's llama4 graph multiplies), and their down input."""
    n = module.gate_up_proj.shape[0]
    x = x.reshape(n, -1, x.shape[-1])
    ff = module.down_proj.shape[1]
    for e in range(n):
        xe = x[e][(x[e] != 0).any(dim=-1)]
        gate_up = xe @ module.gate_up_proj[e].to(xe.dtype)
        yield e, xe, module.act_fn(gate_up[:, :ff]) * gate_up[:, ff:]


def _down_input(module: nn.Module, e: int, xe: torch.Tensor) -> torch.Tensor:
    """What expert e's down projection multiplies, for the tokens xe routed to it."""
    if _is_gpt_oss(module):
        # gpt-oss: (n_expert, hidden, 2 x ff) stored (in, out), gate/up rows interleaved,
        # biases, and its own clamped SwiGLU (GptOssExperts._apply_gate)
        gate_up = xe @ module.gate_up_proj[e].to(xe.dtype) + module.gate_up_proj_bias[e].to(xe.dtype)
        return module._apply_gate(gate_up)
    ff = module.down_proj.shape[-1]
    gate_up = xe @ module.gate_up_proj[e].to(xe.dtype).T
    return module.act_fn(gate_up[:, :ff]) * gate_up[:, ff:]


def expert_weight(module: nn.Module, e: int, proj: str) -> torch.Tensor:
    """Expert e's weight of projection `proj` as llama.cpp stores its slab, (out, in): a view
    of the module's parameter, so assigning to it writes the parameter."""
    if _is_gpt_oss(module):  # (n_expert, in, out), gate/up columns interleaved
        if proj == "down_proj":
            return module.down_proj.data[e].T
        first = 0 if proj == "gate_proj" else 1
        return module.gate_up_proj.data[e, :, first::2].T
    if _is_llama4(module):  # (n_expert, in, out), gate columns then up
        if proj == "down_proj":
            return module.down_proj.data[e].T
        ff = module.down_proj.shape[1]
        return module.gate_up_proj.data[e, :, :ff].T if proj == "gate_proj" else module.gate_up_proj.data[e, :, ff:].T
    if proj == "down_proj":
        return module.down_proj.data[e]
    ff = module.down_proj.shape[-1]
    return module.gate_up_proj.data[e, :ff] if proj == "gate_proj" else module.gate_up_proj.data[e, ff:]


def routed_inputs(module: nn.Module, x: torch.Tensor, top_k_index: torch.Tensor):
    """Per expert e: (e, its tokens' input to gate/up, their input to down)."""
    x = x.reshape(-1, x.shape[-1])
    idx = top_k_index.reshape(x.shape[0], -1)
    for e in range(module.gate_up_proj.shape[0]):
        xe = x[(idx == e).any(dim=-1)]
        if xe.shape[0] == 0:
            ff = module.down_proj.shape[1] if _is_gpt_oss(module) else module.down_proj.shape[-1]
            yield e, xe, xe.new_zeros((0, ff))
            continue
        yield e, xe, _down_input(module, e, xe)


def expert_hooks(layer: nn.Module, index: int, prefix: str,
                 on_linear: Callable[[int, str, torch.Tensor], None]) -> list:
    """Forward hooks on every experts module of `layer` (module path `prefix`)."""
    handles = []
    for name, mod in layer.named_modules():
        if not is_experts(mod):
            continue
        base = f"{prefix}.{name}"

        def hook(m, args, kwargs, _out, base=base):
            x = args[0] if args else kwargs["hidden_states"]
            with torch.no_grad():
                if _is_llama4(m):
                    per_expert = _llama4_inputs(m, x.detach())
                else:
                    top_k = args[1] if len(args) > 1 else kwargs.get("top_k_index", kwargs.get("router_indices"))
                    per_expert = routed_inputs(m, x.detach(), top_k.detach())
                for e, xe, h in per_expert:
                    on_linear(index, f"{base}.{e}.gate_proj", xe)
                    on_linear(index, f"{base}.{e}.up_proj", xe)
                    on_linear(index, f"{base}.{e}.down_proj", h)

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    return handles


# -- reading fused expert parameters from a per-expert checkpoint (calib/lazy_model.py) ------

# what transformers 5 calls a projection in its fused parameters -> what checkpoints call it
_STORED_PROJ = {"gate_proj": ("gate_proj", "w1"), "up_proj": ("up_proj", "w3"), "down_proj": ("down_proj", "w2")}


def checkpoint_names(direct: str) -> list[str]:
    """The names a checkpoint may give model tensor `direct` (already in checkpoint
    prefixes): as is, or under Mixtral's `block_sparse_moe` (transformers 5 calls it `mlp`)."""
    out = [direct]
    if ".mlp." in direct:
        out.append(direct.replace(".mlp.", ".block_sparse_moe.", 1))
    return out


def expert_sources(direct: str, shape: tuple[int, ...], has: Callable[[str], bool]) -> list[list[str]] | None:
    """For a fused expert parameter (`...experts.gate_up_proj` (n, 2 x ff, hidden) or
    `...experts.down_proj` (n, hidden, ff)): per expert, the checkpoint tensors whose rows
    make it up (gate then up), or None when it is not one or the checkpoint lacks them."""
    stem, _, param = direct.rpartition(".")
    if not stem.endswith(".experts") or len(shape) != 3 or param not in ("gate_up_proj", "down_proj"):
        return None
    projs = ("gate_proj", "up_proj") if param == "gate_up_proj" else ("down_proj",)
    for base in checkpoint_names(stem):
        for style in (0, 1):
            names = [[f"{base}.{e}.{_STORED_PROJ[p][style]}.weight" for p in projs] for e in range(shape[0])]
            if all(has(n) for row in names for n in row):
                return names
    return None

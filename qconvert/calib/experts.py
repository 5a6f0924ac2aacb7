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

from typing import Callable

import torch
from torch import nn

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def is_experts(module: nn.Module) -> bool:
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.ndim == 3 and down.ndim == 3


def routed_inputs(module: nn.Module, x: torch.Tensor, top_k_index: torch.Tensor):
    """Per expert e: (e, its tokens' input to gate/up, their input to down)."""
    x = x.reshape(-1, x.shape[-1])
    idx = top_k_index.reshape(x.shape[0], -1)
    ff = module.down_proj.shape[-1]
    for e in range(module.gate_up_proj.shape[0]):
        xe = x[(idx == e).any(dim=-1)]
        if xe.shape[0] == 0:
            yield e, xe, xe.new_zeros((0, ff))
            continue
        gate_up = xe @ module.gate_up_proj[e].to(xe.dtype).T
        h = module.act_fn(gate_up[:, :ff]) * gate_up[:, ff:]
        yield e, xe, h


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
            top_k = args[1] if len(args) > 1 else kwargs["top_k_index"]
            with torch.no_grad():
                for e, xe, h in routed_inputs(m, x.detach(), top_k.detach()):
                    on_linear(index, f"{base}.{e}.gate_proj", xe)
                    on_linear(index, f"{base}.{e}.up_proj", xe)
                    on_linear(index, f"{base}.{e}.down_proj", h)

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    return handles

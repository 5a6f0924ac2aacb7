"""GPTQ for routed experts: each expert's projections solved against the Hessian of the
tokens routed to that expert, never the whole layer's.

calib/experts.py reports every expert's inputs under `<experts module>.<e>.<proj>`; this
module keeps one Hessian per (expert, projection) -- the driver's dict, so the ranks of a
distributed pass unite them like the rest -- and, when the layer is done, solves each
against the 2-D slab transformers holds for it (gate and up are the two halves of
gate_up_proj[e], down is down_proj[e]), writes the dequantized slab back (the next layer
sees the quantized experts, as for every other linear) and stages the GGUF bytes as
`<stack name>.<e>.npy` for the writer, which writes stacks expert by expert. Under
torchrun the solves are dealt out to the ranks and broadcast back (solve_layer).

Fallback: an expert no calibration token was routed to has a zero Hessian and nothing to
weigh its errors by; it is rounded to nearest with the plain kernel (the bytes a run
without calibration writes). For a type without a GPTQ grid the stack is importance
weighted instead, one row per expert (`<stack name>.imp.npy`), uniform for such experts,
as the importance matrix does (calib/imatrix.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .. import kernels
from ..arch.moe import expert_key
from ..calib.experts import PROJECTIONS, expert_weight, is_experts
from ..plan.tensor_plan import TensorPlan


def staged_name(stack: str, expert: int) -> str:
    """The scratch file of one expert's staged GGUF bytes."""
    return f"{stack}.{expert}.npy"


class ExpertSolver:
    """The experts side of run_gptq: which calibration names are experts of a planned stack,
    and the solve at the end of each layer."""

    def __init__(self, rename: Callable[[str], Optional[str]], by_name: dict[str, TensorPlan]) -> None:
        self.rename = rename  # HF name -> GGUF name (the adapter's)
        self.by_name = by_name
        self._keys: dict[str, Optional[tuple[str, int]]] = {}

    def key(self, name: str) -> Optional[tuple[str, int]]:
        """(GGUF stack name, expert) of a calibration name whose stack the plan marks, else None."""
        if name not in self._keys:
            k = expert_key(name + ".weight")
            gname = self.rename(k[0]) if k else None
            tp = self.by_name.get(gname) if gname else None
            self._keys[name] = (gname, k[1]) if tp is not None and tp.scheme in ("gptq", "importance") else None
        return self._keys[name]

    def solve_layer(self, i: int, layer: torch.nn.Module, hess: dict, solve_one, store: Optional[Path],
                    stats: dict, world=None) -> None:
        """Every experts module of layer i: pop its Hessians from `hess` and solve or weigh.

        Under torchrun the solves are dealt out in rounds of one per rank (task t of the
        layer to rank t mod N; the ranks hold the same Hessians, so the same list); each
        result is broadcast from its rank, then written into the module on every rank.
        A round holds one result per rank, never a whole layer's experts (a DeepSeek-V3
        layer's 768 dequantized slabs would be 44 GB in float32)."""
        from ..calib.world import World

        world = world or World()
        tasks = []  # (stack name, expert, view of its slab, Hessian sum), in module order: the same on every rank
        for mod_name, mod in layer.named_modules():
            if not is_experts(mod):
                continue
            imp: dict[str, list] = {}
            for e in range(mod.gate_up_proj.shape[0]):
                for proj in PROJECTIONS:
                    full = next((n for n in hess if n.endswith(f".{i}.{mod_name}.{e}.{proj}")), None)
                    if full is None or self.key(full) is None:
                        continue
                    gname, _ = self.key(full)
                    h = hess.pop(full)
                    view = expert_weight(mod, e, proj)  # (out, in), writes through to the module
                    if self.by_name[gname].scheme == "importance":
                        n_in = view.shape[-1]
                        diag = np.diag(h.hessian().cpu().numpy()) / 2 if float(h.rows) else np.ones(n_in)
                        imp.setdefault(gname, []).append(diag)
                    else:
                        tasks.append((gname, e, view, h))
            for gname, diags in imp.items():
                if store is not None:
                    np.save(store / f"{gname}.imp.npy", np.stack(diags).astype(np.float32))
        for first in range(0, len(tasks), world.size):
            round_ = tasks[first:first + world.size]
            mine = None
            with world.agreed(f"solving GPTQ for the experts of layer {i}"):
                if world.rank < len(round_):
                    gname, _, view, h = round_[world.rank]
                    W = view.detach().to(torch.float32).cpu().numpy()
                    mine = solve_one(gname, W, h) if float(h.rows) else _plain(self.by_name[gname], W)
            for r, (gname, e, view, _) in enumerate(round_):
                got = world.share(mine if r == world.rank else None, src=r)
                view.copy_(torch.as_tensor(got["deq"]).to(view.device, view.dtype))
                if store is not None:
                    np.save(store / staged_name(gname, e), got["rows"])
                stats[f"{gname}[{e}]"] = {k: got[k] for k in ("err", "rtn_err") if k in got}
            tasks[first:first + world.size] = [None] * len(round_)  # its Hessians are not needed any more


def _plain(tp: TensorPlan, W: np.ndarray) -> dict:
    """Round to nearest with the plain kernel: an expert no calibration token reached."""
    blocks = kernels.encode(tp.qtype.name, W)
    deq = kernels.decode(tp.qtype.name, blocks).reshape(W.shape)
    return {"rows": np.ascontiguousarray(blocks).reshape(-1), "deq": deq}

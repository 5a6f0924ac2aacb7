"""The thin driver that runs GPTQ on GGUF block grids for a whole model: one
calibration pass, layer by layer (true-sequential: layer i+1 sees the outputs of the
already-quantized layer i), each decoder linear solved with `gptq_gguf` against its
Hessian, the encoded blocks kept in a scratch directory until the GGUF writer reaches
them. Linear weights planned at a type without a GPTQ grid get the importance-weighted
kernel instead (importance = mean x², the Hessian's diagonal over 2)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..plan.tensor_plan import Plan
from ..source.expert_stack import ExpertStack
from ..source.model_source import Source
from .block_grid import GRIDS


def gptq_plan(plan: Plan, src: Source) -> tuple[Plan, dict[str, str]]:
    """A new plan with the decoder linears marked for GPTQ (or importance weighting where
    their type has no GPTQ grid), and hf module name -> GGUF tensor name of those linears."""
    by_name = {tp.name: tp for tp in plan.tensors}
    linears: dict[str, str] = {}
    schemes: dict[str, str] = {}
    for s in src.tensors:
        tp = by_name[s.name]
        if isinstance(s, ExpertStack) and tp.qtype.quantized:  # solved expert by expert (gptq_experts.py)
            schemes[s.name] = "gptq" if tp.qtype.name in GRIDS else "importance"
            continue
        if not s.hf_name.endswith(".weight") or len(s.shape) != 2 or ".layers." not in s.hf_name:
            continue
        if not tp.qtype.quantized:
            continue
        schemes[s.name] = "gptq" if tp.qtype.name in GRIDS else "importance"
        linears[s.hf_name[: -len(".weight")]] = s.name
    if not linears:
        raise InputError(f"{src.path}: no quantized decoder linear weights to run GPTQ on")
    tensors = [replace(tp, scheme=schemes[tp.name]) if tp.name in schemes else tp for tp in plan.tensors]
    return replace(plan, tensors=tensors), linears


def run_gptq(src: Source, plan: Plan, store: Optional[Path], *, text_file: Optional[str | Path] = None,
             n_samples: int = 128, seqlen: int = 512, device: str = "auto", damp: float = 0.01,
             batch_size: int = 8, progress: Optional[bool] = None, weighted_scales: bool = False,
             scale_search: str = "llama") -> dict[str, dict]:
    """Quantize every linear `plan` (from gptq_plan) marks; write `<store>/<gguf name>.npy` (GGUF bytes) and, for
    importance-scheme tensors, `<name>.imp.npy`. Returns per-tensor GPTQ statistics.

    Under torchrun (calib/world.py) every rank runs its share of the windows, the Hessians
    are summed over ranks, each rank solves its share of a layer's linears and the results
    are broadcast; only the rank given a `store` (rank 0) writes there, the others pass None.

    `weighted_scales` (--scheme gptq-imatrix): each block's scales are chosen by the
    importance-weighted search (llama.cpp's imatrix path, importance = mean x², the
    Hessian's diagonal over 2) instead of the plain one; the codes are GPTQ's either way.
    `scale_search` "thorough" refines those scales first (kernels/scale_refine.py)."""
    import torch
    from transformers import AutoTokenizer

    from ..calib import world as worlds
    from ..calib.layerwise import load_causal_lm, run_layerwise
    from ..calib.text import calibration_samples
    from ..sink.gguf import check_holds
    from ..source.finite import check_finite
    from .gptq_grid import gptq_gguf  # torch: imported when GPTQ runs, not when the CLI starts
    from .hessian import HessianSum, unite_hessians
    from ..arch import adapter_for
    from ..source.checkpoint import Checkpoint
    from .gptq_experts import ExpertSolver

    world = worlds.current()
    _, linears = gptq_plan(plan, src)  # the linears; `plan` already carries their schemes
    by_name = {tp.name: tp for tp in plan.tensors}
    transforms = {s.name: s.transforms for s in src.tensors}
    tokenizer = AutoTokenizer.from_pretrained(str(src.path))
    samples = calibration_samples(tokenizer, text_file=text_file, n_samples=n_samples, seqlen=seqlen)
    samples = worlds.own_windows(samples, batch_size, world)
    model = load_causal_lm(src.path)
    hess: dict[str, HessianSum] = {}
    stats: dict[str, dict] = {}

    def weights_of(H_np: np.ndarray) -> Optional[np.ndarray]:
        return (np.diag(H_np) / 2).astype(np.float32) if weighted_scales else None

    experts = ExpertSolver(adapter_for(Checkpoint(src.path)).gguf_name, by_name)

    def on_linear(i: int, name: str, x: torch.Tensor) -> None:
        if name in linears or experts.key(name) is not None:  # an expert: its routed tokens only
            if name not in hess:
                hess[name] = HessianSum(x.shape[-1], device=x.device)
            hess[name].add(x)

    def solve_expert(gname: str, W: np.ndarray, h) -> dict:
        H = h.hessian()
        check_holds(gname, by_name[gname].qtype, W)
        H_np = H.cpu().numpy()
        blocks, deq, st = gptq_gguf(W, H_np, by_name[gname].qtype.name, damp=damp, device=H.device,
                                    importance=weights_of(H_np), scale_search=scale_search)
        return {"rows": np.ascontiguousarray(blocks).reshape(-1), "deq": deq,
                **{k: st[k] for k in ("err", "rtn_err") if k in st}}

    def solve(full: str, mod: torch.nn.Module, H: torch.Tensor) -> dict:
        gname = linears[full]
        tp = by_name[gname]
        W = mod.weight.detach().to(torch.float32).cpu().numpy()
        # the weights GPTQ writes, checked as the writer checks the rest (a full
        # transformers load, lazy_model's fallback, bypasses the reader's NaN check)
        check_finite(W, "F32", f"{src.path}: {gname} ({full}.weight)")
        check_holds(gname, tp.qtype, W)
        H_np = H.cpu().numpy()
        blocks, deq, st = gptq_gguf(W, H_np, tp.qtype.name, damp=damp, device=H.device, importance=weights_of(H_np),
                                   scale_search=scale_search)
        # llama.cpp's row order (e.g. Llama's q/k rope permutation) applies to whole
        # rows, so it applies to the encoded rows too
        rows = blocks.reshape(W.shape[0], -1)
        for t in transforms[gname]:
            rows = t(rows)
        return {"rows": np.ascontiguousarray(rows).reshape(-1), "deq": deq,
                **{k: st[k] for k in ("err", "rtn_err") if k in st}}

    def transform(i: int, layer: torch.nn.Module) -> None:
        unite_hessians(world, hess, next(layer.parameters()).device)
        todo = []  # (module path in the model, module), in the layer's module order: the same on every rank
        for mod_name, mod in layer.named_modules():
            full = next((n for n in hess if n.endswith(f".{i}.{mod_name}")), None)
            if isinstance(mod, torch.nn.Linear) and full is not None:
                todo.append((full, mod))
        H = {full: hess.pop(full).hessian() for full, _ in todo}
        solving = [(full, mod) for full, mod in todo if by_name[linears[full]].scheme == "gptq"]
        who = worlds.owners([float(m.weight.shape[0] * m.weight.shape[1] ** 2 + m.weight.shape[1] ** 3)
                             for _, m in solving], world)
        mine = {}
        with world.agreed(f"solving GPTQ for layer {i}"):
            for (full, mod), r in zip(solving, who):
                if r == world.rank:
                    mine[full] = solve(full, mod, H[full])
        for (full, mod), r in zip(solving, who):
            got = world.share(mine.pop(full, None), src=r)
            mod.weight.data.copy_(torch.as_tensor(got["deq"]).to(mod.weight.device, mod.weight.dtype))
            gname = linears[full]
            if store is not None:
                np.save(store / f"{gname}.npy", got["rows"])
            stats[gname] = {k: got[k] for k in ("err", "rtn_err") if k in got}
        for full, _ in todo:
            if by_name[linears[full]].scheme != "gptq" and store is not None:
                np.save(store / f"{linears[full]}.imp.npy", (np.diag(H[full].cpu().numpy()) / 2).astype(np.float32))
        # the experts' solves, dealt out by expert and broadcast back like the modules' above
        experts.solve_layer(i, layer, hess, solve_expert, store, stats, world)

    run_layerwise(model, samples, on_linear=on_linear, transform=transform, device=device,
                  batch_size=batch_size, show_progress=progress if world.writer else False)
    if store is not None:
        stage_unreached(src, by_name, store)
    return stats


def stage_unreached(src: Source, by_name: dict, store: Path) -> int:
    """Expert slabs the calibration pass never reached -- a family whose experts module
    calib/experts.py does not replay (every family converted today is replayed: a safety net) --
    are staged rounded to nearest, as unrouted experts are (gptq_experts.py); a stack
    planned for importance weighting gets uniform rows. Returns how many slabs."""
    from .. import kernels
    from .gptq_experts import staged_name

    n = 0
    for s in src.tensors:
        tp = by_name.get(s.name)
        if not isinstance(s, ExpertStack) or tp is None:
            continue
        if tp.scheme == "gptq":
            for e, part in enumerate(s.parts):
                path = store / staged_name(s.name, e)
                if not path.exists():
                    np.save(path, kernels.encode(tp.qtype.name, part.load()).reshape(-1))
                    n += 1
        elif tp.scheme == "importance" and not (store / f"{s.name}.imp.npy").exists():
            np.save(store / f"{s.name}.imp.npy", np.ones((s.shape[0], s.shape[-1]), dtype=np.float32))
    return n


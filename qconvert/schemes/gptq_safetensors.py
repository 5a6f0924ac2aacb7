"""The driver for GPTQ int-N checkpoints: one true-sequential calibration pass; each
decoder projection is solved with `gptq_quantize` (groups, act-order as static groups,
sym/asym, damping) using the scale dtype the file will store, its dequantized weights
written back into the layer before the next layer runs, and the result staged on disk
until the safetensors writer asks for it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

BATCH_SIZE = 8  # windows per forward; under torchrun ranks get runs of whole batches
STAGED = ("qweight", "scales", "zeros", "g_idx", "dequant")  # what the writer reads back per projection


def run_gptq_int(model_dir: Path, store: Optional[Path], *, targets: set[str], bits: int, group_size: int, sym: bool,
                 act_order: bool, damp: float, scale_dtype: str, text_file=None, n_samples: int = 128,
                 seqlen: int = 512, device: str = "auto", progress: Optional[bool] = None,
                 group_sizes: Optional[dict[str, int]] = None) -> dict[str, dict]:
    """Quantize the HF linear weights named in `targets`; return name -> {"err", "rtn_err"}:
    relative output errors of GPTQ and of round-to-nearest on the same grid. group_sizes:
    a weight's own group size where the plan gave it another (its width's fallback).

    Under torchrun (calib/world.py) the windows, Hessian sums and solves are shared out as
    in gptq_driver.run_gptq; only the rank given a `store` (rank 0) stages results."""
    import torch
    from transformers import AutoTokenizer

    from ..calib import world as worlds
    from ..calib.layerwise import load_causal_lm, run_layerwise
    from ..calib.text import calibration_samples
    from .hessian import HessianSum, unite_hessians

    world = worlds.current()
    sd = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[scale_dtype]
    modules = {t[: -len(".weight")] for t in targets}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    samples = calibration_samples(tokenizer, text_file=text_file, n_samples=n_samples, seqlen=seqlen)
    samples = worlds.own_windows(samples, BATCH_SIZE, world)
    model = load_causal_lm(model_dir)
    hess: dict[str, HessianSum] = {}
    ratios: dict[str, dict] = {}
    grid = dict(bits=bits, group_size=group_size, sym=sym, act_order=act_order, damp=damp, scale_dtype=sd)

    def on_linear(i: int, name: str, x: torch.Tensor) -> None:
        if name in modules:
            if name not in hess:
                hess[name] = HessianSum(x.shape[-1], device=x.device)
            hess[name].add(x)

    def transform(i: int, layer: torch.nn.Module) -> None:
        unite_hessians(world, hess, next(layer.parameters()).device)
        # this layer's modules in the layer's own order (q, k, v, o, gate, up, down; the same on
        # every rank): a weight too large for the grid is reported as such before a later
        # module's Hessian, made of the Inf activations it causes, fails the solve
        mine_layer = {n for n in hess if f".{i}." in n and n.split(f".{i}.")[0].endswith("layers")}
        todo = [full for name, _ in layer.named_modules()
                if (full := next((n for n in mine_layer if n.endswith(f".{i}.{name}")), None)) is not None]
        todo += sorted(mine_layer - set(todo))
        mods = [layer.get_submodule(full.split(f".{i}.", 1)[1]) for full in todo]
        who = worlds.owners([float(m.weight.shape[0] * m.weight.shape[1] ** 2 + m.weight.shape[1] ** 3)
                             for m in mods], world)
        mine = {}
        with world.agreed(f"solving GPTQ for layer {i}"):
            for full, mod, r in zip(todo, mods, who):
                if r == world.rank:
                    g = (group_sizes or {}).get(full + ".weight", group_size)
                    mine[full] = _solve(model_dir, full, mod, hess[full].hessian(), {**grid, "group_size": g})
        for full, mod, r in zip(todo, mods, who):
            del hess[full]
            got = world.share(mine.pop(full, None), src=r)
            ratios[full + ".weight"] = {"err": got["err"], "rtn_err": got["rtn_err"]}
            mod.weight.data.copy_(torch.as_tensor(got["dequant"]).to(mod.weight.device, mod.weight.dtype))
            if store is not None:
                torch.save({k: torch.as_tensor(got[k]).cpu() for k in STAGED}, store / f"{full}.weight.pt")

    run_layerwise(model, samples, on_linear=on_linear, transform=transform, device=device,
                  batch_size=BATCH_SIZE, show_progress=progress if world.writer else False)
    return ratios


def _solve(model_dir: Path, full: str, mod, H, grid: dict) -> dict:
    """One projection: GPTQ, and round-to-nearest on the same grid for comparison."""
    import torch

    from ..source.finite import check_finite
    from .absmax import check_grid_holds, rtn_grid
    from .gptq import gptq_quantize
    from .hessian import output_error

    g = grid
    W = mod.weight.detach().to(torch.float32)
    w_np = W.cpu().numpy()  # checked here: a full transformers load bypasses the reader's checks
    check_finite(w_np, "F32", f"{model_dir}: tensor {full + '.weight'!r}")
    check_grid_holds(full + ".weight", w_np, g["bits"], g["scale_dtype"])
    del w_np
    r = gptq_quantize(W, H, bits=g["bits"], group_size=g["group_size"], act_order=g["act_order"], sym=g["sym"],
                      damp=g["damp"], static_groups=g["act_order"], scale_dtype=g["scale_dtype"])
    base = rtn_grid(W.cpu(), bits=g["bits"], group_size=g["group_size"], sym=g["sym"], scale_dtype=g["scale_dtype"])
    e_rtn = output_error(W, torch.as_tensor(np.asarray(base.dequant), device=W.device), H)
    return {**{k: torch.as_tensor(getattr(r, k)) for k in STAGED}, "err": float(r.err), "rtn_err": float(e_rtn)}


def staged_results(store: Path) -> Callable[[str], object]:
    import torch
    from types import SimpleNamespace

    def get(hf_name: str):
        p = store / f"{hf_name}.pt"
        if not p.exists():
            return None
        return SimpleNamespace(**torch.load(p, weights_only=False))

    return get

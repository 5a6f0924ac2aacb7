"""The driver for GPTQ int-N checkpoints: one true-sequential calibration pass; each
decoder projection is solved with `gptq_quantize` (groups, act-order as static groups,
sym/asym, damping) using the scale dtype the file will store, its dequantized weights
written back into the layer before the next layer runs, and the result staged on disk
until the safetensors writer asks for it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np


def run_gptq_int(model_dir: Path, store: Path, *, targets: set[str], bits: int, group_size: int, sym: bool,
                 act_order: bool, damp: float, scale_dtype: str, text_file=None, n_samples: int = 128,
                 seqlen: int = 512, device: str = "auto", progress: Optional[bool] = None) -> dict[str, dict]:
    """Quantize the HF linear weights named in `targets`; return name -> {"err", "rtn_err"}:
    relative output errors of GPTQ and of round-to-nearest on the same grid."""
    import torch
    from transformers import AutoTokenizer

    from ..calib.layerwise import load_causal_lm, run_layerwise
    from ..calib.text import calibration_samples
    from ..source.finite import check_finite
    from .absmax import check_grid_holds, rtn_grid
    from .gptq import gptq_quantize
    from .hessian import accumulate_hessian, hessian_init, output_error

    sd = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[scale_dtype]
    modules = {t[: -len(".weight")] for t in targets}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    samples = calibration_samples(tokenizer, text_file=text_file, n_samples=n_samples, seqlen=seqlen)
    model = load_causal_lm(model_dir)
    hess: dict[str, tuple] = {}
    ratios: dict[str, dict] = {}

    def on_linear(i: int, name: str, x: torch.Tensor) -> None:
        if name in modules:
            H, n = hess.get(name) or hessian_init(x.shape[-1], dtype=torch.float32, device=x.device)
            hess[name] = accumulate_hessian(H, n, x)

    def transform(i: int, layer: torch.nn.Module) -> None:
        for full in [n for n in hess if f".{i}." in n and n.split(f".{i}.")[0].endswith("layers")]:
            mod = layer.get_submodule(full.split(f".{i}.", 1)[1])
            H = hess.pop(full)[0]
            W = mod.weight.detach().to(torch.float32)
            w_np = W.cpu().numpy()  # checked here: a full transformers load bypasses the reader's checks
            check_finite(w_np, "F32", f"{model_dir}: tensor {full + '.weight'!r}")
            check_grid_holds(full + ".weight", w_np, bits, sd)
            del w_np
            r = gptq_quantize(W, H, bits=bits, group_size=group_size, act_order=act_order, sym=sym, damp=damp,
                              static_groups=act_order, scale_dtype=sd)
            base = rtn_grid(W.cpu(), bits=bits, group_size=group_size, sym=sym, scale_dtype=sd)
            e_rtn = output_error(W, torch.as_tensor(np.asarray(base.dequant), device=W.device), H)
            ratios[full + ".weight"] = {"err": float(r.err), "rtn_err": float(e_rtn)}
            mod.weight.data.copy_(torch.as_tensor(np.asarray(r.dequant)).to(mod.weight.device, mod.weight.dtype))
            torch.save({k: getattr(r, k) for k in ("qweight", "scales", "zeros", "g_idx", "dequant")},
                       store / f"{full}.weight.pt")

    run_layerwise(model, samples, on_linear=on_linear, transform=transform, device=device, show_progress=progress)
    return ratios


def staged_results(store: Path) -> Callable[[str], object]:
    import torch
    from types import SimpleNamespace

    def get(hf_name: str):
        p = store / f"{hf_name}.pt"
        if not p.exists():
            return None
        return SimpleNamespace(**torch.load(p, weights_only=False))

    return get

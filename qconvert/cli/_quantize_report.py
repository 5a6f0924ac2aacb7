"""The quantize command's report: the plan table, per-type totals, a sized plan's figures
and GPTQ's per-layer errors, as rich tables and plain lines."""

from __future__ import annotations

import re
from typing import Optional

from rich.table import Table

from ..plan.sized_figures import SizedFigures
from ..plan.tensor_plan import Plan
from ._render import human_bytes, text


def plan_table(plan: Plan, budget: Optional[SizedFigures] = None) -> Table:
    t = Table(title="plan", show_lines=False)
    cols = ("tensor", "shape", "type", "bytes") + (("pred. loss",) if budget else ()) + ("rule",)
    for col in cols:
        t.add_column(col, justify="right" if col in ("bytes", "pred. loss") else "left")
    per = budget.tensors if budget else {}
    for tp in plan.tensors:
        rule = tp.reason + (f" [fallback: {tp.fallback}]" if tp.fallback else "") + \
            (f" [{tp.scheme}]" if tp.scheme != "rtn" else "")
        loss = (f"{per[tp.name].loss:.4g}" if tp.name in per else "-",) if budget else ()
        t.add_row(*(text(c) for c in (tp.name, "x".join(map(str, tp.shape)), tp.qtype.name, human_bytes(tp.nbytes),
                                       *loss, rule)))
    return t


def budget_lines(b: SizedFigures) -> list[str]:
    """The sized plan's figures: target, predicted file size, loss and its bound, and for
    --target-vram the memory breakdown."""
    if b.target == "size":
        target = f"--target-size {human_bytes(b.target_size)} ({b.target_size:,} bytes)"
    elif b.target == "bpw":
        target = f"--target-bpw {b.target_bpw}"
    else:
        target = f"--target-vram {human_bytes(b.target_vram)} at context {b.context} (KV cache {b.kv_type})"
    lines = [f"  budget: {target}",
             f"  predicted file size {b.predicted_file_size:,} bytes ({human_bytes(b.predicted_file_size)}): "
             f"header {b.header_bytes:,} + tensors {b.weights_bytes:,}; {b.bits_per_weight:.3f} bits/weight",
             f"  predicted loss {b.loss:.6g}, lower bound {b.lower_bound:.6g} "
             f"(gap {b.gap:.3g}{', optimal' if b.exact else ''}); "
             f"{b.measured} sensitivity measurements made, the rest from the cache"]
    if b.target == "vram":
        lines.append(f"  memory: weights {human_bytes(b.weights_bytes)} + KV cache {human_bytes(b.kv_bytes)} "
                     f"+ runtime overhead {human_bytes(b.overhead_bytes)} = {human_bytes(b.vram_total)} "
                     f"of {human_bytes(b.target_vram)}")
    return lines


def totals_lines(plan: Plan) -> list[str]:
    lines = []
    for name, (n, params, nbytes) in sorted(plan.by_type().items()):
        lines.append(f"  {name:<6} {n:>4} tensors  {params:>14,} params  {human_bytes(nbytes):>10}")
    fb = plan.fallbacks
    lines.append(
        f"  total  {len(plan.tensors):>4} tensors  {plan.n_params:>14,} params  {human_bytes(plan.nbytes):>10}"
        f"  {plan.bits_per_weight:.3f} bits/weight"
    )
    lines.append(f"  fallbacks: {len(fb)} tensors, {sum(t.n_params for t in fb):,} params"
                 + ("".join(f"\n    {t.name}: {t.fallback}" for t in fb)))
    return lines


def layer_report(stats: dict) -> list[str]:
    """GPTQ's per-layer report: output error of each layer's tensors relative to their
    own weights' output, GPTQ versus round-to-nearest (tr(ΔHΔᵀ)/tr(WHWᵀ), mean over the
    layer's tensors)."""
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for name, v in stats.items():
        if "err" not in v:
            continue
        m = re.search(r"(?:blk|layers)\.(\d+)\.", name)
        by_layer.setdefault(m.group(1) if m else "-", []).append((v["err"], v.get("rtn_err", float("nan"))))
    lines = []
    for layer in sorted(by_layer, key=lambda k: int(k) if k.isdigit() else -1):
        errs = by_layer[layer]
        g = sum(e for e, _ in errs) / len(errs)
        r = sum(e for _, e in errs) / len(errs)
        lines.append(f"  layer {layer:>3}: {len(errs)} tensors, relative output error GPTQ {g:.3e} "
                     f"vs round-to-nearest {r:.3e} ({g / r:.2f}x)")
    return lines

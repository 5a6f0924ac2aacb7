"""`qconvert eval --plot`: mean KL against file size, one point per file, the llama.cpp
presets joined by a line in size order, so a sized or calibrated file can be seen above or
below the preset curve at the same size. matplotlib is optional (`pip install
'qconvert[plot]'`) and imported only here."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import UnsupportedError
from .comparison import Comparison, is_preset


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; checked before any evaluation runs."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed, and none is touched
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnsupportedError("--plot needs matplotlib: pip install 'qconvert[plot]'") from None
    return plt


def plottable(cmp: Comparison) -> list:
    """The rows with a finite mean KL against the reference: a file whose logits were NaN
    (NaN weights) has none and is left out of the figure."""
    return [r for r in cmp.rows if math.isfinite(r.metrics.mean_kl)]


def plot(cmp: Comparison, out: Path) -> None:
    """Write the figure as PNG to `out` (a path the caller made safe to write)."""
    plt = pyplot()
    rows = plottable(cmp)
    if not rows:
        raise UnsupportedError("--plot: no file has a finite KL against a reference; nothing to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        presets = sorted((r for r in rows if is_preset(r.label)), key=lambda r: r.file_bytes)
        if len(presets) > 1:
            ax.plot([r.file_bytes / 1e6 for r in presets], [_kl(r) for r in presets], "-", color="0.6",
                    zorder=1, label="llama.cpp presets")
        for r in rows:
            preset = is_preset(r.label)
            ax.scatter(r.file_bytes / 1e6, _kl(r), zorder=2, marker="o" if preset else "D",
                       color="tab:blue" if preset else "tab:orange")
            ax.annotate(_short(Path(r.path).name), (r.file_bytes / 1e6, _kl(r)), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel("mean KL vs reference (nats/token, log scale)")
        ref = Path(cmp.reference.path).name if cmp.reference else ""
        ax.set_title(_short(f"KL against {ref} ({rows[0].metrics.n_positions:,} scored tokens)", 70), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if len(presets) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        with open(out, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)


def _kl(r) -> float:
    return max(r.metrics.mean_kl, 1e-9)  # log axis: an exact copy of the reference sits on the floor


def _short(s: str, n: int = 40) -> str:
    from ..terminal_text import printable

    s = printable(s)
    return s if len(s) <= n else s[: n - 1] + "…"

"""Several quantized files against one reference on the same text: what `qconvert eval`
reports. One row per file: its size and bits per weight (from its header, not from who
made it), perplexity, and KL / top-1 agreement against the reference's logits.

    cmp = evaluate(["m-Q4_K_M.gguf", "m-Q8_0.gguf"], reference="m-F16.gguf")
    cmp.rows[0].metrics.mean_kl

The text is tokenized once, by the reference's tokenizer (an HF directory through
transformers, a GGUF through llama.cpp) unless `tokenizer` names another; every file is
then scored on the same token windows, so files whose vocabulary differs from the
reference's are refused (ShapeError) rather than compared."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..errors import InputError
from .llama_model import loadable_path
from .logits import backend_for
from .metrics import score
from .reference import reference_from
from .statistics import Metrics
from .windows import Windows, evaluation_windows

# file types llama-quantize names as presets: the plot joins these with a line
PRESET_PREFIXES = ("Q", "IQ", "F16", "BF16", "F32", "TQ", "MXFP4")


@dataclass
class Row:
    path: str
    kind: str  # "gguf" or "hf"
    label: str  # the GGUF file type ("Q4_K_M"), or "safetensors" / "hf"
    file_bytes: int
    bits_per_weight: Optional[float]
    metrics: Metrics

    def to_dict(self) -> dict:
        return dict(path=self.path, kind=self.kind, label=self.label, file_bytes=self.file_bytes,
                    bits_per_weight=self.bits_per_weight, **_metrics_dict(self.metrics))


@dataclass
class Comparison:
    windows: Windows
    reference: Optional[Row]  # None: perplexity only
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict:
        w = self.windows
        return dict(text=w.source, n_windows=w.n_windows, n_ctx=w.n_ctx, first_scored=w.first,
                    n_scored=w.n_scored, reference=self.reference.to_dict() if self.reference else None,
                    results=[r.to_dict() for r in self.rows])


def _metrics_dict(m: Metrics) -> dict:
    d = m.to_dict()
    d.pop("model", None)
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}  # NaN -> null


def describe(path: Path) -> tuple[str, str, int, Optional[float]]:
    """(kind, label, bytes on disk, bits per weight) of a GGUF file or a model directory."""
    from ..inspection import inspect

    kind = backend_for(path)
    if kind == "gguf":
        rep = inspect(path, max_array_items=0)
        ft = rep.metadata.get("general.file_type")
        label = _file_type_name(ft.value if ft is not None else None)
        return kind, label, rep.file_size, rep.bits_per_weight
    weights = [p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
    size = sum(p.stat().st_size for p in weights)
    bpw = None
    try:
        rep = inspect(path, max_array_items=0)
        bpw = rep.bits_per_weight
    except InputError:
        pass  # a directory inspect cannot read (pytorch .bin): its size still says something
    return kind, "safetensors" if any(p.suffix == ".safetensors" for p in weights) else "hf", size, bpw


def _file_type_name(value) -> str:
    import gguf

    try:
        name = gguf.LlamaFileType(int(value)).name
    except (TypeError, ValueError):
        return "gguf"
    return name.removeprefix("MOSTLY_")


def is_preset(label: str) -> bool:
    return label.startswith(PRESET_PREFIXES) and label not in ("gguf",)


def _check_paths(paths: list[Path]) -> None:
    seen: dict = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:
            raise InputError(f"{p}: cannot read ({e.strerror})") from None
        if backend_for(p) == "gguf":  # a .gguf file or a directory, else a one-line InputError
            st = os.stat(loadable_path(p))  # a split set is one model, whichever member is named
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise InputError(f"{p}: given twice (also as {seen[key]})")
        seen[key] = p


def evaluate(models: list[Path | str], reference: Path | str | None = None, *, text: Optional[str] = None,
             tokenizer: Path | str | None = None, n_ctx: int = 512, max_windows: Optional[int] = None,
             threads: int = 1, on_model: Optional[Callable[[str, int], Callable[[], None]]] = None
             ) -> Comparison:
    """Score each of `models` (and the reference) on windows of `text` (default: the bundled
    evaluation text). on_model(name, n_windows) returns a callback called after each window."""
    paths = [Path(m) for m in models]
    ref_path = Path(reference) if reference is not None else None
    _check_paths(paths + ([ref_path] if ref_path is not None else []))
    tok_source = Path(tokenizer) if tokenizer is not None else ref_path or _first_dir(paths) or paths[0]
    windows = evaluation_windows(tok_source, n_ctx=n_ctx, max_windows=max_windows, text=text)

    def tick(name: str):
        return on_model(name, windows.n_windows) if on_model else None

    cmp = Comparison(windows, None)
    ref = None
    try:
        if ref_path is not None:
            ref = reference_from(ref_path, windows, threads=threads, on_window=tick(ref_path.name))
            cmp.reference = Row(str(ref_path), *describe(ref_path), ref.metrics)
        for p in paths:
            m = score(p, windows, reference=ref, threads=threads, on_window=tick(p.name))
            cmp.rows.append(Row(str(p), *describe(p), m))
    finally:
        if ref is not None:
            ref.close()
    return cmp


def training_context(path: Path | str) -> Optional[int]:
    """The context length a model says it was trained for: a GGUF's `{arch}.context_length`
    (a split set's first member holds it), a directory's config.json max_position_embeddings
    (or its text_config's); None when it does not say or cannot be read (the run itself then
    reports what is wrong)."""
    import json

    from ..gguf_header import read_gguf_header

    try:
        if backend_for(path) == "gguf":
            kv = {k.key: k.value for k in read_gguf_header(loadable_path(path), max_array_items=0).kv}
            value = kv.get(f"{kv.get('general.architecture')}.context_length")
        else:
            config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
            config = config.get("text_config") if "max_position_embeddings" not in config else config
            value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    except (InputError, OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _first_dir(paths: list[Path]) -> Optional[Path]:
    return next((p for p in paths if p.is_dir()), None)

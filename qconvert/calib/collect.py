"""Collect importance statistics of a Hugging Face model on calibration text: the
layer-wise driver with a callback that sums squared linear-layer inputs.

Each batch's squares are summed in float32 (a few thousand tokens: relative error ~1e-7,
tighter than llama.cpp's own float accumulation over every token), and batches add up in
float64 on the compute device (65k tokens in float32 would lose the low bits of the last
additions; and the sum of whole batches is what torchrun's ranks add, so the order of
batches does not show in the result). Sums come to the host once, at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from .imatrix import ImportanceMatrix
from .layerwise import load_causal_lm, run_layerwise
from .text import calibration_samples
from .world import current, own_windows

log = logging.getLogger(__name__)

BUNDLED_TEXT = "qconvert:pydoc-calibration"  # the dataset name written for the bundled text


class SquareSums:
    """An `on_linear` callback: per linear module path, the sum of x^2 per input channel
    and the number of tokens seen. The accumulator for q, k and v is kept separately even
    though they see the same input: each names its own weight. Their shared input is
    squared and summed once (as are gate's and up's): the last input and its column sums
    are kept, and a call with the same tensor (same storage, shape and version) reuses them."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._last: Optional[tuple[torch.Tensor, int, torch.Tensor]] = None  # input, version, sums

    def __call__(self, layer_idx: int, name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        s = self._column_squares(x)
        if name in self.sums:
            self.sums[name] += s
            self.counts[name] += x.shape[0]
        else:
            self.sums[name], self.counts[name] = s.clone(), x.shape[0]  # s may be shared: own copy

    def _column_squares(self, x: torch.Tensor) -> torch.Tensor:
        """sum over rows of x^2 (float64), computed once per distinct input."""
        last = self._last
        # holding `last` keeps its storage alive, so no other tensor can have its address
        if (last is not None and last[0].data_ptr() == x.data_ptr() and last[0].shape == x.shape
                and last[0].stride() == x.stride() and last[1] == x._version):
            return last[2]
        s = x.square().sum(dim=0).to(torch.float64)
        self._last = (x, x._version, s)
        return s

    def sum_over(self, world) -> None:
        """Add up every rank's sums and counts (calib/world.py), in place: afterwards each
        rank holds what one process would have summed over all windows. A module no
        window of some rank reached (a routed expert) takes part with zeros there."""
        self._last = None  # the last batch's activations are not needed any more
        shapes = world.union({n: tuple(s.shape) for n, s in self.sums.items()})
        if not shapes:
            return
        dev = next(iter(self.sums.values())).device if self.sums else None
        for name, shape in shapes.items():
            if name not in self.sums:
                self.sums[name], self.counts[name] = torch.zeros(shape, dtype=torch.float64, device=dev), 0
        names = list(shapes)
        counts = torch.tensor([self.counts[n] for n in names], dtype=torch.float64)
        world.all_sum([self.sums[n] for n in names] + [counts])
        self.counts = {n: int(c) for n, c in zip(names, counts.tolist())}

    def to_matrix(self, rename: Callable[[str], Optional[str]], **meta) -> ImportanceMatrix:
        """An ImportanceMatrix keyed by rename(module path + '.weight'); modules that
        rename to None are left out (and logged)."""
        from ..arch.moe import expert_key

        m = ImportanceMatrix(**meta)
        dropped = []
        stacks: dict[str, dict[int, str]] = {}  # stacked GGUF name -> expert -> module path
        for name, s in self.sums.items():
            expert = expert_key(name + ".weight")
            key = rename(expert[0] if expert else name + ".weight")
            if key is None:
                dropped.append(name)
            elif expert is not None:
                stacks.setdefault(key, {})[expert[1]] = name
            else:
                m.add(key, s.cpu().numpy(), self.counts[name])
        for key, members in stacks.items():
            # one row per expert, as llama.cpp's imatrix stores an expert stack; calib/experts.py
            # reports every expert, with zero tokens for those no token was routed to
            order = [members[e] for e in sorted(members)]
            if sorted(members) != list(range(len(order))):
                raise AssertionError(f"importance: experts of {key} missing from the calibration pass")
            m.add(key, torch.stack([self.sums[n] for n in order]).cpu().numpy(),
                  [self.counts[n] for n in order])
        if dropped:
            log.warning("importance: %d linear layer(s) have no GGUF name and were left out: %s",
                        len(dropped), ", ".join(dropped[:5]))
        return m


def collect_importance(model_dir: Path | str, *, text_file: Optional[Path | str] = None, n_samples: int = 128,
                       seqlen: int = 512, device: str = "auto", batch_size: int = 8, seed: int = 0,
                       show_progress: Optional[bool] = None) -> ImportanceMatrix:
    """Importance statistics of every linear weight in the decoder layers of `model_dir`,
    keyed by GGUF tensor name, from `n_samples` windows of `seqlen` tokens of calibration
    text (the bundled text unless `text_file` is given)."""
    from transformers import AutoTokenizer

    from ..arch import adapter_for
    from ..source.checkpoint import Checkpoint

    adapter = adapter_for(Checkpoint(model_dir))  # fails early on an architecture we cannot write
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    samples = calibration_samples(tokenizer, text_file=text_file, n_samples=n_samples, seqlen=seqlen, seed=seed)
    world = current()  # under torchrun: this rank's windows, then the sums of all ranks
    samples = own_windows(samples, batch_size, world)
    model = load_causal_lm(model_dir)
    sums = SquareSums()
    run_layerwise(model, samples, on_linear=sums, device=device, batch_size=batch_size,
                  show_progress=show_progress if world.writer else False)
    sums.sum_over(world)
    dataset = str(text_file) if text_file is not None else BUNDLED_TEXT
    return sums.to_matrix(adapter.gguf_name, datasets=[dataset], chunk_count=n_samples, chunk_size=seqlen,
                          arch=adapter.arch_name)

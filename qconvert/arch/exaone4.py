"""EXAONE 4.0 (`Exaone4ForCausalLM`): GGUF arch `exaone4`.

Post-norm blocks (norms after attention and after the MLP), per-head q/k norms, NEOX rope
(nothing permuted), Llama 3.1 rope scaling as a `rope_freqs` table. The 32B model mixes
sliding-window layers (with rope) and global ones (without); llama.cpp runs that hybrid
only for 64-layer models and treats every other depth as all-global with rope, so a
config with a window and another depth is refused rather than converted into a model
that attends differently. (Its default layer count is 30 with no window: the 1.2B.)"""

from __future__ import annotations

import gguf

from ..errors import UnsupportedError
from . import ARCHS
from .base import ArchAdapter
from .layer_kinds import SlidingWindow

PERIOD = 4  # Exaone4Config's sliding_window_pattern and llama.cpp's built-in one
HYBRID_LAYERS = 64  # the only depth llama.cpp's exaone4 graph runs sliding layers for


@ARCHS.register("Exaone4ForCausalLM")
class Exaone4Adapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.EXAONE4
    description = "EXAONE 4.0: post-norm blocks, q/k norms; the 32B's sliding/global hybrid"
    shape_overrides = {"attn_output.weight": ("E", "E")}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        if hp.head_dim * hp.n_head != hp.n_embd:
            raise UnsupportedError(f"{hp.source}: head_dim {hp.head_dim} x {hp.n_head} heads != hidden_size "
                                   f"{hp.n_embd}; llama.cpp's exaone4 graph sizes attn_output as hidden x hidden")
        # with a window, transformers gives sliding layers the window and rope, global ones
        # neither; without one, every layer is global with rope
        self.swa = None
        if hp.integer("sliding_window", lo=1, hi=2**32 - 1, default=None) is not None:
            if hp.n_layers != HYBRID_LAYERS:
                raise UnsupportedError(f"{hp.source}: sliding_window is set in a {hp.n_layers}-layer model; "
                                       f"llama.cpp's exaone4 graph runs the sliding/global hybrid only with "
                                       f"{HYBRID_LAYERS} layers")
            self.swa = SlidingWindow.read(hp, PERIOD)

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        if self.swa is not None:
            self.swa.write(w, PERIOD, swa_by_default=True)

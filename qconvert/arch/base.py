"""The architecture adapter: what one HF `architectures` string means for GGUF.

An adapter turns config.json into GGUF metadata and the checkpoint's tensors into
`SourceTensor`s: the GGUF name, the shape, and the (lazy) transform llama.cpp expects
(Llama's q/k row permutation, Gemma's norm offset...). Shapes never change under a
transform, so the plan can be made from shapes alone."""

from __future__ import annotations

import math
import re
from typing import Iterator, Optional

import gguf
import numpy as np

from ..errors import FormatError, UnsupportedError
from ..source.checkpoint import Checkpoint
from ..source.safetensors_file import TensorHandle
from ..source.source_tensor import SourceTensor, Transform  # noqa: F401  (re-exported)
from .hparams import HParams
from .shape_check import check_layer_count, check_shapes


def unpermute_rope(n_head: int) -> Transform:
    """HF stores q/k rows in rotate-half order (all first halves of a head, then all
    second halves); llama.cpp's Llama graph rotates interleaved pairs. Reorder rows:
    (n_head, 2, half, ...) -> (n_head, half, 2, ...)."""

    def t(w: np.ndarray) -> np.ndarray:
        shape = w.shape
        return np.ascontiguousarray(
            w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
        )

    return t


def add_one(w: np.ndarray) -> np.ndarray:
    """Gemma's RMSNorm multiplies by (1 + weight); llama.cpp multiplies by weight."""
    return w + np.float32(1.0)


class ArchAdapter:
    """Base adapter: a standard decoder-only transformer in HF's usual naming."""

    gguf_arch: gguf.MODEL_ARCH = gguf.MODEL_ARCH.LLAMA
    # HF tensor name suffixes that carry no weights llama.cpp needs
    skip_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)

    # values a family's config class assumes when config.json leaves them out
    config_defaults: dict = {}

    def __init__(self, ckpt: Checkpoint, hf_arch: str) -> None:
        self.ckpt = ckpt
        self.hf_arch = hf_arch
        self.hp = HParams(ckpt.config, str(ckpt.dir / "config.json"), self.config_defaults)
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.gguf_arch]
        # every value checked, and the layer count against the checkpoint, before gguf-py
        # builds its name table: that table has entries for every layer the config claims
        self.hp.check()
        check_layer_count(self.hp, (n for n in ckpt.handles if not self.skip(n)))
        self.name_map = gguf.get_tensor_name_map(self.gguf_arch, self.hp.n_layers)

    # -- metadata -----------------------------------------------------------------------
    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        hp = self.hp
        w.add_block_count(hp.n_layers)
        if hp.context_length is not None:
            w.add_context_length(hp.context_length)
        w.add_embedding_length(hp.n_embd)
        w.add_feed_forward_length(hp.n_ff)
        w.add_head_count(hp.n_head)
        w.add_head_count_kv(hp.n_head_kv)
        eps = hp.norm_eps
        if eps is not None:
            w.add_layer_norm_rms_eps(eps)
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
        w.add_rope_dimension_count(int(hp.head_dim * hp.rotary_fraction))
        w.add_vocab_size(hp.vocab_size)
        self.write_rope(w)

    def write_rope(self, w: gguf.GGUFWriter) -> None:
        rp = self.hp.rope()
        theta = rp.get("rope_theta")
        if theta is not None:
            w.add_rope_freq_base(float(theta))
        rtype = (rp.get("rope_type") or "default").lower()
        factor = rp.get("factor")
        if rtype == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(factor))
        elif rtype == "yarn" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(factor))
            orig = rp.get("original_max_position_embeddings")
            if orig is not None:
                w.add_rope_scaling_orig_ctx_len(int(orig))
            for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                             ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
                             ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                             ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
                if rp.get(key) is not None:
                    add(float(rp[key]))
        elif rtype in ("longrope", "su"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        elif rtype == "llama3":
            pass  # expressed as the rope_freqs tensor (see extra_tensors)
        elif rtype not in ("default", "dynamic"):
            raise UnsupportedError(f"{self.hp.source}: rope type {rtype!r} is not supported for {self.hf_arch}")

    # -- tensors --------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> Optional[str]:
        return self.name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def skip(self, hf_name: str) -> bool:
        if hf_name.endswith(self.skip_suffixes):
            return True
        # tied embeddings: llama.cpp reuses token_embd when output.weight is absent. When
        # the config does not say, a stored lm_head is taken to be the output.
        return hf_name == "lm_head.weight" and bool(self.hp.tied_embeddings)

    def transforms(self, gguf_name: str, hf_name: str) -> list[Transform]:
        return []

    def extra_tensors(self) -> Iterator[SourceTensor]:
        """Tensors llama.cpp needs that the checkpoint does not hold (rope factors...)."""
        rp = self.hp.rope()
        if (rp.get("rope_type") or "").lower() == "llama3":
            factors = llama3_rope_factors(rp, self.hp.head_dim)
            h = TensorHandle("rope_freqs", "F32", factors.shape, lambda: factors, "generated")
            yield SourceTensor("rope_freqs.weight", "(generated)", factors.shape, "F32", h)

    def tensors(self) -> list[SourceTensor]:
        out: list[SourceTensor] = list(self.extra_tensors())
        seen: dict[str, str] = {}
        for hf_name, h in self.ckpt.handles.items():
            if self.skip(hf_name):
                continue
            name = self.gguf_name(hf_name)
            if name is None:
                raise FormatError(
                    f"{h.source}: tensor {hf_name!r} has no llama.cpp name for {self.hf_arch} "
                    f"(gguf arch {self.arch_name}); the checkpoint may be of another architecture"
                )
            if name in seen:
                raise FormatError(f"{h.source}: tensors {seen[name]!r} and {hf_name!r} both map to {name}")
            seen[name] = hf_name
            out.append(SourceTensor(name, hf_name, h.shape, h.dtype, h, self.transforms(name, hf_name)))
        check_shapes(self.hp, out)
        return sorted(out, key=lambda s: _order(s.name))


def _order(name: str) -> tuple:
    """llama.cpp's usual order: embeddings and globals, then blocks in numeric order,
    then output tensors."""
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (2 if name.startswith("output") else 0, 0, name)


def llama3_rope_factors(rp: dict, head_dim: int) -> np.ndarray:
    """Per-frequency scale factors of Llama 3.1's rope scaling, as llama.cpp reads them
    from the rope_freqs tensor: 1 for short wavelengths, `factor` for long ones, and a
    smooth blend between."""
    base = float(rp.get("rope_theta", 10000.0))
    factor = float(rp.get("factor", 8.0))
    lo = float(rp.get("low_freq_factor", 1.0))
    hi = float(rp.get("high_freq_factor", 4.0))
    old_ctx = float(rp.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / float(f)
        if wavelen < old_ctx / hi:
            out.append(1.0)
        elif wavelen > old_ctx / lo:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)

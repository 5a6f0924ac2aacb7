"""The architecture adapter: what one HF `architectures` string means for GGUF.

An adapter turns config.json into GGUF metadata and the checkpoint's tensors into
`SourceTensor`s: the GGUF name, the shape, and the (lazy) transform llama.cpp expects.
It is mostly data: the GGUF architecture (whose gguf-py `TensorNameMap` names the
tensors), a one-line description for the registry, the named transforms it applies
(`tensor_rules`: q/k permutation, norm offsets; transforms.py), the config numbers it
writes (`scalars`; scalars.py), how its fused tensors are shaped (`shape_overrides`), and
whether its weights sit inside a multimodal wrapper (`text_part`). A llama-like family is
a few lines; what no data expresses (sliding-window layers, rope factor tables) is a
method override using the shared pieces (layer_kinds.py, rope.py)."""

from __future__ import annotations

import re
from typing import ClassVar, Iterator, Optional

import gguf

from ..errors import FormatError, UnsupportedError
from ..source.checkpoint import Checkpoint
from ..source.source_tensor import SourceTensor, Transform  # noqa: F401  (re-exported)
from .hparams import HParams
from .rope import generated, llama3_rope_factors  # noqa: F401  (re-exported)
from .scalars import Scalar
from .shape_check import check_layer_count, check_shapes
from .transforms import TensorRule, add_one, unpermute_rope  # noqa: F401  (re-exported)

# a multimodal wrapper's language model: its prefix -> the text model's own prefix
# (transformers 5.x: model.language_model.*; 4.x: language_model.model.*)
TEXT_PART_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                      ("language_model.lm_head.", "lm_head."))
# towers and projectors of a multimodal wrapper: not part of the text GGUF
TOWER_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


class ArchAdapter:
    """Base adapter: a standard decoder-only transformer in HF's usual naming."""

    gguf_arch: gguf.MODEL_ARCH = gguf.MODEL_ARCH.LLAMA
    # one line for `qconvert quantize --help` and the README table
    description: ClassVar[str] = ""
    # HF tensor name suffixes that carry no weights llama.cpp needs
    skip_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # values a family's config class assumes when config.json leaves them out
    config_defaults: dict = {}
    # named transforms, applied in order to the HF tensors each names
    tensor_rules: tuple[TensorRule, ...] = ()
    # config numbers written as GGUF floats
    scalars: tuple[Scalar, ...] = ()
    # "rms" (RMSNorm: layer_norm_rms_epsilon) or "layer" (LayerNorm: layer_norm_epsilon)
    norm: ClassVar[str] = "rms"
    # GGUF tensor (without blk.N.) -> shape in shape_check's symbols, where it differs
    shape_overrides: ClassVar[dict[str, tuple[str, ...]]] = {}
    # weights may sit in a multimodal wrapper (text_config, model.language_model.*)
    text_part: ClassVar[bool] = False

    def __init__(self, ckpt: Checkpoint, hf_arch: str) -> None:
        self.ckpt = ckpt
        self.hf_arch = hf_arch
        self.hp = HParams(ckpt.config, str(ckpt.dir / "config.json"), self.config_defaults)
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.gguf_arch]
        # every value checked, and the layer count against the checkpoint, before gguf-py
        # builds its name table: that table has entries for every layer the config claims
        self.hp.check()
        self.scalar_values = [s.read(self.hp) for s in self.scalars]
        check_layer_count(self.hp, (n for n in ckpt.handles if not self.skip(n)))
        self.name_map = gguf.get_tensor_name_map(self.gguf_arch, self.hp.n_layers)

    # -- metadata -----------------------------------------------------------------------
    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        hp = self.hp
        w.add_block_count(hp.n_layers)
        if self.context_length() is not None:
            w.add_context_length(self.context_length())
        w.add_embedding_length(hp.n_embd)
        w.add_feed_forward_length(hp.n_ff)
        w.add_head_count(hp.n_head)
        w.add_head_count_kv(hp.n_head_kv)
        eps = hp.norm_eps
        if eps is not None:
            (w.add_layer_norm_eps if self.norm == "layer" else w.add_layer_norm_rms_eps)(eps)
        w.add_key_length(hp.head_dim)
        w.add_value_length(hp.head_dim)
        w.add_rope_dimension_count(int(hp.head_dim * hp.rotary_fraction))
        w.add_vocab_size(hp.vocab_size)
        self.write_rope(w)
        for scalar, value in zip(self.scalars, self.scalar_values):
            scalar.write(w, self.arch_name, value)

    def context_length(self) -> Optional[int]:
        return self.hp.context_length

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
    def text_name(self, hf_name: str) -> str:
        """The name inside the language model of a multimodal wrapper (`text_part`)."""
        if self.text_part:
            for old, new in TEXT_PART_PREFIXES:
                if hf_name.startswith(old):
                    return new + hf_name[len(old):]
        return hf_name

    def gguf_name(self, hf_name: str) -> Optional[str]:
        return self.name_map.get_name(self.text_name(hf_name), try_suffixes=(".weight", ".bias"))

    def skip(self, hf_name: str) -> bool:
        if self.text_part and hf_name.startswith(TOWER_PREFIXES):
            return True
        hf_name = self.text_name(hf_name)
        if hf_name.endswith(self.skip_suffixes):
            return True
        # tied embeddings: llama.cpp reuses token_embd when output.weight is absent. When
        # the config does not say, a stored lm_head is taken to be the output.
        return hf_name == "lm_head.weight" and bool(self.hp.tied_embeddings)

    def transforms(self, gguf_name: str, hf_name: str) -> list[Transform]:
        return [r.make(self) for r in self.tensor_rules if r.applies(hf_name)]

    def extra_tensors(self) -> Iterator[SourceTensor]:
        """Tensors llama.cpp needs that the checkpoint does not hold (rope factors...)."""
        rp = self.hp.rope()
        if (rp.get("rope_type") or "").lower() == "llama3":
            yield generated("rope_freqs", llama3_rope_factors(rp, self.hp.head_dim))

    def source_tensors(self, name: str, hf_name: str, h) -> list[SourceTensor]:
        """The GGUF tensor(s) one HF tensor becomes: itself, transformed; a family whose
        fused tensor llama.cpp wants split returns the parts (transforms.split_rows)."""
        return [SourceTensor(name, hf_name, h.shape, h.dtype, h, self.transforms(name, hf_name))]

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
            out.extend(self.source_tensors(name, hf_name, h))
        check_shapes(self.hp, out, self.shape_overrides)
        return sorted(out, key=lambda s: _order(s.name))


def _order(name: str) -> tuple:
    """llama.cpp's usual order: embeddings and globals, then blocks in numeric order,
    then output tensors."""
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (2 if name.startswith("output") else 0, 0, name)

"""gpt-oss (GptOssForCausalLM): GGUF arch `gpt-oss` (llama.cpp's openai-moe graph).

What the family adds to a standard decoder, and where it goes:
  - attention sinks, one learned logit per head (`self_attn.sinks` -> `attn_sinks.weight`),
    and biases on q/k/v/o; the router is a linear layer with a bias (`ffn_gate_inp`);
  - alternating sliding-window (`sliding_window`) and full layers (`layer_types`):
    llama.cpp's default for this arch is sliding on even layers, so only another
    pattern is written (as the per-layer array);
  - yarn rope (`rope_parameters`), written by the base adapter;
  - experts stored stacked per layer, gate and up fused with their rows interleaved
    (gate = even rows, up = odd) and, in the bf16 layout, transposed (in, out): they are
    split into `ffn_gate_exps` / `ffn_up_exps` and transposed to (n_expert, out, in), with
    per-expert biases split the same way;
  - the clamped SwiGLU (swiglu_limit 7.0, sigmoid gain 1.702): llama.cpp hard-codes both,
    so other values are refused.

MXFP4 checkpoints (quantization_config.quant_method "mxfp4", as OpenAI ships gpt-oss) store
each expert projection as `<proj>_blocks` (n_expert, rows, cols/32, 16) uint8 and
`<proj>_scales` (n_expert, rows, cols/32) uint8 E8M0 exponents. These are ggml's MXFP4
blocks with another nibble order, so they are repacked, never requantized (as llama.cpp's
converter does): the GGUF holds the checkpoint's own bits whenever the plan keeps MXFP4 for
the tensor (plan/presets.py: the default for every type; --allow-requantize decodes them
and quantizes to the preset's type instead).

HF byte k of a 32-value group holds values 2k (low nibble) and 2k+1 (high nibble); ggml's
byte j holds values j (low) and j+16 (high), after one exponent byte:

    HF    [v1|v0] [v3|v2] ... [v31|v30]        + scale byte s (separate tensor)
    ggml  s [v16|v0] [v17|v1] ... [v31|v15]

The 4-bit codes mean the same E2M1 values in both (HF's table is ggml's kvalues / 2 with
scale 2**(s-127), ggml's kvalues with half-scale 2**(s-128))."""

from __future__ import annotations

import re
from typing import Callable, Iterator

import gguf
import numpy as np

from .. import kernels
from ..errors import FormatError, UnsupportedError
from ..source.checkpoint import packed_suffixes
from ..source.expert_stack import ExpertStack
from ..source.safetensors_file import TensorHandle
from ..source.source_tensor import SourceTensor
from . import ARCHS
from .base import ArchAdapter, _order

# model.layers.N.mlp.experts.<proj>[_blocks|_scales|_bias]
_EXPERTS = re.compile(r"^(?P<stem>.+\.layers\.\d{1,9}\.mlp\.experts)\.(?P<proj>gate_up_proj|down_proj)"
                      r"(?P<part>_blocks|_scales|_bias)?$")
SWIGLU = {"swiglu_limit": 7.0, "swiglu_alpha": 1.702}  # what llama.cpp's graph computes


def mxfp4_from_hf(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF MXFP4 (..., G, 16) blocks + (..., G) exponents -> ggml MXFP4 rows (..., G * 17)."""
    codes = np.empty((*blocks.shape[:-1], 32), dtype=np.uint8)
    codes[..., 0::2] = blocks & 0x0F
    codes[..., 1::2] = blocks >> 4
    qs = codes[..., :16] | (codes[..., 16:] << np.uint8(4))
    out = np.concatenate([scales[..., None].astype(np.uint8), qs], axis=-1)
    return out.reshape(*blocks.shape[:-2], blocks.shape[-2] * 17)


def dequantize_hf_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF MXFP4 (..., rows, G, 16) + (..., rows, G) -> float32 (..., rows, G * 32)."""
    packed = mxfp4_from_hf(blocks, scales)
    return kernels.decode("MXFP4", packed).reshape(*packed.shape[:-1], blocks.shape[-2] * 32)


@ARCHS.register("GptOssForCausalLM")
class GptOssAdapter(ArchAdapter):
    gguf_arch = gguf.MODEL_ARCH.GPT_OSS
    description = ("gpt-oss: attention sinks, biases, sliding/full layers, yarn, clamped SwiGLU experts; "
                   "MXFP4 checkpoints' experts copied as MXFP4 (no requantization)")
    # GptOssConfig's defaults for keys a config.json may leave out
    config_defaults = {"sliding_window": 128, "num_local_experts": 128, "num_experts_per_tok": 4}

    def __init__(self, ckpt, hf_arch: str) -> None:
        super().__init__(ckpt, hf_arch)
        hp = self.hp
        self.n_expert = hp.integer("num_local_experts", "num_experts", lo=1, hi=1 << 16)
        self.n_expert_used = hp.integer("num_experts_per_tok", "experts_per_token", lo=1, hi=self.n_expert)
        self.n_swa = hp.integer("sliding_window", lo=1)
        for key, value in SWIGLU.items():
            got = hp.number(key, lo=0.0, default=value)
            if got != value:
                raise UnsupportedError(f"{hp.source}: {key} is {got}; llama.cpp's gpt-oss graph computes the "
                                       f"expert activation with {key} {value} only")
        self.is_swa = self._layer_pattern()
        self.mxfp4 = packed_suffixes(ckpt.config) == ("_blocks", "_scales")

    def _layer_pattern(self) -> list[bool]:
        kinds = self.hp.get("layer_types")
        n = self.hp.n_layers
        if kinds is None:
            return [i % 2 == 0 for i in range(n)]
        ok = {"sliding_attention": True, "full_attention": False}
        if not isinstance(kinds, list) or len(kinds) != n or any(k not in ok for k in kinds):
            raise self.hp.bad("layer_types", kinds, f"a list of {n} 'sliding_attention' / 'full_attention'")
        return [ok[k] for k in kinds]

    # -- metadata -----------------------------------------------------------------------
    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        w.add_expert_feed_forward_length(self.hp.n_ff)
        w.add_sliding_window(self.n_swa)
        if self.is_swa != [i % 2 == 0 for i in range(len(self.is_swa))]:  # not llama.cpp's default
            w.add_sliding_window_pattern(self.is_swa)

    # -- tensors --------------------------------------------------------------------------
    def gguf_name(self, hf_name: str):
        name = super().gguf_name(hf_name)
        # llama.cpp loads the sinks as attn_sinks.weight; HF's parameter has no suffix
        return f"{name}.weight" if name is not None and hf_name.endswith(".sinks") else name

    def skip(self, hf_name: str) -> bool:
        return bool(_EXPERTS.match(hf_name)) or super().skip(hf_name)

    def tensors(self) -> list[SourceTensor]:
        groups: dict[str, dict[str, str]] = {}
        for hf_name in self.ckpt.handles:
            m = _EXPERTS.match(hf_name)
            if m is None and ".mlp.experts." in hf_name:
                raise FormatError(f"{self.ckpt.handles[hf_name].source}: tensor {hf_name!r} is not a gpt-oss "
                                  "expert tensor (gate_up_proj / down_proj, with _bias, or _blocks/_scales)")
            if m is not None:
                groups.setdefault(m["stem"], {})[m["proj"] + (m["part"] or "")] = hf_name
        layers = {int(re.search(r"\.layers\.(\d+)\.mlp\.experts$", stem).group(1)) for stem in groups}
        missing = [i for i in range(self.hp.n_layers) if i not in layers]
        if missing:
            raise FormatError(f"{self.hp.source}: no expert tensors for layer(s) {', '.join(map(str, missing[:5]))} "
                              "(model.layers.N.mlp.experts.*); incomplete download?")
        out = super().tensors()
        for stem, parts in groups.items():
            out += list(self._experts(stem, parts))
        return sorted(out, key=lambda s: _order(s.name))

    def _experts(self, stem: str, parts: dict[str, str]) -> Iterator[SourceTensor]:
        """The layer's expert tensors, each a stack of per-expert slabs read one at a time."""
        packed = self.mxfp4 and "down_proj_blocks" in parts
        n_embd, n_ff = self.hp.n_embd, self.hp.n_ff
        for proj, rows, cols in (("gate_up_proj", 2 * n_ff, n_embd), ("down_proj", n_embd, n_ff)):
            halves = ("gate_proj", "up_proj") if proj == "gate_up_proj" else ("down_proj",)
            make = self._packed_slabs if packed else self._float_slabs
            slab = make(stem, proj, parts, rows, cols, len(halves))
            for k, hf_proj in enumerate(halves):
                yield self._stack(f"{stem}.{hf_proj}.weight", f"{stem}.{proj}", slab(k))
            yield from self._bias(stem, proj, parts, rows, halves)

    def _stack(self, gguf_key: str, hf_name: str, slabs: list[SourceTensor]) -> ExpertStack:
        stack = ExpertStack.of(self.gguf_name(gguf_key), hf_name, slabs)
        if slabs[0].packed_type:
            stack.packed_type = slabs[0].packed_type
            stack.packed_loader = lambda: np.concatenate([s.load_packed() for s in slabs])
        return stack

    def _need(self, stem: str, parts: dict[str, str], key: str, shape: tuple[int, ...]) -> TensorHandle:
        hf = parts.get(key)
        if hf is None:
            raise FormatError(f"{self.hp.source}: the checkpoint has no {stem}.{key} "
                              f"(have: {', '.join(sorted(parts))}); incomplete download?")
        h = self.ckpt.handles[hf]
        if tuple(h.shape) != shape:
            raise FormatError(f"{h.source}: tensor {hf!r} has shape {list(h.shape)}, but the config "
                              f"(num_local_experts, hidden_size, intermediate_size) says {list(shape)}")
        return h

    def _float_slabs(self, stem, proj, parts, rows, cols, step) -> Callable[[int], list[SourceTensor]]:
        """bf16 layout: (n_expert, in, out); expert e's rows k, k+step, ... of (out, in),
        read a slice of them at a time (columns of every stored row) when the handle can."""
        h = self._need(stem, parts, proj, (self.n_expert, cols, rows))
        shape = (rows // step, cols)

        def expert(e: int) -> np.ndarray:  # (in, out) as float32, only expert e read
            return h.rows(e, e + 1)[0] if h.rows is not None else h.load()[e]

        def part_rows(k: int, e: int, a: int, b: int) -> np.ndarray:  # rows a..b of part k, (b - a, in)
            return h.region(e, slice(None), slice(k + step * a, k + step * b, step), transpose=True)

        def slab(k: int, e: int) -> SourceTensor:
            if h.region is None:
                load, read = (lambda: np.ascontiguousarray(expert(e)[:, k::step].T)), None  # noqa: E731
            else:
                read = lambda a, b: part_rows(k, e, a, b)  # noqa: E731
                load = lambda: read(0, shape[0])  # noqa: E731
            return SourceTensor(h.name, h.name, shape, h.dtype,
                                TensorHandle(h.name, h.dtype, shape, load, h.source, read))

        return lambda k: [slab(k, e) for e in range(self.n_expert)]

    def _packed_slabs(self, stem, proj, parts, rows, cols, step) -> Callable[[int], list[SourceTensor]]:
        """MXFP4 layout: expert e's rows k, k+step, ... repacked to ggml blocks; floats decoded."""
        if cols % 32:
            raise FormatError(f"{self.hp.source}: {stem}.{proj}: rows of {cols} values are not whole 32-value "
                              "MXFP4 blocks")
        e, g = self.n_expert, cols // 32
        hb = self._need(stem, parts, f"{proj}_blocks", (e, rows, g, 16))
        hs = self._need(stem, parts, f"{proj}_scales", (e, rows, g))
        shape = (rows // step, cols)

        def ggml_rows(k: int, i: int, a: int, b: int) -> np.ndarray:
            """Rows a..b of expert i's part k; only their stored rows read, released after."""
            first, last = k + step * a, k + step * (b - 1) + 1
            blocks = self.ckpt.raw_rows(hb.name, first, last, expert=i)
            scales = self.ckpt.raw_rows(hs.name, first, last, expert=i)
            return mxfp4_from_hf(blocks[::step], scales[::step])

        def slab(k: int, i: int) -> SourceTensor:
            packed = lambda: ggml_rows(k, i, 0, shape[0])  # noqa: E731
            read = lambda a, b: kernels.decode("MXFP4", ggml_rows(k, i, a, b)).reshape(b - a, cols)  # noqa: E731
            load = lambda: read(0, shape[0])  # noqa: E731
            return SourceTensor(hb.name, hb.name, shape, "MXFP4",
                                TensorHandle(hb.name, "MXFP4", shape, load, hb.source, read),
                                packed_type="MXFP4", packed_loader=packed)

        return lambda k: [slab(k, i) for i in range(e)]

    def _bias(self, stem, proj, parts, rows, halves) -> Iterator[SourceTensor]:
        """(n_expert, rows) biases, split like their weights (small: read whole)."""
        h = self._need(stem, parts, f"{proj}_bias", (self.n_expert, rows))
        step = len(halves)
        shape = (self.n_expert, rows // step)
        for k, hf_proj in enumerate(halves):
            load = lambda k=k: np.ascontiguousarray(h.load()[:, k::step])  # noqa: E731
            yield SourceTensor(self.gguf_name(f"{stem}.{hf_proj}.bias"), h.name, shape, h.dtype,
                               TensorHandle(h.name, h.dtype, shape, load, h.source))

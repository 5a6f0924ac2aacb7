"""Quantized Hugging Face checkpoints that transformers loads as they are: the decoder
layers' Linear weights in compressed-tensors `pack-quantized` form (layout in
compressed_tensors.py), everything else (embeddings, lm_head, norms, biases) copied
byte for byte in its original dtype, plus config.json with `quantization_config`,
generation_config.json and the tokenizer files.

    write_quantized_safetensors("Llama-3.2-1B", "Llama-3.2-1B-W4A16-G128", bits=4, group_size=128)
    AutoModelForCausalLM.from_pretrained("Llama-3.2-1B-W4A16-G128")   # needs compressed-tensors

read -> plan (from shapes alone: which tensors are quantized, every output tensor's
dtype and shape, the shards) -> one tensor at a time: quantize, pack, write -> rename the
finished directory into place.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np
import torch

from ..errors import InputError, ShapeError, UnsupportedError
from ..progress import reporter
from ..schemes.absmax import check_grid, check_grid_holds, dequantize, rtn_grid
from ..source.checkpoint import Checkpoint, _shard_files, packed_suffixes
from ..source.safetensors_file import FLOAT_DTYPES, SafetensorsFile
from . import compressed_tensors as ct
from .atomic_dir import atomic_dir
from .output_check import check_output_dir
from .safetensors_writer import Entry, ShardedWriter

DEFAULT_SHARD_BYTES = 2 * 1024**3
# The decoder layers' projections. Embeddings, lm_head (tied or not), norms and routers
# stay in their original dtype: they are small next to the layers, and lm_head / the
# embeddings are where low bits hurt most.
QUANTIZED_MODULE = r".*layers\.\d+\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
COPIED_FILES = ("generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "added_tokens.json",
                "vocab.json", "merges.txt")
SCALE_DTYPES = {"bf16": "BF16", "bfloat16": "BF16", "f16": "F16", "fp16": "F16", "float16": "F16",
                "f32": "F32", "fp32": "F32", "float32": "F32", "float64": "F32"}
TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}

# anything with qweight / scales / zeros / g_idx as GPTQResult and GridQuant have them
Result = object
Supplier = Union[Mapping[str, Result], Callable[[str], Optional[Result]]]


@dataclass
class Item:
    hf_name: str
    shape: tuple[int, ...]
    src_dtype: str
    quantize: bool
    reason: str
    outputs: list[Entry] = field(default_factory=list)
    group_size: int = 0  # of a quantized projection: the plan's, or the fallback that divides its width
    out_dtype: str = ""  # of a dense tensor: the dtype written (the stored one, or the config's)


@dataclass
class SafetensorsPlan:
    items: list[Item]
    bits: int
    group_size: int
    sym: bool
    scale_dtype: str  # safetensors dtype name of the stored scales
    ignore: list[str]  # lm_head (tied or not) and projections kept dense

    @property
    def targets(self) -> list[str]:
        # exactly the projections, not "Linear": a Linear we keep dense (an MoE router, a
        # vision tower's) would otherwise be expected in packed form and fail to load
        return ["re:" + QUANTIZED_MODULE]

    @property
    def fallback_groups(self) -> dict[int, list[str]]:
        """group size -> the modules whose width took it instead of the plan's group size."""
        out: dict[int, list[str]] = {}
        for it in self.items:
            if it.quantize and it.group_size != self.group_size:
                out.setdefault(it.group_size, []).append(it.hf_name[: -len(".weight")])
        return out

    @property
    def fallbacks(self) -> list[Item]:
        return [it for it in self.items if it.quantize and it.group_size != self.group_size]

    @property
    def entries(self) -> list[Entry]:
        return [e for it in self.items for e in it.outputs]

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


def resolve_scale_dtype(name: Optional[str], config: dict, handles) -> str:
    """The safetensors dtype of the stored scales. transformers builds each compressed
    Linear's scale in the dtype it loads the model in (the config's `dtype` by default)
    and casts the file's scales into it, so by default scales are stored in that dtype:
    then the weights it decodes are exactly ours."""
    if name is None:
        name = str(config.get("dtype") or config.get("torch_dtype") or "")
    if not name:  # no dtype in the config: the checkpoint's own (F64 gets F32)
        first = next((h.dtype for h in handles if len(h.shape) == 2), "F32")
        name = {"BF16": "bf16", "F16": "f16"}.get(first, "f32")
    try:
        return SCALE_DTYPES[name.lower().removeprefix("torch.")]
    except KeyError:
        raise UnsupportedError(f"scale dtype {name!r}: choose bfloat16, float16 or float32") from None


MIN_FALLBACK_GROUP = 16


def fit_group_size(n_in: int, group_size: int) -> int:
    """The group size a projection with `n_in` input columns gets: the plan's when it
    divides n_in, else the largest of group_size/2, /4, ... (down to 16) that does, else
    one scale per output channel (-1), which is also what a group wider than the row means. Halving keeps the power-of-two sizes GPU kernels
    (vLLM's Marlin and Machete) take: 576 columns and groups of 128 give groups of 64."""
    if group_size == -1 or n_in % group_size == 0:
        return group_size
    if group_size > n_in:  # one group would span the row: that is one scale per channel
        return -1
    g = group_size // 2
    while g >= MIN_FALLBACK_GROUP:
        if n_in % g == 0:
            return g
        g //= 2
    return -1


def dense_dtype(stored: str, config: dict) -> str:
    """The dtype a tensor kept dense is written in: the model's own (config.json's
    `dtype` / `torch_dtype`) when the checkpoint stores it wider — a float32 file of a
    bfloat16 model — so the quantized checkpoint is not mostly float32; never widened."""
    want = SCALE_DTYPES.get(str(config.get("dtype") or config.get("torch_dtype") or "").lower()
                            .removeprefix("torch."))
    if stored not in FLOAT_DTYPES:  # decoded from a quantized checkpoint (FP8, GPTQ...): never its codes
        return want if want in ("BF16", "F16") else "F32"
    return want if stored == "F32" and want in ("BF16", "F16") else stored


def _group_label(g: int) -> str:
    return "per channel" if g == -1 else f"groups of {g}"


def plan_safetensors(ckpt: Checkpoint, *, bits: int, group_size: int, sym: bool,
                     scale_dtype: Optional[str] = None, no_fallback: bool = False) -> SafetensorsPlan:
    """Which tensors are quantized and how. A projection whose width the group size does
    not divide gets `fit_group_size`'s group (no_fallback: an error naming it)."""
    check_grid(bits, group_size)
    sd = resolve_scale_dtype(scale_dtype, ckpt.config, ckpt.handles.values())
    items: list[Item] = []
    ignore = ["lm_head"]
    mxfp4 = packed_suffixes(ckpt.config) == ("_blocks", "_scales")
    for name, h in ckpt.handles.items():
        if mxfp4 and name.endswith(("_blocks", "_scales")):
            if name.endswith("_blocks"):  # its _scales go with it
                items.append(_decoded_mxfp4_item(name, tuple(h.shape), ckpt.config))
            continue
        module = name[:-len(".weight")] if name.endswith(".weight") else None
        it = Item(name, tuple(h.shape), h.dtype, False, "kept: not a decoder-layer projection")
        if module is not None and len(h.shape) == 2 and re.fullmatch(QUANTIZED_MODULE, module):
            n_in = h.shape[1]
            g = fit_group_size(n_in, group_size)
            if g != group_size and no_fallback:
                raise InputError(f"{name}: {n_in} input columns are not a multiple of --group-size {group_size} "
                                 f"(it would get {_group_label(g)}); choose a group size that divides every "
                                 "projection's width, or drop --no-fallback")
            it.quantize, it.group_size = True, g
            it.reason = f"{bits}-bit {_group_label(g)}"
            if g != group_size:
                it.reason += f" ({n_in} input columns are not a multiple of {group_size})"
            it.outputs = [Entry(*t) for t in ct.module_tensors(module, h.shape, bits, g, sym, sd)]
        if not it.quantize:
            it.out_dtype = dense_dtype(h.dtype, ckpt.config) if len(h.shape) else h.dtype
            it.outputs = [Entry(name, it.out_dtype, tuple(h.shape))]
        items.append(it)
    return SafetensorsPlan(items, bits, group_size, sym, sd, ignore)


def _decoded_mxfp4_item(blocks_name: str, shape: tuple[int, ...], config: dict) -> Item:
    """gpt-oss's MXFP4 experts (`<param>_blocks` (E, out, in/32, 16) + `_scales`): written
    decoded, as the dense (E, in, out) parameter transformers' bf16 gpt-oss holds (no
    compressed-tensors format describes MXFP4 blocks beside int-N projections)."""
    stem = blocks_name[:-len("_blocks")]
    e, rows, g, _ = shape
    out_shape = (e, g * 32, rows)
    dt = dense_dtype("MXFP4", config)
    return Item(stem, out_shape, "MXFP4", False, "MXFP4 experts decoded, kept dense",
                outputs=[Entry(stem, dt, out_shape)], out_dtype=dt)


def _decoded_mxfp4(ckpt: Checkpoint, it: Item) -> np.ndarray:
    from ..arch.gpt_oss import dequantize_hf_mxfp4

    w = dequantize_hf_mxfp4(ckpt.raw(it.hf_name + "_blocks"), ckpt.raw(it.hf_name + "_scales"))
    t = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 2, 1))).to(TORCH_DTYPES[it.out_dtype])
    return t.view(torch.int16).numpy().view(np.uint16) if it.out_dtype == "BF16" else t.numpy()


def _supplier(scheme: str, quantized: Optional[Supplier], plan: SafetensorsPlan) -> Callable[[str], Optional[Result]]:
    if scheme.lower() not in ("absmax", "rtn"):
        raise UnsupportedError(f"safetensors scheme {scheme!r}: the writer rounds with 'absmax' "
                               "(min-max when asymmetric); pass GPTQ results through `quantized`")
    if quantized is None:
        return lambda name: None
    if callable(quantized):
        return quantized
    unknown = sorted(set(quantized) - {it.hf_name for it in plan.items if it.quantize})
    if unknown:
        raise InputError(f"quantized results given for tensors the plan does not quantize: {', '.join(unknown[:5])}")
    return quantized.get


def _check_result(name: str, r: Result, shape: tuple[int, int], plan: SafetensorsPlan, group_size: int) -> None:
    n_out, n_in = shape
    gs = n_in if group_size == -1 else group_size
    n_groups = n_in // gs
    what = f"{name}: quantized result"
    if tuple(r.qweight.shape) != shape:
        raise ShapeError(f"{what} has codes of shape {tuple(r.qweight.shape)}, the weight is {shape}")
    if tuple(r.scales.shape) != (n_out, n_groups) or tuple(r.zeros.shape) != (n_out, n_groups):
        raise ShapeError(f"{what} has scales {tuple(r.scales.shape)} / zeros {tuple(r.zeros.shape)}; "
                         f"group size {group_size} needs ({n_out}, {n_groups})")
    if int(r.qweight.max()) >= 2**plan.bits or int(r.zeros.max()) >= 2**plan.bits or int(r.zeros.min()) < 0:
        raise ShapeError(f"{what} has codes or zero points outside 0..{2**plan.bits - 1} ({plan.bits} bits)")
    if plan.sym and bool((r.zeros != 2 ** (plan.bits - 1)).any()):
        raise InputError(f"{what} is asymmetric (zero points other than {2 ** (plan.bits - 1)}); "
                         "write it with sym=False")
    if not torch.equal(torch.as_tensor(r.g_idx).long().cpu(), torch.arange(n_in) // gs):
        raise UnsupportedError(
            f"{what} has a permuted g_idx (act-order with dynamic groups), which compressed-tensors "
            "pack-quantized cannot store; quantize with static_groups=True (actorder 'weight')")


def quantize_item(it: Item, ckpt: Checkpoint, plan: SafetensorsPlan, supply: Callable[[str], Optional[Result]],
                  *, with_dequant: bool = False) -> tuple[dict[str, np.ndarray], Optional[torch.Tensor]]:
    """One planned Linear -> (its packed arrays by output name, and with_dequant: our
    dequantized weight in float32, computed from the scales as stored)."""
    sd_torch = TORCH_DTYPES[plan.scale_dtype]
    r = supply(it.hf_name)
    if r is None:
        w = ckpt[it.hf_name].load()  # the HF weight as stored, widened to float32 (NaN/Inf checked)
        check_grid_holds(it.hf_name, w, plan.bits, sd_torch)
        W = torch.from_numpy(w)
        r = rtn_grid(W, bits=plan.bits, group_size=it.group_size, sym=plan.sym, scale_dtype=sd_torch)
        del W
    else:
        _check_result(it.hf_name, r, it.shape, plan, it.group_size)
    qweight = torch.as_tensor(r.qweight).cpu().to(torch.uint8)
    zeros = torch.as_tensor(r.zeros).cpu().to(torch.int32)
    scales = torch.as_tensor(r.scales).cpu().to(sd_torch)
    deq = None
    if with_dequant:
        gs = it.shape[1] if it.group_size == -1 else it.group_size
        deq = dequantize(qweight, scales.to(torch.float32), zeros, torch.arange(it.shape[1]) // gs)
    raw_scales = scales.view(torch.int16).numpy().view(np.uint16) if plan.scale_dtype == "BF16" else scales.numpy()
    arrays = ct.module_arrays(it.hf_name[:-len(".weight")], qweight.numpy(), raw_scales, zeros.numpy(),
                              plan.bits, plan.sym)
    return arrays, deq


def _checkpoint(model) -> Checkpoint:
    if isinstance(model, Checkpoint):
        return model
    if getattr(model, "is_gguf", False):
        raise InputError(f"{model.path}: safetensors output needs a Hugging Face model directory, not a GGUF file")
    path = Path(getattr(model, "path", model))  # a Source (open_hf) or a directory
    if path.is_file():
        raise InputError(f"{path}: safetensors output needs a Hugging Face model directory")
    return Checkpoint(path)


def write_quantized_safetensors(model, out_dir: Union[str, Path], *, bits: int = 4, group_size: int = 128,
                                sym: bool = True, scheme: str = "absmax", quantized: Optional[Supplier] = None,
                                shard_bytes: int = DEFAULT_SHARD_BYTES, force: bool = False,
                                scale_dtype: Optional[str] = None, actorder: Optional[str] = None,
                                progress: Optional[bool] = False, no_fallback: bool = False) -> Path:
    """Write a quantized copy of an HF model directory (path, Checkpoint or Source) to
    out_dir. Decoder-layer projections are rounded with `scheme` unless `quantized`
    (hf name -> GPTQResult-like, or a callable returning one or None) supplies them.
    group_size -1: one scale per output channel. Returns out_dir."""
    ckpt = _checkpoint(model)
    out = Path(out_dir)
    if actorder not in (None, "weight", "static"):
        raise UnsupportedError(f"actorder {actorder!r}: compressed-tensors reads 'weight' (act-order with static "
                               "groups, g_idx = column // group_size) or none")
    plan = plan_safetensors(ckpt, bits=bits, group_size=group_size, sym=sym, scale_dtype=scale_dtype,
                            no_fallback=no_fallback)
    supply = _supplier(scheme, quantized, plan)
    out = check_output_dir(out, force, input_dir=ckpt.dir)  # a link's target; never the model or what holds it
    config = dict(ckpt.config)
    config["quantization_config"] = ct.quantization_config(bits=bits, group_size=group_size, sym=sym,
                                                           targets=plan.targets, ignore=plan.ignore,
                                                           actorder=actorder, fallback_groups=plan.fallback_groups)
    with atomic_dir(out) as tmp, reporter(progress) as rep:
        rep.start(f"W{bits} {ct.FORMAT}", len(plan.items))
        writer = ShardedWriter(tmp, plan.entries, shard_bytes)
        try:
            for it in plan.items:
                if it.quantize:
                    arrays, _ = quantize_item(it, ckpt, plan, supply)
                    for name, arr in arrays.items():
                        writer.write(name, arr)
                elif it.src_dtype == "MXFP4":
                    writer.write(it.hf_name, _decoded_mxfp4(ckpt, it))
                    arrays = None
                elif it.out_dtype == it.src_dtype:  # the stored bytes in the original dtype
                    f = _file_of(ckpt, it.hf_name)
                    writer.write(it.hf_name, f.raw(it.hf_name))
                    f.release(it.hf_name)
                    arrays = None
                else:  # a float32 copy of a bf16/f16 model: written in the model's dtype
                    writer.write(it.hf_name, _narrowed(ckpt, it))
                    arrays = None
                del arrays
                rep.advance(1, it.hf_name)
            writer.close()
        finally:
            writer.abort()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in COPIED_FILES:
            if (ckpt.dir / name).is_file():
                shutil.copy2(ckpt.dir / name, tmp / name)
    return out


def _narrowed(ckpt: Checkpoint, it: Item) -> np.ndarray:
    """A float32 tensor as the raw bytes of `it.out_dtype` (BF16 as uint16, round to nearest
    even, as torch casts). A value F16 cannot hold is an error naming the tensor."""
    w = torch.from_numpy(ckpt[it.hf_name].load())
    t = w.to(TORCH_DTYPES[it.out_dtype])
    if it.out_dtype == "F16" and bool(torch.isinf(t).any()) and not bool(torch.isinf(w).any()):
        raise UnsupportedError(f"{it.hf_name}: values up to {float(w.abs().max()):.4g} do not fit float16, the "
                               "model's dtype in config.json; set its dtype to bfloat16 or float32")
    return t.view(torch.int16).numpy().view(np.uint16) if it.out_dtype == "BF16" else t.numpy()


def _file_of(ckpt: Checkpoint, name: str) -> SafetensorsFile:
    return next(f for f in ckpt.files if name in f.header)


def dequantized_state_dict(model, *, bits: int = 4, group_size: int = 128, sym: bool = True,
                           scheme: str = "absmax", quantized: Optional[Supplier] = None,
                           scale_dtype: Optional[str] = None) -> dict[str, torch.Tensor]:
    """hf name -> float32 weight as the written checkpoint decodes it, for every tensor
    write_quantized_safetensors (same arguments) quantizes; computed from the codes and
    rounded scales in memory, not read back from a file."""
    ckpt = _checkpoint(model)
    plan = plan_safetensors(ckpt, bits=bits, group_size=group_size, sym=sym, scale_dtype=scale_dtype)
    supply = _supplier(scheme, quantized, plan)
    return {it.hf_name: quantize_item(it, ckpt, plan, supply, with_dequant=True)[1]
            for it in plan.items if it.quantize}


def read_dequantized(out_dir: Union[str, Path]) -> dict[str, np.ndarray]:
    """Read a pack-quantized checkpoint (ours) back: module.weight -> float32, decoded
    with our own unpacker (the NumPy inverse of the writer's packing)."""
    ckpt_dir = Path(out_dir)
    qc = json.loads((ckpt_dir / "config.json").read_text())["quantization_config"]
    w = qc["config_groups"]["group_0"]["weights"]
    bits, sym = int(w["num_bits"]), bool(w["symmetric"])
    where: dict[str, SafetensorsFile] = {}
    for p in _shard_files(ckpt_dir)[0]:  # not Checkpoint: it admits float tensors only
        f = SafetensorsFile(p)
        where.update(dict.fromkeys(f.names(), f))

    def get(name: str) -> np.ndarray:
        return where[name].raw(name)

    out = {}
    for name in where:
        if not name.endswith(".weight_packed"):
            continue
        prefix = name[:-len(".weight_packed")]
        n_out, n_in = (int(x) for x in get(f"{prefix}.weight_shape"))
        s = get(f"{prefix}.weight_scale")
        bf16 = where[f"{prefix}.weight_scale"].header[f"{prefix}.weight_scale"]["dtype"] == "BF16"
        scales = (s.astype(np.uint32) << 16).view(np.float32) if bf16 else s.astype(np.float32)
        codes = ct.unpack_int32(get(name), bits, n_in)
        if sym:
            zeros = np.full(scales.shape, 2 ** (bits - 1), dtype=np.int32)
        else:
            zeros = ct.unpack_int32(np.ascontiguousarray(get(f"{prefix}.weight_zero_point").T), bits, n_out).T
        g = np.arange(n_in) // (n_in // scales.shape[1])
        out[f"{prefix}.weight"] = scales[:, g] * (codes.astype(np.float32) - zeros[:, g].astype(np.float32))
    return out

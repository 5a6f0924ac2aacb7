"""What the memory model needs to know of a model, read without touching weights: layers,
KV heads and head sizes, sliding-window layers, trained context and vocabulary, from
config.json (transformers 4.x/5.x spellings) or a GGUF header; and its parameter count
from safetensors headers."""

from __future__ import annotations

import json
import math
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, InputError
from .units import MAX_LAYERS
from ..source.checkpoint import weights_held
from ..source.safetensors_file import read_header, validate_header
from ..source.input_file import stat_input
from ..source.shard_index import read_index, shard_paths

# --- model shape and KV cache ---------------------------------------------------------------

def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, context: int,
                   bytes_per_elem: float = 2) -> int:
    """Bytes of a full-attention KV cache: 2 (K and V) * layers * kv_heads * head_dim *
    context * bytes per element (2 for F16; a block type's bits/8, e.g. 34/32 for Q8_0)."""
    return math.ceil(2 * n_layers * n_kv_heads * head_dim * context * bytes_per_elem)


@dataclass(frozen=True)
class ModelShape:
    """What sizes a KV cache. The three leading fields describe a uniform model; the rest
    refine it where a model's config says more (all optional, so `ModelShape(32, 8, 128)`
    stays a full-attention model with K and V heads of 128):

    kv_heads_per_layer  per-layer KV head counts (GGUF `head_count_kv` arrays; 0 = no KV)
    key_length/value_length  K and V head sizes when they differ from head_dim
    sliding_window      tokens a sliding-window layer attends to (None: no sliding layers)
    sliding_layers      per layer, True where the layer uses the sliding window
    max_context         the model's trained context (HF max_position_embeddings,
                        GGUF {arch}.context_length), caps "longest context that fits"
    n_vocab             vocabulary size (sizes the runtime's logits buffer)
    """

    n_layers: int
    n_kv_heads: int
    head_dim: int
    kv_heads_per_layer: tuple[int, ...] | None = None
    key_length: int | None = None
    value_length: int | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None
    max_context: int | None = None
    n_vocab: int | None = None

    def layers(self) -> list[tuple[int, int, int, bool]]:
        """Per layer: (KV heads, K head size, V head size, uses the sliding window)."""
        heads = self.kv_heads_per_layer or (self.n_kv_heads,) * self.n_layers
        k = self.key_length or self.head_dim
        v = self.head_dim if self.value_length is None else self.value_length  # 0: no V cache (MLA)
        swa = self.sliding_layers if self.sliding_window else None
        return [(h, k, v, bool(swa[i]) if swa else False) for i, h in enumerate(heads)]

    @property
    def n_sliding_layers(self) -> int:
        return sum(1 for *_, swa in self.layers() if swa)


# llama.cpp's sliding-window period per architecture when a file names none
# (`load_swa_pattern(ml, n)` in src/models/<arch>.cpp): with period n, layer il slides
# unless il % n == n - 1, so Gemma 3 has five sliding layers, then one global one.
DEFAULT_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma3_text": 6, "cohere2": 4}


def _swa_from_period(n_layers: int, period: int) -> tuple[bool, ...]:
    # period 0 means every layer slides (llama.cpp's set_swa_pattern(0))
    return tuple(period == 0 or i % period < period - 1 for i in range(n_layers))


def model_shape_from_config(cfg: dict, where: str = "config.json") -> ModelShape:
    """Layers, KV heads, head size, sliding-window layout, trained context and vocabulary
    from a Hugging Face config dict. Multimodal configs (Gemma 3) keep the language model
    under "text_config", which wins over top-level keys.

    Sliding layers: `layer_types` ("sliding_attention"/"full_attention") when present, else
    `sliding_window_pattern` (period, as Gemma 3 4.x configs spell it), else llama.cpp's
    default period for the model type (DEFAULT_SWA_PERIOD: gemma2 2, gemma3 6). A window
    with none of these (Mistral v0.1, Qwen2's disabled one) is ignored: llama.cpp gives
    those models a full cache, so every layer counts at full context."""
    c = {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg

    def need(key: str) -> int:
        v = c.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{where}: has no usable {key!r}; pass --layers/--kv-heads/--head-dim instead")
        return v

    def opt(key: str) -> int | None:
        v = c.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    layers = need("num_hidden_layers")
    kv = need("num_key_value_heads") if c.get("num_key_value_heads") is not None else need("num_attention_heads")
    if c.get("head_dim") is not None:
        hd = need("head_dim")
    else:
        hd = need("hidden_size") // need("num_attention_heads")
    k_len = v_len = None
    if opt("kv_lora_rank") and opt("qk_rope_head_dim"):
        # DeepSeek's MLA: llama.cpp caches each token's compressed vector and rope part as
        # one K head (kv_lora_rank + qk_rope_head_dim) and no V (it reads V out of K)
        kv, hd = 1, c["kv_lora_rank"] + c["qk_rope_head_dim"]
        k_len, v_len = hd, 0
    window, swa = opt("sliding_window"), None
    if window and c.get("use_sliding_window") is not False:
        lt = c.get("layer_types")
        if isinstance(lt, list) and len(lt) == layers:
            swa = tuple(t == "sliding_attention" for t in lt)
        elif opt("sliding_window_pattern"):
            swa = _swa_from_period(layers, c["sliding_window_pattern"])
        elif c.get("model_type") in DEFAULT_SWA_PERIOD:
            swa = _swa_from_period(layers, DEFAULT_SWA_PERIOD[c["model_type"]])
    if not swa or not any(swa):
        window, swa = None, None
    return ModelShape(layers, kv, hd, key_length=k_len, value_length=v_len, sliding_window=window,
                      sliding_layers=swa, max_context=opt("max_position_embeddings"), n_vocab=opt("vocab_size"))


def model_shape_from_dir(model_dir: str | Path) -> ModelShape:
    """`model_shape_from_config` of a directory's config.json."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError
    except FileNotFoundError:
        raise InputError(f"{path}: not found; --model must be a Hugging Face directory (config.json) "
                         "or a .gguf file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError(f"{path}: not a readable JSON object") from None
    return model_shape_from_config(cfg, str(path))


def params_from_dir(model_dir: str | Path) -> int:
    """Elements of every tensor in the directory's safetensors (index shards or
    model.safetensors), counted from the headers. Tied weights stored once count once."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        # shard names checked as plain files beside the index: nothing outside the directory is read
        files = shard_paths(index, read_index(index)[0])
    elif (d / "model.safetensors").is_file():
        files = [d / "model.safetensors"]
    else:
        raise InputError(f"{d}: no model.safetensors or model.safetensors.index.json to count parameters "
                         "from; pass --params")
    config = _json_or_empty(d / "config.json")
    total = 0
    for f in files:
        header, data_start = read_header(f)
        entries, _ = validate_header(f, header, data_start, f.stat().st_size)  # the validator quantize uses
        total += sum(weights_held(config, e.name, e.dtype, e.n_elements) for e in entries.values())
    return total


def _json_or_empty(path: Path) -> dict:
    try:
        v = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return v if isinstance(v, dict) else {}


# --- a GGUF file ------------------------------------------------------------------------------

@dataclass
class GGUFModel:
    """What `estimate-memory` needs from a GGUF, read from its header alone."""

    path: str
    arch: str | None
    params: int  # elements of every tensor
    weight_bytes: int  # bytes of every tensor's data, as stored
    file_size: int
    shape: ModelShape | None  # None when the metadata lacks block_count or head counts
    shape_problem: str = ""  # why shape is None

    @property
    def bits_per_weight(self) -> float:
        return self.weight_bytes * 8 / self.params if self.params else 0.0


def _gguf_int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def read_gguf_model(path: str | Path) -> GGUFModel:
    """Parameter count, stored bytes and KV shape of a GGUF (see ModelShape). Keys, with
    {arch} = general.architecture:

        {arch}.block_count                      layers
        {arch}.attention.head_count_kv          KV heads: one number, or one per layer
        {arch}.attention.key_length/value_length  K/V head sizes; else embedding_length / head_count
        {arch}.attention.sliding_window         window of the sliding layers
        {arch}.attention.sliding_window_pattern per-layer bools, or a period; else llama.cpp's
                                                default period for the architecture (gemma3: 6)
        {arch}.context_length                   trained context
    """
    from ..gguf_header import read_gguf_header

    # Per-layer arrays are needed whole; 65536 covers any layer count while a 150k-token
    # vocabulary stays a length, not 150k decoded strings.
    h = read_gguf_header(path, max_array_items=65536)
    meta = {kv.key: kv for kv in h.kv}
    arch = meta["general.architecture"].value if "general.architecture" in meta else None
    params = sum(t.n_elements for t in h.tensors)
    weight = sum(t.n_bytes for t in h.tensors)
    model = GGUFModel(str(path), arch, params, weight, h.file_size, None)

    def val(key: str):
        kv = meta.get(f"{arch}.{key}")
        return None if kv is None else kv.value

    layers = _gguf_int(val("block_count"))
    if arch is None or not layers or layers < 1:
        model.shape_problem = f"{path}: no general.architecture or {{arch}}.block_count in its metadata"
        return model
    if layers > MAX_LAYERS:  # per-layer tables below are sized by it
        model.shape_problem = f"{path}: {arch}.block_count {layers} is more than {MAX_LAYERS:,} layers"
        return model

    def per_layer(key: str) -> tuple[int, ...] | None:
        v = val(key)
        if isinstance(v, list):
            if len(v) != layers or not all(_gguf_int(x) is not None and x >= 0 for x in v):
                raise FormatError(f"{path}: {arch}.{key} has {len(v)} entries for {layers} layers")
            return tuple(int(x) for x in v)
        n = _gguf_int(v)
        return None if n is None else (n,) * layers

    kv_heads = per_layer("attention.head_count_kv")
    heads = per_layer("attention.head_count")
    if kv_heads is None:
        kv_heads = heads  # llama.cpp's default: no GQA
    if kv_heads is None:
        model.shape_problem = f"{path}: no {arch}.attention.head_count(_kv) in its metadata"
        return model
    k_len, v_len = _gguf_int(val("attention.key_length")), _gguf_int(val("attention.value_length"))
    n_embd, n_head = _gguf_int(val("embedding_length")), max(heads or (0,))
    fallback = n_embd // n_head if n_embd and n_head else None
    k_len, v_len = k_len or fallback, v_len or k_len or fallback
    if val("attention.kv_lora_rank") is not None and val("attention.key_length_mla") is not None:
        v_len = 0  # MLA (deepseek2 and kin): llama.cpp keeps no V cache, V is read out of K
    if not k_len:
        model.shape_problem = f"{path}: no {arch}.attention.key_length, nor embedding_length and head_count"
        return model

    window, swa = _gguf_int(val("attention.sliding_window")), None
    if window:
        pattern = val("attention.sliding_window_pattern")
        if isinstance(pattern, list) and len(pattern) == layers:
            swa = tuple(bool(x) for x in pattern)
        elif _gguf_int(pattern) is not None:
            swa = _swa_from_period(layers, pattern)
        elif arch in DEFAULT_SWA_PERIOD:
            swa = _swa_from_period(layers, DEFAULT_SWA_PERIOD[arch])
    if not swa or not any(swa):
        window, swa = None, None
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = _gguf_int(val("vocab_size")) or (tokens.length if tokens is not None else None)
    model.shape = ModelShape(layers, max(kv_heads), k_len,
                             kv_heads_per_layer=kv_heads if len(set(kv_heads)) > 1 else None,
                             key_length=k_len, value_length=v_len if v_len != k_len else None,
                             sliding_window=window, sliding_layers=swa,
                             max_context=_gguf_int(val("context_length")), n_vocab=vocab)
    return model


def is_gguf(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def model_path(given: str | Path) -> Path:
    """What --model names, checked: a directory, a GGUF file, or a safetensors file or index
    beside its config.json (the model directory it belongs to: its shards are counted
    together). Anything else, and a FIFO or device, is one InputError naming it."""
    st = stat_input(given, "--model")
    path = Path(given)
    if stat.S_ISDIR(st.st_mode):
        return path
    if stat.S_ISREG(st.st_mode):
        if is_gguf(path):
            return path
        if path.name.endswith((".safetensors", ".safetensors.index.json")) and (path.parent / "config.json").is_file():
            return path.parent
    raise InputError(f"{path}: neither a .gguf file nor a Hugging Face model directory "
                     "(nor a safetensors file beside its config.json)")

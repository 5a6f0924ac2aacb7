"""One face for every input: an HF model directory or a GGUF file becomes a `Source`
with tensors (lazy), the model facts a mix consults, and a way to write metadata."""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import gguf

from ..errors import InputError
from .input_file import stat_input
from .source_tensor import SourceTensor


@dataclass
class Source:
    path: Path
    name: str  # a short model name for general.name and default file names
    arch_name: str  # GGUF arch
    tensors: list[SourceTensor]
    n_layers: int
    n_head: int
    n_head_kv: int
    n_expert: int
    write_metadata: Callable[[gguf.GGUFWriter], Optional[object]]
    is_gguf: bool = False
    requantized: int = 0  # tensors stored quantized that are decoded to be quantized again
    files: tuple[Path, ...] = ()  # every file read besides `path` (the other members of a split GGUF set)


def open_hf(model_dir: Path, vocab_pre: Optional[str], allow_requantize: bool = False) -> Source:
    from ..arch import adapter_for
    from .checkpoint import Checkpoint
    from .hub import hub_name
    from .tokenizer import add_tokenizer

    ckpt = Checkpoint(model_dir)
    adapter = adapter_for(ckpt)
    hp = adapter.hp
    vocab_size = hp.vocab_size

    def write_metadata(w: gguf.GGUFWriter):
        adapter.write_metadata(w)
        return add_tokenizer(w, model_dir, config=ckpt.config, vocab_size=vocab_size,
                             vocab_pre=vocab_pre, arch=adapter.arch_name)

    tensors = adapter.tensors()
    # tensors the checkpoint stores already quantized (gpt-oss MXFP4): copied as they are,
    # unless the user accepts decoding and quantizing them again
    packed = [s for s in tensors if s.packed_type]
    if allow_requantize:
        for s in packed:
            s.packed_type, s.packed_loader = "", None
    name = hub_name(model_dir) or model_dir.resolve().name  # a Hub cache snapshot: the model's name
    return Source(model_dir, name, adapter.arch_name, tensors,
                  hp.n_layers, hp.n_head, hp.n_head_kv,
                  hp.integer("num_local_experts", "num_experts", "n_routed_experts", lo=0, hi=1 << 16, default=0),
                  write_metadata, requantized=len(ckpt.decoded) + (len(packed) if allow_requantize else 0))


def open_gguf(path: Path, allow_requantize: bool) -> Source:
    from ..gguf_split import prefix_of
    from .gguf_input import GGUFInput

    g = GGUFInput(path)
    g.check_requantize(allow_requantize)

    def write_metadata(w: gguf.GGUFWriter):
        g.copy_metadata(w)
        return None

    head = g.arch_int("attention.head_count", 0, first_of_array=True)
    head_kv = g.arch_int("attention.head_count_kv", head, first_of_array=True)
    base = prefix_of(g.files[0]).name if len(g.files) > 1 else path.stem  # a set: its shared prefix
    stem = re.sub(r"[-_.](F32|F16|BF16|f32|f16|bf16)$", "", base)
    tensors = g.tensors()
    if allow_requantize:  # MXFP4 tensors too are decoded and quantized to the plan's type
        for s in tensors:
            s.packed_type, s.packed_loader = "", None
    return Source(path, stem, g.arch_name, tensors, g.arch_int("block_count", 0), head, head_kv,
                  g.arch_int("expert_count", 0), write_metadata, is_gguf=True,
                  requantized=len(g.quantized_tensors()) if allow_requantize else 0, files=tuple(g.files))


def open_source(path: Path | str, *, vocab_pre: Optional[str] = None, allow_requantize: bool = False) -> Source:
    st = stat_input(path, "model")  # a name too long or a parent that is a file: one line, not a traceback
    path = Path(path)
    if stat.S_ISREG(st.st_mode) and path.suffix.lower() == ".gguf":
        return open_gguf(path, allow_requantize)
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: expected a Hugging Face model directory or a .gguf file")
    return open_hf(path, vocab_pre, allow_requantize)

"""Valid seed files for scripts/fuzz.py and maps of where their fields lie.

Seeds (built once per run into WORKDIR/seeds, deterministic):
  model/        a copy of examples/tiny-llama (config.json, tokenizer files, model.safetensors)
  sharded/      the same weights split into two shards + model.safetensors.index.json
  f16.gguf      written by qconvert.quantize(type="F16"); q8.gguf the same with type="Q8_0"
  writer.gguf   written by gguf-py's GGUFWriter: scalars of every type, NaN/Inf floats, string
                and float arrays, a nested array, names with `[/x]`, escapes and bidi marks
  spm/          the model with a SentencePiece tokenizer.model beside its tokenizer.json
  imatrix.gguf, imatrix.dat  importance matrices for the model's matrices (llama.cpp's two layouts)
  sensitivity.json  the sensitivity cache a budgeted (--target-bpw) conversion wrote

The maps (`gguf_fields`, `safetensors_layout`) are what the mutators aim at: every length,
count, type and offset field with its byte position, and the boundaries between sections.
They come from a small walker written for known-good seeds, not from qconvert's own reader
(which is under test).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-llama"
MODEL_FILES = ("config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "model.safetensors")
GGUF_SEEDS = ("f16.gguf", "q8.gguf", "writer.gguf")
IMATRIX_SEEDS = ("imatrix.gguf", "imatrix.dat")


@dataclass
class Field:
    pos: int
    size: int  # 4 or 8 bytes, little-endian unsigned
    kind: str  # n_tensors, n_kv, str_len, value_type, item_type, count, n_dims, ne, ggml_type, offset, u32 ...
    label: str


@dataclass
class Layout:
    """Fields and section boundaries of one seed file; `data_start` is where tensor data begins;
    `tensors` are (name, dtype name, absolute offset, n_bytes)."""

    fields: list[Field] = field(default_factory=list)
    boundaries: list[int] = field(default_factory=list)
    data_start: int = 0
    tensors: list[tuple[str, str, int, int]] = field(default_factory=list)


# ------------------------------------------------------------------ building


def build_seeds(workdir: Path, call) -> Path:
    """Make WORKDIR/seeds (see module doc). `call("fuzz_seeds:make_seed_files", dir)` runs that
    function in a clean child process (fuzz_runner.call_clean): the quantizer's parallel
    kernels and SentencePiece's trainer start threads, which must never run in the process
    the fuzzer forks its cases from."""
    seeds = workdir / "seeds"
    if (seeds / "done").exists():
        return seeds
    shutil.rmtree(seeds, ignore_errors=True)
    for d in ("model", "spm"):
        (seeds / d).mkdir(parents=True)
        for name in MODEL_FILES:
            shutil.copyfile(EXAMPLE / name, seeds / d / name)
    _shard(seeds / "model" / "model.safetensors", seeds / "sharded")
    for name in MODEL_FILES[:-1]:
        shutil.copyfile(EXAMPLE / name, seeds / "sharded" / name)
    call("fuzz_seeds:make_seed_files", str(seeds))
    call("fuzz_models:make_model_seeds", str(seeds))  # MoE, families, embeddings, FP8/GPTQ, a split set
    for p in seeds.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o444)
    (seeds / "done").write_text("")
    return seeds


def make_seed_files(seeds: str) -> None:
    """The seeds qconvert, gguf-py and SentencePiece write (run in a clean child, see above)."""
    import tempfile

    import qconvert

    root = Path(seeds)
    qconvert.quantize(root / "model", root / "f16.gguf", type="F16")
    qconvert.quantize(root / "model", root / "q8.gguf", type="Q8_0")
    with tempfile.TemporaryDirectory() as tmp:  # a real cache, as a budgeted run writes it
        qconvert.quantize(root / "model", Path(tmp) / "x.gguf", target_bpw=4.5,
                          sensitivity_cache=root / "sensitivity.json")
    _writer_gguf(root / "writer.gguf")
    _imatrix_seeds(root / "f16.gguf", root / "imatrix.gguf", root / "imatrix.dat")
    _spm_model(root / "spm" / "tokenizer.model")


def _imatrix_seeds(model_gguf: Path, out_gguf: Path, out_dat: Path) -> None:
    """Importance matrices for every matrix of the tiny model (random statistics), in
    llama.cpp's GGUF and legacy .dat layouts."""
    from gguf import GGUFReader

    from qconvert.calib.imatrix import ImportanceMatrix

    rng = np.random.default_rng(1)
    m = ImportanceMatrix(datasets=["fuzz"], chunk_count=4, chunk_size=64, arch="llama")
    for t in GGUFReader(model_gguf).tensors:
        if len(t.shape) == 2 and t.name.startswith("blk."):
            m.add(t.name, rng.random(int(t.shape[0])) * 256, 256)
    m.save(out_gguf)
    m.save(out_dat)


def _spm_model(path: Path) -> None:
    """A small SentencePiece model (Llama 2's settings: byte fallback, identity normalizer),
    trained on the stdlib's pydoc topics so it is the same on every machine."""
    import io

    import sentencepiece as spm
    from pydoc_data.topics import topics

    lines = [ln for _, text in sorted(topics.items())[:80] for ln in text.split("\n") if ln.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, model_type="bpe",
                                   vocab_size=600, byte_fallback=True, normalization_rule_name="identity",
                                   num_threads=1, minloglevel=2)
    path.write_bytes(buf.getvalue())


def _shard(src: Path, out: Path) -> None:
    """Split a safetensors file into two shards and an index, copying bytes as they are."""
    out.mkdir()
    raw = src.read_bytes()
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    names = sorted(header)
    halves = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, part in halves.items():
        h, blobs, at = ({"__metadata__": meta} if meta else {}), [], 0
        for name in part:
            b, e = header[name]["data_offsets"]
            blob = raw[8 + n + b:8 + n + e]
            h[name] = {"dtype": header[name]["dtype"], "shape": header[name]["shape"],
                       "data_offsets": [at, at + len(blob)]}
            blobs.append(blob)
            at += len(blob)
            weight_map[name] = shard
        text = json.dumps(h).encode()
        text += b" " * (-len(text) % 8)
        (out / shard).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    index = {"metadata": {"total_size": len(raw) - 8 - n}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _writer_gguf(path: Path) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    w = GGUFWriter(path, "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 7)
    w.add_int32("t.i32", -7)
    w.add_uint64("t.u64", 2**40 + 3)
    w.add_int64("t.i64", -(2**40))
    w.add_float32("t.f32", 0.1)
    w.add_float32("t.nan", float("nan"))
    w.add_float64("t.inf", float("inf"))
    w.add_float64("t.ninf", float("-inf"))
    w.add_bool("t.flag", True)
    w.add_string("general.name", "fuzz [/x] \x1b[31mred\u202e")
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(40)] + ["[/x]", "\x00nul"])
    w.add_array("tokenizer.ggml.scores", [0.5, float("nan"), float("inf"), -1.0])
    w.add_array("t.nested", [[1, 2], [3]])
    data = {"token_embd.weight": rng.standard_normal((4, 64)).astype(np.float32),
            "blk.0.attn_norm.weight": rng.standard_normal((2, 32)).astype(np.float16),
            "blk.0.[/x]": quantize(rng.standard_normal((2, 64)).astype(np.float32), GGMLQuantizationType.Q8_0),
            "blk.0.evil\x1b[2J": np.ones(32, np.float32)}
    for name, arr in data.items():
        w.add_tensor(name, arr, raw_dtype=GGMLQuantizationType.Q8_0 if arr.dtype == np.uint8 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------ maps

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_TYPE_NAMES = {0: "F32", 1: "F16", 8: "Q8_0", 30: "BF16"}
_BLOCK = {0: (1, 4), 1: (1, 2), 8: (32, 34), 30: (1, 2)}  # ggml type -> (block, bytes) for the seeds' types


def gguf_fields(raw: bytes) -> Layout:
    """Every length, count, type and offset field of a well-formed little-endian GGUF v3."""
    lay = Layout()
    pos = 24
    lay.fields += [Field(8, 8, "n_tensors", "tensor count"), Field(16, 8, "n_kv", "metadata count")]
    lay.boundaries += [0, 4, 8, 16, 24]
    n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)
    alignment = 32

    def string(p: int, label: str) -> tuple[int, bytes]:
        n = struct.unpack_from("<Q", raw, p)[0]
        lay.fields.append(Field(p, 8, "str_len", label))
        return p + 8 + n, raw[p + 8:p + 8 + n]

    def value(p: int, t: int, label: str) -> tuple[int, object]:
        if t in _SCALAR_SIZES:
            v = raw[p:p + _SCALAR_SIZES[t]]
            if _SCALAR_SIZES[t] in (4, 8) and t not in (6, 12):
                lay.fields.append(Field(p, _SCALAR_SIZES[t], "scalar", label))
            return p + _SCALAR_SIZES[t], v
        if t == 8:
            return string(p, label)
        item, count = struct.unpack_from("<IQ", raw, p)
        lay.fields += [Field(p, 4, "item_type", label), Field(p + 4, 8, "count", label)]
        p += 12
        for _ in range(count):
            p, _ = value(p, item, label)
        return p, None

    for _ in range(n_kv):
        lay.boundaries.append(pos)
        pos, key = string(pos, "key")
        t = struct.unpack_from("<I", raw, pos)[0]
        lay.fields.append(Field(pos, 4, "value_type", key.decode(errors="replace")))
        pos += 4
        lay.boundaries.append(pos)
        pos, v = value(pos, t, key.decode(errors="replace"))
        if key == b"general.alignment":
            alignment = struct.unpack("<I", v)[0]
    infos = []
    for _ in range(n_tensors):
        lay.boundaries.append(pos)
        pos, name = string(pos, "tensor name")
        label = name.decode(errors="replace")
        n_dims = struct.unpack_from("<I", raw, pos)[0]
        lay.fields.append(Field(pos, 4, "n_dims", label))
        ne = list(struct.unpack_from(f"<{n_dims}Q", raw, pos + 4))
        lay.fields += [Field(pos + 4 + 8 * i, 8, "ne", label) for i in range(n_dims)]
        pos += 4 + 8 * n_dims
        gtype, rel = struct.unpack_from("<IQ", raw, pos)
        lay.fields += [Field(pos, 4, "ggml_type", label), Field(pos + 4, 8, "offset", label)]
        pos += 12
        infos.append((label, gtype, ne, rel))
    lay.boundaries.append(pos)
    lay.data_start = -(-pos // alignment) * alignment
    lay.boundaries.append(lay.data_start)
    for label, gtype, ne, rel in infos:
        block, size = _BLOCK.get(gtype, (1, 0))
        nbytes = int(np.prod(ne)) // block * size
        lay.tensors.append((label, _TYPE_NAMES.get(gtype, str(gtype)), lay.data_start + rel, nbytes))
        lay.boundaries += [lay.data_start + rel, lay.data_start + rel + nbytes]
    lay.boundaries.append(len(raw))
    lay.boundaries = sorted(set(lay.boundaries))
    return lay


def safetensors_layout(raw: bytes) -> Layout:
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8:8 + n])
    lay = Layout(fields=[Field(0, 8, "header_len", "header length")], data_start=8 + n)
    lay.boundaries = [0, 8, 8 + n, len(raw)]
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        lay.tensors.append((name, e["dtype"], 8 + n + b, end - b))
        lay.boundaries += [8 + n + b, 8 + n + end]
        i = raw.find(json.dumps(name).encode(), 8, 8 + n)
        if i > 0:
            lay.boundaries.append(i)
    lay.boundaries = sorted(set(lay.boundaries))
    return lay


def has_nonfinite(raw: bytes, lay: Layout) -> bool:
    """Whether any F32/F16/BF16 tensor of a file laid out as `lay` holds NaN or Inf."""
    masks = {"BF16": (np.uint16, 0x7F80), "F16": (np.uint16, 0x7C00), "F32": (np.uint32, 0x7F800000)}
    for _, dtype, off, nbytes in lay.tensors:
        if dtype in masks and off + nbytes <= len(raw):
            t, m = masks[dtype]
            x = np.frombuffer(raw, t, count=nbytes // np.dtype(t).itemsize, offset=off)
            if np.any((x & t(m)) == t(m)):
                return True
    return False


def imatrix_dat_layout(raw: bytes) -> Layout:
    """Fields of a legacy imatrix .dat (see qconvert.calib.imatrix): the entry count, and per
    entry the name length, call count, value count and the values (as an F32 "tensor")."""
    lay = Layout(fields=[Field(0, 4, "n_entries", "entry count")], boundaries=[0, 4])
    n = struct.unpack_from("<i", raw)[0]
    pos = 4
    for _ in range(n):
        lay.boundaries.append(pos)
        length = struct.unpack_from("<i", raw, pos)[0]
        name = raw[pos + 4:pos + 4 + length].decode(errors="replace")
        lay.fields += [Field(pos, 4, "str_len", "name"), Field(pos + 4 + length, 4, "ncall", name),
                       Field(pos + 8 + length, 4, "count", name)]
        nval = struct.unpack_from("<i", raw, pos + 8 + length)[0]
        pos += 12 + length
        lay.tensors.append((name, "F32", pos, 4 * nval))
        lay.boundaries.append(pos)
        pos += 4 * nval
    lay.fields += [Field(pos, 4, "chunk_count", "trailer"), Field(pos + 4, 4, "str_len", "dataset")]
    lay.boundaries += [pos, len(raw)]
    lay.boundaries = sorted(set(lay.boundaries))
    return lay


def protobuf_layout(raw: bytes) -> Layout:
    """Fields of a SentencePiece ModelProto: every length-delimited field's length (a varint),
    one level into each piece (field 1), and each piece's score (a float32, as an F32
    "tensor" of one value, for the non-finite mutators)."""
    from fuzz_mutate import read_varint

    lay = Layout(boundaries=[0])

    def walk(start: int, end: int, depth: int, label: str) -> None:
        pos = start
        while pos < end:
            lay.boundaries.append(pos)
            key, pos = read_varint(raw, pos)
            num, wire = key >> 3, key & 7
            if wire == 0:
                pos = read_varint(raw, pos)[1]
            elif wire == 5:
                if label == "piece" and num == 2:
                    lay.tensors.append(("piece score", "F32", pos, 4))
                pos += 4
            elif wire == 1:
                pos += 8
            elif wire == 2:
                n, after = read_varint(raw, pos)
                lay.fields.append(Field(pos, after - pos, "varint_len", f"{label} field {num}"))
                if depth == 0 and num == 1:
                    walk(after, after + n, 1, "piece")
                pos = after + n
            else:
                return

    walk(0, len(raw), 0, "model")
    lay.boundaries = sorted(set(lay.boundaries + [len(raw)]))
    lay.data_start = len(raw)
    return lay

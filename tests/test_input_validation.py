"""Hostile inputs end in one clean error naming the file, tensor or key, and nothing is
written: index entries that leave the model directory, safetensors headers that lie,
configs that disagree with their tensors or are out of bounds, NaN/Inf weights, GGUF
inputs with layout keys. Every case starts from a copy of examples/tiny-llama, mutated."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

import qconvert
from qconvert.errors import FormatError, InputError, UnsupportedError
from qconvert.source import finite
from qconvert.source.finite import NonFiniteError, count_nonfinite

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-llama"
Q3 = "model.layers.3.self_attn.q_proj.weight"
SHARD = "model-00001-of-00001.safetensors"


# ---------------------------------------------------------------- helpers

@pytest.fixture
def model(tmp_path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "model"))


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def st_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(path: Path, header: dict | bytes, data: bytes) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_config(model: Path, **changes) -> None:
    path = model / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def refused(model, out_dir: Path, error: type, *fragments: str, **kwargs) -> str:
    """quantize must raise `error` with a one-line message holding every fragment, and leave
    the output directory empty (no file, no partial file)."""
    out = out_dir / "out.gguf"
    if kwargs.get("format", "gguf") == "gguf" and not any(k.startswith("target_") for k in kwargs):
        kwargs.setdefault("type", "Q8_0")
    with pytest.raises(error) as ei:
        qconvert.quantize(model, out, **kwargs)
    msg = str(ei.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    assert list(out_dir.iterdir()) == []
    return msg


def run_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "qconvert", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def poison(path: Path, name: str, nan: int, inf: int) -> None:
    """Put `nan` NaNs and `inf` Infs (one negative) into bf16 tensor `name` of a safetensors file."""
    header, data = st_parts(path)
    begin, end = header[name]["data_offsets"]
    bits = np.frombuffer(data[begin:end], np.uint16).copy()
    bits[np.arange(nan) * 7] = 0x7FC1  # quiet NaN (payload set)
    bits[1 + np.arange(inf) * 7] = [0xFF80 if i == 0 else 0x7F80 for i in range(inf)]
    st_write(path, header, data[:begin] + bits.tobytes() + data[end:])


# ---------------------------------------------------------------- index containment

def _sharded(model: Path) -> dict:
    """The example as a one-shard checkpoint with an index, as save_pretrained writes it."""
    (model / "model.safetensors").rename(model / SHARD)
    header, _ = st_parts(model / SHARD)
    weight_map = {k: SHARD for k in header if k != "__metadata__"}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


@pytest.mark.parametrize("shard", ["../secret.safetensors", "ABSOLUTE", "sub/" + SHARD, "..\\secret.safetensors",
                                   "a\x00b.safetensors", "..", "", "x" * 300 + ".safetensors", 7, ["x"], None])
def test_index_shards_must_be_plain_names_in_the_model_dir(model, out_dir, tmp_path, monkeypatch, shard):
    from qconvert.source import safetensors_file

    secret = tmp_path / "secret.safetensors"
    st_write(secret, {"lm_head.weight": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}}, b"SECRET-BYTES-123")
    (model / "sub").mkdir()
    shutil.copy(secret, model / "sub" / SHARD)
    weight_map = _sharded(model)
    weight_map["lm_head.weight"] = str(secret) if shard == "ABSOLUTE" else shard
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    opened = []
    real = safetensors_file.read_header
    monkeypatch.setattr(safetensors_file, "read_header", lambda p: (opened.append(Path(p)), real(p))[1])

    msg = refused(model, out_dir, FormatError, str(index), "'lm_head.weight'", "shard")
    assert "SECRET" not in msg
    with pytest.raises(FormatError) as ei:
        qconvert.inspect(index)
    assert "SECRET" not in str(ei.value) and "lm_head.weight" in str(ei.value)
    assert all(p.parent == model for p in opened), opened  # nothing outside (or below) the model dir


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "raw-bytes"])
def test_index_shard_name_with_a_lone_surrogate_is_a_format_error(model, out_dir, raw):
    """A shard name holding U+D800 (escaped, or as the bytes ED A0 80, which json.loads
    decodes with 'surrogatepass') is no file name: a clean error, not UnicodeEncodeError
    from stat()."""
    weight_map = _sharded(model)
    index = model / "model.safetensors.index.json"
    text = json.dumps({"weight_map": {**weight_map, Q3: "PLACEHOLDER"}})
    index.write_bytes(text.replace("PLACEHOLDER", "\\ud800").encode() if not raw
                      else text.encode().replace(b"PLACEHOLDER", b"\xed\xa0\x80"))
    refused(model, out_dir, FormatError, str(index), "surrogate")
    with pytest.raises(FormatError, match="surrogate"):
        qconvert.inspect(index)


def test_estimate_memory_counts_through_the_same_checks(model, tmp_path):
    from qconvert.plan.model_shape import params_from_dir

    weight_map = _sharded(model)
    n = params_from_dir(model)
    assert n == qconvert.inspect(model).n_params
    weight_map["lm_head.weight"] = "../outside.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(FormatError, match="plain file name"):
        qconvert.estimate_memory(model_dir=model, context=64)


def test_hugging_face_cache_symlinks_keep_working(model, tmp_path):
    """A hub cache snapshot: every file a symlink to ../../blobs/<hash>. The index names plain
    files; where the link points is no business of the containment rule."""
    _sharded(model)
    repo = tmp_path / "hub" / "models--tiny--llama"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(model.iterdir())):
        shutil.copy(f, blobs / f"{i:040x}")
        (snap / f.name).symlink_to(Path("..", "..", "blobs", f"{i:040x}"))
    a = qconvert.quantize(snap, tmp_path / "a.gguf", type="Q8_0").output
    b = qconvert.quantize(model, tmp_path / "b.gguf", type="Q8_0").output
    ra, rb = gguf.GGUFReader(a), gguf.GGUFReader(b)
    assert [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
    assert all(np.array_equal(x.data, y.data) for x, y in zip(ra.tensors, rb.tensors))
    assert qconvert.inspect(snap / "model.safetensors.index.json").n_params == qconvert.inspect(model).n_params


def test_shard_that_is_not_a_regular_file_is_refused_without_blocking(model, out_dir):
    _sharded(model)
    (model / SHARD).unlink()
    os.mkfifo(model / SHARD)  # opening it for reading would wait for a writer forever
    refused(model, out_dir, InputError, str(model / SHARD), "not a regular file")


@pytest.mark.parametrize("option", ["calibration", "imatrix"])
def test_statistics_inputs_must_be_regular_files(model, out_dir, tmp_path, option):
    """A FIFO would block the run, /dev/zero would be read into memory until it ran out (the
    run was killed), a name too long was internal error 70: each is refused before anything
    is read, dry run or not."""
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    cases = [(fifo, "is a FIFO"), (Path("/dev/zero"), "is a character device"), (tmp_path, "not a directory"),
             (tmp_path / ("x" * 300), "File name too long"), (tmp_path / "missing.txt", "not found")]
    for path, words in cases:
        for dry in (False, True):
            refused(model, out_dir, InputError, str(path)[:40], words, type="Q4_K_M", dry_run=dry, **{option: path})


def test_cli_exit_code_for_an_escaping_index(model, tmp_path):
    weight_map = _sharded(model)
    weight_map["lm_head.weight"] = "../../etc/passwd"
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    r = run_cli("quantize", model, "-o", tmp_path / "x.gguf", "--type", "Q8_0")
    assert r.returncode == 2, r.stderr
    assert "../../etc/passwd" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()


# ---------------------------------------------------------------- safetensors header validation

def _entry(h: dict, **kw) -> dict:
    h[Q3].update(kw)
    return h


def _overlap(h: dict) -> dict:
    k = "model.layers.3.self_attn.k_proj.weight"
    begin = h[Q3]["data_offsets"][0]
    h[k]["data_offsets"] = [begin, begin + h[k]["data_offsets"][1] - h[k]["data_offsets"][0]]
    return h


def _text(h: dict, old: str, new: str) -> bytes:
    text = json.dumps(h)
    assert old in text
    return text.replace(old, new, 1).encode()


HEADER_CASES = {
    "deep nesting": (lambda h: b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "1e999 in a shape": (lambda h: _text(h, '"shape": [256, 256]', '"shape": [1e999, 256]'), "shape should be"),
    "5000-digit offset": (lambda h: _text(h, '"data_offsets": [', '"data_offsets": [' + "9" * 5000 + ", "),
                          "too long to read"),
    "NaN constant": (lambda h: _text(h, '"shape": [256, 256]', '"shape": [NaN, 256]'), "NaN"),
    "duplicate key": (lambda h: _text(h, '"dtype": "BF16"', '"dtype": "BF16", "dtype": "F32"'), "twice"),
    "entry not an object": (lambda h: {**h, Q3: [1, 2]}, "not a JSON object"),
    "unknown dtype": (lambda h: _entry(h, dtype="Q4"), "unknown dtype 'Q4'"),
    "dtype not a string": (lambda h: _entry(h, dtype=5), "dtype"),
    "negative dim": (lambda h: _entry(h, shape=[-256, -256]), "non-negative integers"),
    "bool dim": (lambda h: _entry(h, shape=[True, 256]), "non-negative integers"),
    "float dim": (lambda h: _entry(h, shape=[256.0, 256]), "non-negative integers"),
    "rank 17": (lambda h: _entry(h, shape=[1] * 17), "at most 16"),
    "three offsets": (lambda h: _entry(h, data_offsets=[0, 1, 2]), "two integers"),
    "begin after end": (lambda h: _entry(h, data_offsets=[10, 2]), "not an ordered byte range"),
    "past the end": (lambda h: _entry(h, data_offsets=[0, 10**12]), "truncated download"),
    "bytes != shape x dtype": (lambda h: _entry(h, shape=[256, 255]), "needs 130560"),
    # the needed byte count is an integer, however large (it was a float: OverflowError)
    "a 10**39-row shape": (lambda h: _entry(h, shape=[10**39, 256]), "[about 2^129, 256] needs about 2^138"),
    "sub-byte dtype": (lambda h: _entry(h, dtype="F6_E2M3", shape=[3, 3]), "needs 6.75"),
    "metadata not an object": (lambda h: {**h, "__metadata__": ["pt"]}, "__metadata__"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_safetensors_header_lies_are_format_errors_in_quantize_and_inspect(model, out_dir, case):
    mutate, fragment = HEADER_CASES[case]
    path = model / "model.safetensors"
    header, data = st_parts(path)
    st_write(path, mutate(header), data)
    msg = refused(model, out_dir, FormatError, str(path), fragment)
    if Q3 in msg:  # a tensor's fault names the tensor
        assert f"tensor {Q3!r}" in msg
    with pytest.raises(FormatError) as ei:  # the same validator behind inspect
        qconvert.inspect(path)
    assert str(ei.value) == msg
    with pytest.raises(FormatError):  # and behind safetensors output
        qconvert.quantize(model, out_dir / "st", format="safetensors", bits=4)
    assert list(out_dir.iterdir()) == []


def test_overlapping_tensors_refused_by_quantize_and_reported_by_inspect(model, out_dir):
    path = model / "model.safetensors"
    header, data = st_parts(path)
    st_write(path, _overlap(header), data)
    refused(model, out_dir, FormatError, str(path), "overlap", "k_proj", "q_proj")
    rep = qconvert.inspect(path)
    assert [p["tensor"] for p in rep.problems] == [Q3] and "overlap" in rep.problems[0]["problem"]
    assert len(rep.tensors) == len(header) - 1  # everything else reported as before


def test_non_safetensors_bytes_are_not_echoed(model, out_dir):
    path = model / "model.safetensors"
    path.write_bytes(b"SECRETS!" + b"password=hunter2\n" * 4)
    msg = refused(model, out_dir, FormatError, str(path), "not a safetensors file")
    assert "SECRET" not in msg and str(struct.unpack("<Q", b"SECRETS!")[0]) not in msg


def test_truncated_shard(model, out_dir):
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    refused(model, out_dir, FormatError, str(path), "truncated download")


# ---------------------------------------------------------------- config bounds and shapes

CONFIG_CASES = [
    ("hidden_size", 0, ["hidden_size is 0"]),
    ("head_dim", 0, ["head_dim is 0"]),
    ("num_attention_heads", "4", ["num_attention_heads is '4'", "integer"]),
    ("num_attention_heads", True, ["num_attention_heads is True"]),
    ("num_attention_heads", 4.5, ["num_attention_heads is 4.5"]),
    ("num_key_value_heads", 3, ["num_attention_heads 4", "num_key_value_heads 3"]),
    ("num_hidden_layers", 3, ["num_hidden_layers is 3", "model.layers.3."]),
    ("num_hidden_layers", 6, ["num_hidden_layers is 6", "layer(s) 4, 5"]),
    ("vocab_size", 4096, ["vocab_size is 4096", "(2048, 256)"]),
    ("intermediate_size", 512, ["intermediate_size is 512", "(256, 768)"]),
    ("hidden_size", 512, ["hidden_size is 512", "(2048, 256)"]),
    ("head_dim", 32, ["head_dim is 2 x 32 = 64", "(128, 256)"]),
    ("head_dim", 63, ["head size 63 is odd"]),
    ("max_position_embeddings", -1, ["max_position_embeddings is -1"]),
    ("rms_norm_eps", -1e-5, ["rms_norm_eps is -1e-05"]),
    ("rms_norm_eps", 10**400, ["rms_norm_eps is 1000000000", "at most 0.5"]),  # an int too large for a float
    ("rope_parameters", {"rope_type": "default", "rope_theta": 10**400}, ["rope_parameters.rope_theta is 1000"]),
    ("tie_word_embeddings", "false", ["tie_word_embeddings is 'false'"]),
    ("rope_parameters", [10000], ["rope_parameters is [10000]"]),
    ("rope_parameters", {"rope_type": "default", "rope_theta": "1e4"}, ["rope_parameters.rope_theta is '1e4'"]),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 0}, ["rope_parameters.factor is 0"]),
    ("rope_parameters", {"rope_type": 3}, ["rope_parameters.rope_type is 3"]),
]


@pytest.mark.parametrize("key,value,fragments", CONFIG_CASES, ids=[f"{k}={v!r}"[:40] for k, v, _ in CONFIG_CASES])
def test_config_values_checked_with_the_key_named(model, out_dir, key, value, fragments):
    edit_config(model, **{key: value})
    refused(model, out_dir, FormatError, str(model / "config.json"), *fragments)


def test_a_billion_layers_fail_in_milliseconds(model, out_dir):
    edit_config(model, num_hidden_layers=1e9)
    t0 = time.perf_counter()
    refused(model, out_dir, FormatError, "num_hidden_layers is 1000000000.0", "10,000")
    assert time.perf_counter() - t0 < 5  # was 53 s and out of memory
    refused(model, out_dir, FormatError, "num_hidden_layers", format="safetensors")


def test_transformers_4_spelling_and_text_config_named_as_written(model, out_dir):
    config = json.loads((model / "config.json").read_text())
    rp = config.pop("rope_parameters")
    config.update(rope_theta=rp["rope_theta"], rope_scaling={"type": "linear", "factor": -2.0})
    (model / "config.json").write_text(json.dumps(config))
    refused(model, out_dir, FormatError, "rope_scaling.factor is -2.0")

    config["rope_scaling"] = None
    text = {k: config.pop(k) for k in ("hidden_size", "num_attention_heads", "vocab_size")}
    config["text_config"] = {**text, "hidden_size": 0}
    (model / "config.json").write_text(json.dumps(config))
    refused(model, out_dir, FormatError, "text_config.hidden_size is 0")
    config["text_config"]["hidden_size"] = 256  # the wrapper spelling itself converts
    (model / "config.json").write_text(json.dumps(config))
    assert qconvert.quantize(model, out_dir / "ok.gguf", type="Q8_0").output.is_file()


def test_config_that_is_not_json_data(model, out_dir):
    (model / "config.json").write_text('{"hidden_size": ' + "[" * 50_000)
    refused(model, out_dir, FormatError, "config.json", "nested too deeply")
    (model / "config.json").write_text('{"hidden_size": NaN}')
    refused(model, out_dir, FormatError, "config.json", "NaN")


# ---------------------------------------------------------------- tokenizer files

def _tok(model: Path, edit) -> None:
    path = model / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    result = edit(data)
    path.write_bytes(result if isinstance(result, bytes) else json.dumps(data).encode())


TOKENIZER_CASES = {
    "vocab id a string": (lambda t: t["model"]["vocab"].update({"the": "7"}), "model.vocab"),
    "merge without a space": (lambda t: t["model"]["merges"].__setitem__(3, "ab"), "model.merges"),
    "pre_tokenizer a number": (lambda t: t.__setitem__("pre_tokenizer", 5), "pre_tokenizer"),
    "nested step a string": (lambda t: t.__setitem__("pre_tokenizer", {"type": "Sequence", "pretokenizers": ["x"]}),
                             "pre_tokenizer.pretokenizers[0]"),
    "added token without id": (lambda t: t["added_tokens"][0].pop("id"), "added_tokens[0]"),
    "lone surrogate escape": (lambda t: json.dumps(t).replace('"merges": [', '"merges": ["a \\ud800", ', 1).encode(),
                              "surrogate"),
    "byte order mark": (lambda t: b"\xef\xbb\xbf" + json.dumps(t).encode(), "special tokens"),
    "not an object": (lambda t: b"[1, 2]", "JSON object"),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_damaged_tokenizer_json_is_a_format_error(model, out_dir, case):
    edit, fragment = TOKENIZER_CASES[case]
    _tok(model, edit)
    refused(model, out_dir, FormatError, "tokenizer", fragment)


def test_damaged_tokenizer_config(model, out_dir):
    (model / "tokenizer_config.json").write_text("[]")
    refused(model, out_dir, FormatError, "tokenizer_config.json", "JSON object")
    (model / "tokenizer_config.json").write_text('{"a": ' * 5000)
    refused(model, out_dir, FormatError, "tokenizer_config.json", "nested too deeply")


# ---------------------------------------------------------------- NaN / Inf weights

@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64"])
def test_count_nonfinite_matches_numpy_across_chunks(monkeypatch, dtype):
    monkeypatch.setattr(finite, "_CHUNK", 7)  # many chunks, some clean, some not
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000).astype(np.float32)
    x[rng.choice(1000, 9, replace=False)] = np.nan
    x[rng.choice(1000, 4, replace=False)] = np.inf
    x[3] = -np.inf
    x[4] = -np.nan
    x[5] = 65504.0  # the largest finite float16: finite in every dtype
    if dtype == "BF16":
        stored = (x.view(np.uint32) >> 16).astype(np.uint16)
        truth = (stored.astype(np.uint32) << 16).view(np.float32)
    else:
        stored = x.astype({"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype])
        truth = stored
    assert count_nonfinite(stored, dtype) == (int(np.isnan(truth).sum()), int(np.isinf(truth).sum()))
    assert count_nonfinite(np.ones(5, np.float32), "F32") == (0, 0)


def test_nonfinite_weights_refused_naming_tensor_and_counts(model, out_dir):
    poison(model / "model.safetensors", Q3, nan=2, inf=1)
    refused(model, out_dir, NonFiniteError,
            f"blk.3.attn_q.weight ({Q3}): 2 NaN, 1 Inf values; pass --allow-nonfinite to convert anyway")
    # every route that reads weights refuses them: safetensors output, sized plans (their
    # measurements read weights, so even a dry run), the GPTQ calibration pass
    refused(model, out_dir, NonFiniteError, Q3, format="safetensors", bits=4)
    refused(model, out_dir, NonFiniteError, "blk.3.attn_q.weight", target_bpw=5.0, dry_run=True,
            sensitivity_cache=out_dir.parent / "cache.json")
    refused(model, out_dir, NonFiniteError, Q3, scheme="gptq", calibration_samples=2, calibration_seqlen=32,
            device="cpu")
    res = qconvert.quantize(model, out_dir / "anyway.gguf", type="Q8_0", allow_nonfinite=True)
    assert res.output.is_file()


def test_nonfinite_in_a_copied_tensor_of_safetensors_output(model, out_dir):
    poison(model / "model.safetensors", "model.norm.weight", nan=0, inf=1)
    refused(model, out_dir, NonFiniteError, "model.norm.weight", "0 NaN, 1 Inf", format="safetensors", bits=4)


def test_cli_nonfinite_exit_2_and_allow_flag(model, tmp_path):
    poison(model / "model.safetensors", Q3, nan=1, inf=0)
    out = tmp_path / "x.gguf"
    r = run_cli("quantize", model, "-o", out, "--type", "Q8_0")
    assert r.returncode == 2 and "1 NaN, 0 Inf values" in r.stderr and "--allow-nonfinite" in r.stderr
    assert not out.exists() and "Traceback" not in r.stderr
    r = run_cli("quantize", model, "-o", out, "--type", "Q8_0", "--allow-nonfinite")
    assert r.returncode == 0, r.stderr
    assert out.is_file()


# ---------------------------------------------------------------- weights too large for their type

def set_weight(path: Path, name: str, index: int, value: float) -> None:
    """Store `value` (rounded to bf16) as element `index` of bf16 tensor `name`."""
    from qconvert.kernels.floats import to_bf16_bits

    header, data = st_parts(path)
    begin, end = header[name]["data_offsets"]
    bits = np.frombuffer(data[begin:end], np.uint16).copy()
    bits[index] = to_bf16_bits(np.array([value], np.float32))[0]
    st_write(path, header, data[:begin] + bits.tobytes() + data[end:])


def _blocks(amax: float, block: int) -> np.ndarray:
    """Blocks whose largest |value| is amax: random, one-signed, constant, +-amax."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 256)).astype(np.float32)
    x /= np.abs(x).max(axis=1, keepdims=True)
    x[1], x[2], x[3], x[4] = np.abs(x[1]), -np.abs(x[2]), 1.0, -1.0
    x[5, ::2], x[5, 1::2] = 1.0, -1.0
    return (x * np.float32(amax)).astype(np.float32)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_max_abs_is_what_each_kernel_holds(name):
    """qtypes.MAX_ABS: at the bound every kernel (numba and NumPy twin, with and without
    importance) encodes finitely; at twice the bound the +-amax blocks give Inf/NaN, so
    the bound is within a factor 2 of the real one."""
    from qconvert import kernels
    from qconvert.kernels import IMPORTANCE_TYPES
    from qconvert.qtypes import qtype

    qt = qtype(name)
    x = _blocks(qt.max_abs, qt.block_size)
    imps = [None] + ([np.random.default_rng(s).exponential(size=x.shape).astype(np.float32) ** 3
                      for s in range(3)] if name in IMPORTANCE_TYPES else [])
    for ref in (False, True):
        for imp in imps:
            q = kernels.encode(name, x, reference=ref, importance=imp)
            assert np.isfinite(kernels.decode(name, q)).all(), (name, ref, imp is not None)
    with np.errstate(all="ignore"):
        over = kernels.decode(name, kernels.encode(name, _blocks(2 * qt.max_abs, qt.block_size)))
    assert not np.isfinite(over).all()


def test_weight_beyond_f16_refused_naming_tensor_value_and_a_type_that_holds_it(model, out_dir):
    from qconvert.source.finite import RangeError

    down = "model.layers.1.mlp.down_proj.weight"
    set_weight(model / "model.safetensors", down, 5, 99840.0)  # finite in bf16, Inf in F16
    msg = refused(model, out_dir, RangeError, "tensor 'blk.1.ffn_down.weight'", "99840", "beyond F16",
                  "65504", "--tensor-type 'blk.1.ffn_down.weight=Q8_0'", "--allow-nonfinite", type="F16")
    # the suggestion works, and keeps the value
    res = qconvert.quantize(model, out_dir / "ok.gguf", type="F16", tensor_types=["blk.1.ffn_down.weight=Q8_0"])
    t = next(t for t in gguf.GGUFReader(res.output).tensors if t.name == "blk.1.ffn_down.weight")
    from qconvert.kernels import decode
    assert abs(decode("Q8_0", np.asarray(t.data)).max() - 99840) < 99840 / 127
    # --allow-nonfinite writes it as asked: Inf
    res = qconvert.quantize(model, out_dir / "inf.gguf", type="F16", allow_nonfinite=True)
    t = next(t for t in gguf.GGUFReader(res.output).tensors if t.name == "blk.1.ffn_down.weight")
    assert np.isinf(np.asarray(t.data)).sum() == 1
    assert "Inf" in msg


def test_weight_beyond_q8_0_scales_refused_in_every_route(model, out_dir):
    from qconvert.source.finite import RangeError

    set_weight(model / "model.safetensors", Q3, 0, 3e38)
    refused(model, out_dir, RangeError, "blk.3.attn_q.weight", "3.00406e+38", "Q8_0 (its F16 block scales)",
            "--tensor-type 'blk.3.attn_q.weight=BF16'")
    refused(model, out_dir, RangeError, Q3, "int4 with bfloat16 scales", format="safetensors", bits=4)
    # a sized plan has no candidate type for it (Q6_K holds the most: 2e8)
    refused(model, out_dir, RangeError, "blk.3.attn_q.weight", "no type a sized plan", target_bpw=5.0,
            dry_run=True, sensitivity_cache=out_dir.parent / "cache.json")
    res = qconvert.quantize(model, out_dir / "bf16.gguf", type="Q8_0", tensor_types=["attn_q=BF16"])
    assert res.output.is_file()


def test_sized_plan_picks_only_types_that_hold_the_tensor(model, out_dir):
    set_weight(model / "model.safetensors", Q3, 0, 1e8)  # above Q8_0's 8.3e6, below Q6_K's 2.0e8
    res = qconvert.quantize(model, out_dir / "x.gguf", target_bpw=3.3, dry_run=True,
                            sensitivity_cache=out_dir.parent / "cache.json")
    assert next(t for t in res.plan.tensors if t.name == "blk.3.attn_q.weight").qtype.name == "Q6_K"


def test_gptq_checks_the_weights_it_quantizes(model, out_dir, monkeypatch):
    """GPTQ reads weights through transformers: the range is checked there, and NaN too
    when the lazy load falls back to a full transformers load (which bypasses the reader)."""
    from qconvert.calib import layerwise
    from qconvert.source.finite import RangeError

    calib = dict(scheme="gptq", calibration_samples=2, calibration_seqlen=16, device="cpu")
    set_weight(model / "model.safetensors", Q3, 0, 1e8)
    refused(model, out_dir, RangeError, "blk.3.attn_q.weight", "Q8_0", **calib)
    set_weight(model / "model.safetensors", Q3, 0, 3e38)  # bf16 scales hold 1.27e38
    refused(model, out_dir, RangeError, Q3, "int4 with bfloat16 scales", format="safetensors", bits=4, **calib)
    poison(model / "model.safetensors", Q3, nan=2, inf=0)
    monkeypatch.setattr(layerwise, "load_lazy", lambda *a, **k: (None, "forced full load"))
    refused(model, out_dir, NonFiniteError, Q3, "2 NaN", **calib)


def test_cli_range_error_is_one_line_without_numpy_warnings(model, tmp_path):
    set_weight(model / "model.safetensors", "model.layers.0.mlp.up_proj.weight", 3, -70000.0)
    out = tmp_path / "x.gguf"
    r = run_cli("quantize", model, "-o", out, "--type", "F16")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: tensor 'blk.0.ffn_up.weight': max |value| 70144") and not out.exists()
    r = run_cli("quantize", model, "-o", out, "--type", "F16", "--allow-nonfinite")
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr


# ---------------------------------------------------------------- GGUF input

@pytest.fixture
def f32_gguf(tmp_path) -> Path:
    return qconvert.quantize(EXAMPLE, tmp_path / "tiny-F32.gguf", type="F32").output


def _rewrite(src: Path, dst: Path, *, alignment: int | None = None, extra: dict | None = None,
             drop: tuple = (), change=None) -> Path:
    """Copy a GGUF through gguf-py's writer with another alignment, extra keys, keys
    dropped and tensors changed."""
    r = gguf.GGUFReader(src)
    arch = r.fields.get("general.architecture")
    w = gguf.GGUFWriter(dst, arch.contents() if arch else "")  # "" writes no architecture key
    if alignment:
        w.add_custom_alignment(alignment)
    for key, (vtype, value, *sub) in (extra or {}).items():
        w.add_key_value(key, value, vtype, sub_type=sub[0] if sub else None)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment", *drop):
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    for t in r.tensors:
        data = np.array(t.data)
        w.add_tensor(t.name, change(t.name, data) if change else data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_gguf_input_layout_keys_are_not_copied_and_llama_cpp_loads_the_output(f32_gguf, tmp_path):
    from qconvert.eval.llama_model import open_llama
    from qconvert.gguf_header import read_gguf_header

    VT = gguf.GGUFValueType
    src = _rewrite(f32_gguf, tmp_path / "a64.gguf", alignment=64,
                   extra={"split.no": (VT.UINT16, 0), "split.count": (VT.UINT16, 1),
                          "split.tensors.count": (VT.INT32, 38), "test.nan": (VT.FLOAT32, float("nan"))})
    assert read_gguf_header(src).alignment == 64
    out = qconvert.quantize(src, tmp_path / "a64-q8.gguf", type="Q8_0").output
    h = read_gguf_header(out)
    keys = {kv.key: kv for kv in h.kv}
    assert h.alignment == 32 and not h.problems
    assert not [k for k in keys if k.startswith("split.") or k == "general.alignment"]
    assert keys["test.nan"].value == "nan"  # a NaN metadata value is carried as a float
    assert keys["tokenizer.ggml.tokens"].length == 2048
    # the same tensor bytes as from the plainly laid out input
    ref = gguf.GGUFReader(qconvert.quantize(f32_gguf, tmp_path / "ref.gguf", type="Q8_0").output)
    got = gguf.GGUFReader(out)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(ref.tensors, got.tensors))
    llm = open_llama(out, n_ctx=64, logits_all=True, n_threads=2)
    llm.eval(llm.tokenize(b"def main():"))
    assert np.isfinite(np.asarray(llm.scores[:3])).all()


def test_gguf_input_strings_are_copied_byte_for_byte(f32_gguf, tmp_path):
    """Tokens that are not UTF-8 on their own (byte-level pieces, half a character) reach
    the output unchanged; they were decoded with backslashreplace and written as its text."""
    from qconvert.gguf_header import read_gguf_header, stored_bytes

    VT = gguf.GGUFValueType
    field = gguf.GGUFReader(f32_gguf).fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]) for i in field.data]
    tokens[5], tokens[6], tokens[7] = b"\xe2\x82", b"\xff\xfe\\x41", b"\xed\xa0\x80"
    src = _rewrite(f32_gguf, tmp_path / "raw.gguf", drop=("tokenizer.ggml.tokens",),
                   extra={"tokenizer.ggml.tokens": (VT.ARRAY, tokens, VT.STRING),
                          "test.raw": (VT.STRING, b"caf\xe9"), b"test.key\xff": (VT.UINT8, 1)})
    out = qconvert.quantize(src, tmp_path / "raw-q8.gguf", type="Q8_0").output
    kv = {stored_bytes(k.key): k for k in read_gguf_header(out, exact_strings=True).kv}
    assert [stored_bytes(t) for t in kv[b"tokenizer.ggml.tokens"].value] == tokens
    assert stored_bytes(kv[b"test.raw"].value) == b"caf\xe9" and kv[b"test.key\xff"].value == 1
    # inspect still shows them as text
    shown = {k.key: k for k in read_gguf_header(out).kv}
    assert shown["tokenizer.ggml.tokens"].value[6] == "\\xff\\xfe\\x41" and shown["test.raw"].value == "caf\\xe9"


def test_gguf_input_split_member_not_named_as_llama_cpp_finds_it_is_refused(f32_gguf, tmp_path, out_dir):
    """Split sets are read whole (tests/test_gguf_split.py); a member whose name is not the
    one llama.cpp derives cannot lead to the others."""
    VT = gguf.GGUFValueType
    src = _rewrite(f32_gguf, tmp_path / "part.gguf", extra={"split.no": (VT.UINT16, 0),
                                                             "split.count": (VT.UINT16, 3)})
    refused(src, out_dir, InputError, str(src), "split into 3 files", "-00001-of-00003.gguf")


def test_gguf_input_with_overlapping_tensor_data_is_refused(f32_gguf, tmp_path, out_dir):
    r = gguf.GGUFReader(f32_gguf)
    a, b = r.tensors[1], r.tensors[2]  # give b the data offset of a
    field = b.field
    pos = field.offset + sum(p.nbytes for p in field.parts[:-1])
    raw = bytearray(f32_gguf.read_bytes())
    raw[pos:pos + 8] = struct.pack("<Q", a.data_offset - r.data_offset)
    bad = tmp_path / "overlap.gguf"
    bad.write_bytes(bytes(raw))
    refused(bad, out_dir, FormatError, str(bad), "overlaps")


def test_gguf_input_truncated_or_with_mistyped_facts(f32_gguf, tmp_path, out_dir):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f32_gguf.read_bytes()[:-5000])
    refused(cut, out_dir, FormatError, str(cut), "past the end")
    VT = gguf.GGUFValueType
    odd = _rewrite(f32_gguf, tmp_path / "odd.gguf", drop=("llama.block_count",),
                   extra={"llama.block_count": (VT.STRING, "four")})
    refused(odd, out_dir, FormatError, str(odd), "llama.block_count should be a non-negative integer")


def test_gguf_input_nonfinite_weights(f32_gguf, tmp_path, out_dir):
    def change(name, data):
        if name == "blk.3.attn_q.weight":
            data = data.copy()
            data.reshape(-1)[[0, 9]] = [np.nan, np.inf]
        return data

    src = _rewrite(f32_gguf, tmp_path / "nan.gguf", change=change)
    refused(src, out_dir, NonFiniteError, f"{src}: blk.3.attn_q.weight: 1 NaN, 1 Inf values")
    assert qconvert.quantize(src, out_dir / "ok.gguf", type="Q8_0", allow_nonfinite=True).output.is_file()


# ---------------------------------------------------------------- imatrix files

def test_gguf_imatrix_through_the_bounded_parser(tmp_path):
    from qconvert.calib.imatrix import ImportanceMatrix

    m = ImportanceMatrix(datasets=["text"], chunk_count=3, chunk_size=64)
    m.add("blk.0.attn_q.weight", np.arange(1, 257, dtype=np.float64) * 3, 30)
    path = tmp_path / "imatrix.gguf"
    m.save(path)
    moved = _rewrite(path, tmp_path / "a64.gguf", alignment=64)
    back = ImportanceMatrix.load(moved)
    assert np.array_equal(back.get("blk.0.attn_q.weight"), m.get("blk.0.attn_q.weight"))
    assert back.datasets == ["text"] and back.chunk_count == 3

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(FormatError, match="cut.gguf"):
        ImportanceMatrix.load(cut)
    nan = _rewrite(path, tmp_path / "nan.gguf",
                   change=lambda n, d: np.full_like(d, np.nan) if n.endswith(".in_sum2") else d)
    with pytest.raises(FormatError, match="NaN or Inf"):
        ImportanceMatrix.load(nan)
    assert math.isfinite(float(m.get("blk.0.attn_q.weight").sum()))


def test_gguf_imatrix_with_overlapping_data_is_refused(tmp_path):
    """Layout problems inspect lists (here the second tensor's offset moved onto the first's
    data) make an imatrix unusable, as they make a model GGUF: llama.cpp refuses both."""
    from qconvert.calib.imatrix import ImportanceMatrix

    m = ImportanceMatrix(datasets=["text"], chunk_count=3, chunk_size=64)
    m.add("blk.0.attn_q.weight", np.arange(1, 257, dtype=np.float64), 30)
    path = tmp_path / "imatrix.gguf"
    m.save(path)
    raw = bytearray(path.read_bytes())
    h = gguf.GGUFReader(path)
    second = h.tensors[1].name.encode()
    # tensor info: u64 name length, name, u32 n_dims, u64 dims..., u32 type, u64 offset
    at = raw.index(struct.pack("<Q", len(second)) + second) + 8 + len(second)
    n_dims = struct.unpack_from("<I", raw, at)[0]
    offset_at = at + 4 + 8 * n_dims + 4
    assert struct.unpack_from("<Q", raw, offset_at)[0] == h.tensors[1].data_offset - h.data_offset
    struct.pack_into("<Q", raw, offset_at, 0)
    bad = tmp_path / "overlap.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="overlaps"):
        ImportanceMatrix.load(bad)


def test_imatrix_of_another_model_is_refused_on_every_route(model, out_dir):
    """Rows of another width, or names that match no tensor of this model: refused before
    any weight is read, on the preset route and the sized one (which measured with them
    first and failed with a numpy broadcasting error, exit 70)."""
    from qconvert.calib.imatrix import ImportanceMatrix
    from qconvert.errors import ShapeError

    plan = qconvert.quantize(model, dry_run=True, type="Q4_K_M").plan
    q = next(t for t in plan.tensors if t.name.startswith("blk.") and t.qtype.quantized)
    wide = ImportanceMatrix(datasets=["t"], chunk_count=1, chunk_size=8)
    wide.add(q.name, np.ones(q.shape[-1] * 2), 8)
    foreign = ImportanceMatrix(datasets=["t"], chunk_count=1, chunk_size=8)
    foreign.add("model." + q.name, np.ones(q.shape[-1]), 8)
    for imx, words in ((wide, (q.name, "channels", "another model")),
                       (foreign, ("no statistics for any quantized tensor", "'model." + q.name, "another model"))):
        path = out_dir.parent / "other.imatrix.gguf"
        imx.save(path)
        refused(model, out_dir, ShapeError, "--imatrix", *words, imatrix=path)
        refused(model, out_dir, ShapeError, "--imatrix", *words, imatrix=path, target_size="3MB", dry_run=True)


def test_model_directory_name_that_is_not_utf8(model, tmp_path, monkeypatch):
    """general.name comes from the directory name; a byte that is not UTF-8 (kept by Python
    as a lone surrogate) made the GGUF writer fail (internal error 70)."""
    odd = tmp_path / os.fsdecode(b"\xffmodel")
    model.rename(odd)
    monkeypatch.chdir(tmp_path)
    res = qconvert.quantize(odd, type="Q8_0")
    assert res.output.name == os.fsdecode(b"\xffmodel-Q8_0.gguf")
    assert gguf.GGUFReader(res.output).fields["general.name"].contents() == "\ufffdmodel"

"""`qconvert.inspect` and `qconvert inspect` against files written by gguf-py and safetensors.

Expected facts come from the writers' inputs (shapes, dtypes, the arrays themselves) and
from gguf-py's own GGUFReader, never from qconvert's reader."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize
from safetensors.numpy import save_file

from qconvert.errors import FormatError, InputError, QConvertError
from qconvert.inspection import inspect

ROOT = Path(__file__).resolve().parents[1]
EVIL_NAME = "blk.0.evil\x1b[2J\x9b31m\u202ename"
MARKUP_NAME = "[bold red]not markup[/bold red]"
VOCAB = [f"tok{i}" for i in range(19)] + ["esc\x1b[31mred"]


def run_cli(args, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `qconvert ARGS` in-process through the real entry point (error -> exit code map)."""
    from qconvert.cli.app import main

    monkeypatch.setattr(sys, "argv", ["qconvert", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "250")
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    rng = np.random.default_rng(0)
    w = GGUFWriter(path, "llama")
    w.add_uint8("test.u8", 200)
    w.add_int32("test.i32", -7)
    w.add_uint64("test.u64", 2**40 + 3)
    w.add_float32("test.f32", 0.1)
    w.add_float64("test.f64", 2.5)
    w.add_bool("test.flag", True)
    w.add_string("general.name", "tiny \x1b]0;pwned\x07 model")
    w.add_array("tokenizer.ggml.tokens", VOCAB)
    w.add_array("test.ints", [1, 2, 3])
    data = {
        "token_embd.weight": rng.standard_normal((4, 64)).astype(np.float32),
        "blk.0.attn_norm.weight": rng.standard_normal((3, 32)).astype(np.float16),
        EVIL_NAME: quantize(rng.standard_normal((2, 64)).astype(np.float32), GGMLQuantizationType.Q8_0),
        MARKUP_NAME: np.ones(32, np.float32),
    }
    for name, arr in data.items():
        w.add_tensor(name, arr, raw_dtype=GGMLQuantizationType.Q8_0 if arr.dtype == np.uint8 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, data


# ---------------------------------------------------------------- GGUF facts

def test_gguf_json_matches_ggufreader(gguf_file, monkeypatch, capsys):
    path, data = gguf_file
    code, out, err = run_cli(["inspect", path, "--json"], monkeypatch, capsys)
    assert code == 0, err
    d = json.loads(out)
    reader = GGUFReader(path)

    # every key GGUFReader sees (its GGUF.* header pseudo-keys too), in order, with its type
    assert list(d["metadata"]) == list(reader.fields)
    for key, f in reader.fields.items():
        assert d["metadata"][key]["type"] == f.types[0].name
    # every tensor GGUFReader sees, shapes in GGUF order (ne0 first)
    assert [t["name"] for t in d["tensors"]] == [t.name for t in reader.tensors] == list(data)
    byname = {t["name"]: t for t in d["tensors"]}
    assert byname["token_embd.weight"]["shape"] == [64, 4]
    assert byname["token_embd.weight"]["type"] == "F32"
    assert byname["blk.0.attn_norm.weight"]["shape"] == [32, 3]
    assert byname["blk.0.attn_norm.weight"]["type"] == "F16"
    assert byname[EVIL_NAME]["shape"] == [64, 2]
    assert byname[EVIL_NAME]["type"] == "Q8_0"
    assert byname[MARKUP_NAME]["shape"] == [32]
    # bytes: F32 4 B/elem, F16 2, Q8_0 34 bytes per block of 32 (f16 scale + 32 int8)
    expected_bytes = {"token_embd.weight": 256 * 4, "blk.0.attn_norm.weight": 96 * 2,
                      EVIL_NAME: 4 * 34, MARKUP_NAME: 32 * 4}
    for name, n in expected_bytes.items():
        assert byname[name]["n_bytes"] == n
    # the offset really points at the tensor's bytes
    raw = path.read_bytes()
    for name, arr in data.items():
        t = byname[name]
        assert raw[t["offset"]:t["offset"] + t["n_bytes"]] == arr.tobytes()

    assert d["n_params"] == 256 + 96 + 128 + 32
    assert d["tensor_bytes"] == sum(expected_bytes.values())
    assert d["bits_per_weight"] == pytest.approx(sum(expected_bytes.values()) * 8 / 512)
    assert d["file_size"] == path.stat().st_size
    assert d["format"] == "gguf" and d["header"]["version"] == 3
    totals = {t["type"]: t for t in d["totals"]}
    assert totals["F32"] == {"type": "F32", "count": 2, "params": 288, "bytes": 1152}
    assert totals["Q8_0"]["bytes"] == 136


def test_gguf_metadata_values(gguf_file):
    rep = inspect(gguf_file[0]).to_dict()
    m = rep["metadata"]
    assert m["general.architecture"] == {"type": "STRING", "value": "llama"}
    assert m["test.u8"]["value"] == 200 and m["test.u8"]["type"] == "UINT8"
    assert m["test.i32"]["value"] == -7
    assert m["test.u64"]["value"] == 2**40 + 3
    assert m["test.f32"]["value"] == 0.1  # shortest text of the float32, not 0.10000000149...
    assert m["test.f64"]["value"] == 2.5
    assert m["test.flag"]["value"] is True
    assert m["general.name"]["value"] == "tiny \x1b]0;pwned\x07 model"
    assert m["test.ints"] == {"type": "ARRAY", "value": [1, 2, 3], "item_type": "INT32", "length": 3,
                              "truncated": False}
    toks = m["tokenizer.ggml.tokens"]
    assert toks["item_type"] == "STRING" and toks["length"] == 20 and toks["truncated"]
    assert toks["value"] == VOCAB[:8]
    full = inspect(gguf_file[0], max_array_items=None).to_dict()["metadata"]["tokenizer.ggml.tokens"]
    assert full["value"] == VOCAB and not full["truncated"]


def test_values_match_ggufreader(gguf_file, tmp_path):
    """Every value, read in full, equals GGUFReader's; also for a big-endian file."""
    be = tmp_path / "be.gguf"
    w = GGUFWriter(be, "llama", endianess=GGUFEndian.BIG)
    w.add_array("tokenizer.ggml.scores", [0.5, -1.25, 3.0])
    w.add_array("tokenizer.ggml.tokens", ["a", "bc"])
    w.add_uint32("test.u32", 123456)
    w.add_tensor("w", np.arange(64, dtype=np.float32).reshape(2, 32), tensor_endianess=GGUFEndian.LITTLE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for path in (gguf_file[0], be):
        rep = inspect(path, max_array_items=None)
        reader = GGUFReader(path)
        for key, f in reader.fields.items():
            ours, theirs = rep.metadata[key].value, f.contents()
            if f.types[-1] == GGUFValueType.FLOAT32:  # we print float32s shortest (0.1, not 0.1000000015)
                ours, theirs = np.float32(ours).tolist(), np.float32(theirs).tolist()
            assert ours == theirs, key
        assert [(t.name, t.type, t.shape, t.n_bytes, t.offset) for t in rep.tensors] == [
            (t.name, t.tensor_type.name, [int(d) for d in t.shape], t.n_bytes, t.data_offset)
            for t in reader.tensors]
    assert inspect(be).header["big_endian"] is True
    assert inspect(be).metadata["tokenizer.ggml.scores"].value == [0.5, -1.25, 3.0]


def test_json_escapes_control_characters(gguf_file, monkeypatch, capsys):
    code, out, _ = run_cli(["inspect", gguf_file[0], "--json", "--all"], monkeypatch, capsys)
    assert code == 0
    for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert bad not in out
    assert "\\u001b[2J\\u009b31m\\u202ename" in out
    d = json.loads(out)  # still valid JSON that decodes back to the real names
    assert EVIL_NAME in [t["name"] for t in d["tensors"]]
    assert d["metadata"]["tokenizer.ggml.tokens"]["value"][-1] == "esc\x1b[31mred"


def test_table_escapes_names_and_markup(gguf_file, monkeypatch, capsys):
    code, out, err = run_cli(["inspect", gguf_file[0], "--all"], monkeypatch, capsys)
    assert code == 0, err
    for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert bad not in out
    assert "blk.0.evil\\x1b[2J\\x9b31m\\u202ename" in out
    assert "tiny \\x1b]0;pwned\\x07 model" in out
    assert MARKUP_NAME in out  # shown literally, not rendered as bold red
    assert "ne0" in out  # the shape order is stated
    assert "[64, 4]" in out
    code, out, _ = run_cli(["inspect", gguf_file[0], "--no-tensors"], monkeypatch, capsys)
    assert code == 0 and "token_embd.weight" not in out and "Q8_0" in out


def test_many_tensors_table_is_cut_unless_all(tmp_path, monkeypatch, capsys):
    path = tmp_path / "many.gguf"
    w = GGUFWriter(path, "llama")
    for i in range(205):
        w.add_tensor(f"t.{i:03d}", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _, out, _ = run_cli(["inspect", path], monkeypatch, capsys)
    assert "t.199" in out and "t.200" not in out and "Showing 200 of 205" in out
    _, out, _ = run_cli(["inspect", path, "--all"], monkeypatch, capsys)
    assert "t.204" in out
    _, out, _ = run_cli(["inspect", path, "--json"], monkeypatch, capsys)
    assert len(json.loads(out)["tensors"]) == 205


# ---------------------------------------------------------------- broken files

def test_truncated_gguf_is_a_format_error(gguf_file, tmp_path, monkeypatch, capsys):
    raw = gguf_file[0].read_bytes()
    for cut in (3, 40, len(raw) // 3, len(raw) - 10):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(raw[:cut])
        with pytest.raises(FormatError, match=str(bad).replace("\\", "\\\\")):
            inspect(bad)
    code, out, err = run_cli(["inspect", bad], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert str(bad) in err and len(err.strip().splitlines()) == 1


def test_garbled_array_count_fails_fast(gguf_file, tmp_path):
    raw = bytearray(gguf_file[0].read_bytes())
    key = b"tokenizer.ggml.tokens"
    at = raw.index(key) + len(key) + 4 + 4  # past value type (ARRAY) and item type (STRING)
    assert struct.unpack_from("<Q", raw, at)[0] == len(VOCAB)
    struct.pack_into("<Q", raw, at, 2**62)
    bad = tmp_path / "garbled.gguf"
    bad.write_bytes(bytes(raw))
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="garbled.gguf"):
        inspect(bad)
    assert time.perf_counter() - t0 < 5


def test_random_header_damage_gives_only_format_errors(gguf_file, tmp_path):
    """Seeded byte damage in the header (and cuts): a clean report or a QConvertError, never
    another exception."""
    raw = gguf_file[0].read_bytes()
    header_end = GGUFReader(gguf_file[0]).data_offset
    rng = np.random.default_rng(7)
    outcomes = set()
    bad = tmp_path / "damaged.gguf"
    for _ in range(60):
        b = bytearray(raw)
        pos, n = int(rng.integers(4, header_end)), int(rng.integers(1, 9))
        b[pos:pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if rng.random() < 0.3:
            b = b[:int(rng.integers(0, len(b)))]
        bad.write_bytes(bytes(b))
        try:
            inspect(bad)
            outcomes.add("ok")
        except QConvertError as e:
            assert str(bad) in str(e)
            outcomes.add("error")
    assert outcomes == {"ok", "error"}  # both happen with this seed


def test_not_gguf_and_garbled_safetensors(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(FormatError, match="fake.gguf"):
        inspect(fake)
    st = tmp_path / "bad.safetensors"
    st.write_bytes(struct.pack("<Q", 20) + b'{"a": {"dtype": "F3')
    with pytest.raises(FormatError, match="bad.safetensors"):
        inspect(st)
    with pytest.raises(InputError, match="nothing-here"):
        inspect(tmp_path / "nothing-here")


def test_cli_subprocess_exit_code_for_garbled_file(tmp_path):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\xff" * 64)
    r = subprocess.run([sys.executable, "-m", "qconvert", "inspect", str(bad)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- safetensors

def _st_data():
    return {
        "model.embed_tokens.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "model.norm.weight": np.ones(5, np.float16),
        "lm_head.weight": np.full((2, 3), 7, np.int8),
    }


def test_single_safetensors(tmp_path):
    data = _st_data()
    path = tmp_path / "model.safetensors"
    save_file(data, str(path), metadata={"format": "pt"})
    for target in (path, tmp_path):  # the file, or the directory holding it
        rep = inspect(target)
        assert rep.format == "safetensors" and rep.path == str(path)
        assert rep.metadata["format"].value == "pt"
        byname = {t.name: t for t in rep.tensors}
        assert set(byname) == set(data)
        raw = path.read_bytes()
        for name, arr in data.items():
            t = byname[name]
            assert t.shape == list(arr.shape)  # row-major, as stored
            assert t.n_bytes == arr.nbytes and t.n_elements == arr.size
            assert raw[t.offset:t.offset + t.n_bytes] == arr.tobytes()
        assert {t.name: t.type for t in rep.tensors} == {
            "model.embed_tokens.weight": "F32", "model.norm.weight": "F16", "lm_head.weight": "I8"}
        assert rep.n_params == 12 + 5 + 6
        assert rep.file_size == path.stat().st_size
        assert rep.bits_per_weight == pytest.approx((48 + 10 + 6) * 8 / 23)


def test_sharded_safetensors(tmp_path, monkeypatch, capsys):
    data = _st_data()
    shards = {"model-00001-of-00002.safetensors": ["model.embed_tokens.weight"],
              "model-00002-of-00002.safetensors": ["model.norm.weight", "lm_head.weight"]}
    for shard, names in shards.items():
        save_file({n: data[n] for n in names}, str(tmp_path / shard), metadata={"format": "pt"})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 64},
                                 "weight_map": {n: s for s, ns in shards.items() for n in ns}}))
    rep = inspect(tmp_path)
    assert rep.path == str(index)
    assert [Path(f["path"]).name for f in rep.files] == list(shards)
    assert rep.file_size == sum((tmp_path / s).stat().st_size for s in shards)
    assert {t.name: t.file for t in rep.tensors} == {n: s for s, ns in shards.items() for n in ns}
    assert rep.metadata["index.metadata.total_size"].value == 64
    assert rep.metadata["format"].value == "pt"
    assert rep.n_params == 23

    code, out, _ = run_cli(["inspect", index, "--json"], monkeypatch, capsys)
    assert code == 0 and len(json.loads(out)["tensors"]) == 3

    # an index naming a tensor its shard lacks, and one naming a missing shard
    index.write_text(json.dumps({"weight_map": {"ghost": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FormatError, match="ghost"):
        inspect(index)
    index.write_text(json.dumps({"weight_map": {"x": "model-00009-of-00009.safetensors"}}))
    with pytest.raises(InputError, match="model-00009-of-00009"):
        inspect(index)


def test_directory_choice(tmp_path, gguf_file):
    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").write_bytes(gguf_file[0].read_bytes())
    assert inspect(one).format == "gguf"
    (one / "n.gguf").write_bytes(gguf_file[0].read_bytes())
    with pytest.raises(InputError, match="several"):
        inspect(one)
    save_file({"a": np.zeros(2, np.float32)}, str(one / "model.safetensors"))
    assert inspect(one).format == "safetensors"  # model.safetensors wins over loose .gguf files


def test_paths_that_are_not_model_files_are_one_line_errors(tmp_path, monkeypatch, capsys):
    """A FIFO blocked the read of its magic bytes (the run hung), a 300-byte name and a
    path through a file were internal errors, '' inspected the current directory."""
    import os

    fifo = tmp_path / "m.gguf"
    os.mkfifo(fifo)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for path, words in ((fifo, "is a FIFO"), ("/dev/zero", "is a character device"),
                        (tmp_path / ("x" * 300), "File name too long"), (plain / "x", "Not a directory"),
                        ("", "empty path"), (tmp_path / "missing", "not found")):
        for cmd in (["inspect", path], ["estimate-memory", "--model", path]):
            code, out, err = run_cli(cmd, monkeypatch, capsys)
            assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, (cmd, err)
            if cmd[0] == "inspect":
                assert words in err, (path, err)


def test_safetensors_of_every_dtype_and_rank(tmp_path, monkeypatch, capsys):
    """A file the safetensors library wrote with integer, bool and f64 tensors, an empty
    tensor and a scalar: every tensor listed with its size, --json valid."""
    data = {"i8": np.arange(-4, 4, dtype=np.int8).reshape(2, 4), "u8": np.arange(6, dtype=np.uint8),
            "b": np.array([True, False]), "f64": np.ones((3, 3)), "empty": np.zeros((0,), np.float32),
            "empty2": np.zeros((4, 0), np.float16), "scalar": np.array(3.5, np.float32),
            "i64": np.arange(3, dtype=np.int64)}
    path = tmp_path / "odd.safetensors"
    save_file(data, str(path))
    byname = {t.name: t for t in inspect(path).tensors}
    for name, arr in data.items():
        assert byname[name].shape == list(arr.shape) and byname[name].n_bytes == arr.nbytes, name
    assert {byname[n].type for n in ("i8", "u8", "b", "f64", "i64")} == {"I8", "U8", "BOOL", "F64", "I64"}
    code, out, _ = run_cli(["inspect", path, "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["n_params"] == sum(a.size for a in data.values())
    code, out, err = run_cli(["inspect", path], monkeypatch, capsys)
    assert code == 0 and "scalar" in out and err == ""


# ---------------------------------------------------------------- GGUF layout problems and limits
# A raw GGUF v3 writer (layout from the GGUF spec) for headers gguf-py's writer refuses to make.

F32, U32, F32_VT, ARRAY, STRING_VT = int(GGMLQuantizationType.F32), 4, 6, 9, 8


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def raw_gguf(path: Path, tensors, kv=(), alignment: int = 32, data_size: int | None = None,
             n_tensors: int | None = None) -> Path:
    """tensors: (name, ne (ne0 first), ggml type, offset relative to the data start);
    kv: (key, value type, encoded value). The data section is zeros."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, len(kv))
    for key, vt, payload in kv:
        out += _s(key) + struct.pack("<I", vt) + payload
    for name, ne, gt, rel in tensors:
        out += _s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, gt, rel)
    out += bytes(-len(out) % alignment)
    if data_size is None:
        data_size = max((rel + 4 * int(np.prod(ne)) for _, ne, _, rel in tensors), default=0)
    path.write_bytes(out + bytes(data_size))
    return path


def _problems(path: Path, monkeypatch, capsys) -> list[dict]:
    """inspect --json's problems list; also checks the table shows the same problems."""
    code, out, err = run_cli(["inspect", path, "--json"], monkeypatch, capsys)
    assert code == 0, err
    problems = json.loads(out)["problems"]
    code, out, err = run_cli(["inspect", path], monkeypatch, capsys)
    assert code == 0, err
    if problems:
        assert "Problems" in out and f"{len(problems)} (see Problems below)" in out
        for p in problems:
            assert p["problem"][:40] in out.replace("\n", "")
    else:
        assert "none found" in out
    return problems


def test_good_files_have_no_problems(gguf_file, monkeypatch, capsys):
    assert _problems(gguf_file[0], monkeypatch, capsys) == []
    ok = raw_gguf(gguf_file[0].parent / "ok.gguf", [("a", [32], F32, 0), ("b", [32], F32, 128)])
    assert _problems(ok, monkeypatch, capsys) == []


def test_overlapping_tensors_are_problems(tmp_path, monkeypatch, capsys):
    path = raw_gguf(tmp_path / "overlap.gguf", [("a", [64], F32, 0), ("b", [32], F32, 128), ("c", [32], F32, 384)])
    problems = _problems(path, monkeypatch, capsys)
    assert [p["tensor"] for p in problems] == ["b"]
    assert "overlaps the data of tensor 'a'" in problems[0]["problem"]


def test_misaligned_offsets_and_alignment_key(tmp_path, monkeypatch, capsys):
    path = raw_gguf(tmp_path / "misaligned.gguf", [("a", [32], F32, 0), ("b", [32], F32, 144)])
    problems = _problems(path, monkeypatch, capsys)
    assert {"tensor": "b", "problem": "data offset 144 is not a multiple of the alignment 32"} in problems
    assert any(p["tensor"] is None and "laid out for 16" in p["problem"] for p in problems)
    # general.alignment 64 on a file laid out for 32
    path = raw_gguf(tmp_path / "key64.gguf", [("a", [32], F32, 0), ("b", [32], F32, 160)],
                    kv=[("general.alignment", U32, struct.pack("<I", 64))], alignment=64)
    problems = _problems(path, monkeypatch, capsys)
    assert any("general.alignment is 64, but the tensor offsets are laid out for 32" in p["problem"]
               for p in problems)
    assert [p["tensor"] for p in problems if p["tensor"]] == ["b"]


@pytest.mark.parametrize("vt,payload", [(U32, struct.pack("<I", 0)), (U32, struct.pack("<I", 48)),
                                        (F32_VT, struct.pack("<f", 32.0)), (STRING_VT, _s("32"))])
def test_invalid_alignment_key_is_an_error(tmp_path, monkeypatch, capsys, vt, payload):
    path = raw_gguf(tmp_path / "align.gguf", [("a", [32], F32, 0)], kv=[("general.alignment", vt, payload)])
    with pytest.raises(FormatError, match="general.alignment must be a power-of-two UINT32"):
        inspect(path)
    code, out, err = run_cli(["inspect", path, "--json"], monkeypatch, capsys)
    assert code == 2 and out == "" and str(path) in err and len(err.strip().splitlines()) == 1


def test_tensor_count_off_by_one(gguf_file, tmp_path, monkeypatch, capsys):
    # one too high, with 24+ zero bytes of padding before the data: they read as a tensor '' at 0
    tensors = [("a", [32], F32, 0), ("b", [32], F32, 128)]
    align = [("general.alignment", U32, struct.pack("<I", 256))]
    high = raw_gguf(tmp_path / "high.gguf", tensors, kv=align, alignment=256, n_tensors=3)
    assert high.read_bytes()[-256 - 24:-256] == bytes(24)
    problems = _problems(high, monkeypatch, capsys)
    assert any(p["tensor"] == "" and "empty name" in p["problem"] for p in problems)
    assert any(p["tensor"] == "a" and "overlaps the data of tensor ''" in p["problem"] for p in problems)
    # one too high where the padding is short (gguf-py's file): the extra tensor reads into the data
    raw = bytearray(gguf_file[0].read_bytes())
    n = struct.unpack_from("<Q", raw, 8)[0]
    struct.pack_into("<Q", raw, 8, n + 1)
    (tmp_path / "high2.gguf").write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="high2.gguf: truncated or garbled"):
        inspect(tmp_path / "high2.gguf")
    # one too low: the last tensor's info is taken for padding, its data belongs to nobody
    struct.pack_into("<Q", raw, 8, n - 1)
    low = tmp_path / "low.gguf"
    low.write_bytes(bytes(raw))
    problems = _problems(low, monkeypatch, capsys)
    assert any(p["tensor"] is None and "after the last tensor's data belong to no tensor" in p["problem"]
               for p in problems)


def test_out_of_order_tensors_are_a_problem(tmp_path, monkeypatch, capsys):
    path = raw_gguf(tmp_path / "order.gguf", [("a", [32], F32, 128), ("b", [32], F32, 0)])
    problems = _problems(path, monkeypatch, capsys)
    assert problems == [{"tensor": "a", "problem": "data offset 128, but llama.cpp expects 0 (tensors must be "
                                                   "stored back to back in header order, each padded to the alignment)"}]


def test_odd_names_and_shapes_are_problems(tmp_path, monkeypatch, capsys):
    long = "x" * 64
    path = raw_gguf(tmp_path / "odd.gguf", [("", [32], F32, 0), (long, [32], F32, 128),
                                            ("empty", [32, 0], F32, 256), ("five", [32, 1, 1, 1, 1], F32, 256)])
    problems = {(p["tensor"], p["problem"].split()[0]) for p in _problems(path, monkeypatch, capsys)}
    assert problems == {("", "tensor"), (long, "name"), ("empty", "has"), ("five", "has")}


@pytest.mark.parametrize("ne,gt,match", [
    ([32], 99, "unknown ggml type 99"),
    ([2**63], F32, "does not fit in 64 bits"),
    ([0, 2**64 - 1], F32, "does not fit in 64 bits"),
    ([32, 2**31, 2**31], F32, "does not fit in 64 bits"),
    ([32, 2**20], F32, "past the end"),
    ([30], int(GGMLQuantizationType.Q8_0), "not a multiple of Q8_0's block of 32"),
])
def test_bad_tensor_infos_are_errors_naming_the_tensor(tmp_path, monkeypatch, capsys, ne, gt, match):
    path = raw_gguf(tmp_path / "bad.gguf", [("ok", [32], F32, 0), ("bad.weight", ne, gt, 128)], data_size=256)
    with pytest.raises(FormatError, match=match):
        inspect(path)
    code, out, err = run_cli(["inspect", path], monkeypatch, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert str(path) in err and "bad.weight" in err


def test_offset_past_end_is_an_error(tmp_path):
    path = raw_gguf(tmp_path / "far.gguf", [("far", [32], F32, 2**64 - 32)], data_size=128)
    with pytest.raises(FormatError, match="'far' ends at byte"):
        inspect(path)


def test_nonfinite_metadata_is_valid_json(tmp_path, monkeypatch, capsys):
    path = tmp_path / "nan.gguf"
    w = GGUFWriter(path, "llama")
    w.add_float32("test.nan", float("nan"))
    w.add_float64("test.inf", float("inf"))
    w.add_float32("test.ninf", float("-inf"))
    w.add_array("test.scores", [0.5, float("nan"), float("-inf")])
    w.add_tensor("w", np.zeros(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, out, err = run_cli(["inspect", path, "--json"], monkeypatch, capsys)
    assert code == 0, err

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    m = json.loads(out, parse_constant=no_constants)["metadata"]
    assert m["test.nan"] == {"type": "FLOAT32", "value": "nan"}
    assert m["test.inf"] == {"type": "FLOAT64", "value": "inf"}
    assert m["test.ninf"]["value"] == "-inf"
    assert m["test.scores"]["value"] == [0.5, "nan", "-inf"]
    code, out, _ = run_cli(["inspect", path], monkeypatch, capsys)
    assert code == 0 and "nan" in out and "-inf" in out


def test_json_safe_bounds_other_metadata():
    """Safetensors JSON metadata may carry NaN (Python's json reads it) or deep nesting."""
    from qconvert.inspection import JSON_DEPTH, MetaValue, Report, json_safe

    deep: list = []
    cur = deep
    for _ in range(500):
        cur.append([])
        cur = cur[0]
    rep = Report("x", "safetensors", [], "")
    rep.metadata = {"nan": MetaValue("float", float("nan")), "deep": MetaValue("list", deep),
                    "mix": MetaValue("object", {"a": [1.5, float("inf")]})}
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["metadata"]["nan"]["value"] == "nan"
    assert d["metadata"]["mix"]["value"] == {"a": [1.5, "inf"]}
    v, depth = d["metadata"]["deep"]["value"], 0
    while isinstance(v, list):
        v, depth = v[0], depth + 1
    assert depth == JSON_DEPTH and "nested deeper" in v
    assert json_safe(3) == 3 and json_safe("nan") == "nan"


def _nested_array(depth: int) -> bytes:
    """An array of arrays `depth` deep, innermost one holding a single UINT8."""
    inner = struct.pack("<IQB", 0, 1, 7)
    for _ in range(depth - 1):
        inner = struct.pack("<IQ", ARRAY, 1) + inner
    return inner


def test_nested_and_huge_arrays_are_bounded(tmp_path, monkeypatch, capsys):
    ok = raw_gguf(tmp_path / "nest3.gguf", [("a", [32], F32, 0)], kv=[("test.nested", ARRAY, _nested_array(3))])
    code, out, err = run_cli(["inspect", ok, "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["metadata"]["test.nested"] == {"type": "ARRAY", "value": None, "item_type": "ARRAY",
                                                          "length": 1, "truncated": True}
    deep = raw_gguf(tmp_path / "deep.gguf", [], kv=[("test.nested", ARRAY, _nested_array(100_000))])
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="nests arrays more than 4 deep"):
        inspect(deep)
    # counts no remaining bytes could hold: strings (8 bytes each), arrays (12), scalars
    for item in (STRING_VT, ARRAY, U32):
        huge = raw_gguf(tmp_path / f"huge{item}.gguf", [],
                        kv=[("test.huge", ARRAY, struct.pack("<IQ", item, 2**64 - 1) + bytes(64))])
        with pytest.raises(FormatError, match="array items"):
            inspect(huge)
    assert time.perf_counter() - t0 < 5


def test_long_names_are_cut_in_messages(tmp_path):
    path = raw_gguf(tmp_path / "long.gguf", [("n" * 100_000, [32], 99, 0)], data_size=128)
    with pytest.raises(FormatError, match="unknown ggml type 99") as e:
        inspect(path)
    assert len(str(e.value)) < len(str(path)) + 200 and "nnnn…" in str(e.value)

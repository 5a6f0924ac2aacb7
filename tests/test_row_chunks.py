"""GGUF tensors encoded in slices of rows (source/row_chunks.py, sink/tensor_pipeline.py):
the file is byte for byte the one whole-tensor encoding makes, for plain and importance-
weighted K-quants, legacy and float types, through Llama's q/k rope permutation; slices
of q/k hold whole heads; NaN found in a later slice is reported with the whole tensor's
counts; and peak memory stays bounded for a tensor many slices long."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qconvert
from qconvert.source import row_chunks
from qconvert.source.finite import NonFiniteError
from qconvert.source.model_source import open_source

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-llama"
WHOLE = 1 << 40  # a slice budget no tensor reaches: every tensor in one piece


@pytest.fixture
def budget(monkeypatch):
    monkeypatch.delenv(row_chunks.ENV, raising=False)

    def set_budget(n: int) -> None:
        monkeypatch.setattr(row_chunks, "CHUNK_BYTES", n)

    return set_budget


def test_slices_rebuild_the_tensor_and_keep_heads_whole(budget):
    budget(1)  # the smallest slice each tensor allows: one row, or one head of q/k
    src = open_source(EXAMPLE)
    by_name = {s.name: s for s in src.tensors}
    head_rows = 64  # config.json: head_dim 64
    for name, rows in (("blk.0.attn_q.weight", head_rows), ("blk.0.attn_k.weight", head_rows),
                       ("blk.0.ffn_down.weight", 1), ("token_embd.weight", 1)):
        s = by_name[name]
        slices = list(row_chunks.row_chunks(s))
        assert all(stop - start == rows for start, stop, _ in slices), name
        assert len(slices) == s.shape[0] // rows > 1
        np.testing.assert_array_equal(np.concatenate([x for _, _, x in slices]), s.load())
    norm = list(row_chunks.row_chunks(by_name["blk.0.attn_norm.weight"]))
    assert len(norm) == 1  # one dimension: whole


def _importance(src) -> object:
    from qconvert.calib.imatrix import ImportanceMatrix

    imx = ImportanceMatrix()
    rng = np.random.default_rng(0)
    for s in src.tensors:
        if s.name.startswith("blk.") and len(s.shape) == 2:
            imx.add(s.name, rng.uniform(0.1, 5, size=(1, s.shape[-1])).astype(np.float32), np.array([1]))
    return imx


# Q4_K_M: Q4_K and Q6_K, plain and importance-weighted; the other K types and the legacy
# ones share the slicing (one code path for every type) and have their own byte tests
@pytest.mark.parametrize("type_name,with_importance", [
    ("Q4_K_M", False), ("Q4_K_M", True), ("Q8_0", False), ("F16", False),
])
def test_sliced_file_equals_whole_tensor_file(tmp_path, budget, type_name, with_importance):
    imx = _importance(open_source(EXAMPLE)) if with_importance else None
    outs = []
    for n in (WHOLE, 40_000):  # whole; a few rows (q/k: one head) per slice, the last one shorter
        budget(n)
        out = tmp_path / f"{n}.gguf"
        qconvert.quantize(EXAMPLE, out, type=type_name, imatrix=imx)
        outs.append(out.read_bytes())
    assert outs[1] == outs[0]


def _poison(path: Path, name: str, elements: list[int]) -> None:
    """Quiet NaNs at the given element indices of bf16 tensor `name`."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    begin, _ = json.loads(raw[8:8 + n])[name]["data_offsets"]
    data = bytearray(raw)
    for i in elements:
        data[8 + n + begin + 2 * i:8 + n + begin + 2 * i + 2] = (0x7FC1).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def test_nan_in_a_later_slice_counts_the_whole_tensor(tmp_path, budget):
    model = tmp_path / "model"
    shutil.copytree(EXAMPLE, model)
    # ffn_down is (256, 768): one NaN in row 100 (the 7th slice), two in the last row
    _poison(model / "model.safetensors", "model.layers.1.mlp.down_proj.weight",
            [100 * 768 + 5, 255 * 768, 255 * 768 + 9])
    budget(768 * 4 * 16)  # 16 rows a slice
    with pytest.raises(NonFiniteError, match=r"blk\.1\.ffn_down\.weight.*3 NaN, 0 Inf"):
        qconvert.quantize(model, tmp_path / "out.gguf", type="Q8_0")
    assert not (tmp_path / "out.gguf").exists()


def _peak_rss(code: str) -> int:
    """Peak RSS (bytes) of a fresh interpreter running `code`: VmHWM, the high-water mark of
    its own memory since exec. Not ru_maxrss: Linux carries the parent's RSS at fork into
    the child's ru_maxrss, so under a pytest process of a few hundred MB every child would
    report at least that, whatever it used."""
    tail = ("\nimport re; print('RSS', re.search(r'VmHWM:\\s*(\\d+) kB', "
            "open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code + tail], check=True, capture_output=True, text=True,
                         cwd=ROOT, timeout=600).stdout
    return int(out.rsplit("RSS", 1)[1]) * 1024


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and madvise are Linux's")
def test_peak_memory_stays_bounded_for_a_tensor_of_many_slices(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from synthetic_checkpoint import make_checkpoint

    big, small = tmp_path / "big", tmp_path / "small"
    largest, _ = make_checkpoint(big, layers=1, hidden=1024, vocab=65536)  # embeddings: 256 MiB as float32
    make_checkpoint(small, layers=1, hidden=1024, vocab=1024)
    f32 = 2 * largest
    code = "import qconvert\nqconvert.quantize({!r}, {!r}, type='Q8_0')"
    base = _peak_rss(code.format(str(small), str(tmp_path / "small.gguf")))
    peak = _peak_rss(code.format(str(big), str(tmp_path / "big.gguf")))
    # the whole-tensor writer needed ~2.2 float32 copies of the largest tensor (560 MiB
    # here); slices need a fixed working set of a few 16 MiB slices
    assert peak - base < f32 / 2, f"peak {peak / 2**20:.0f} MiB, baseline {base / 2**20:.0f} MiB"

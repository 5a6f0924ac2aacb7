"""Calibration shared by processes with torch.distributed (calib/world.py): two gloo ranks on
CPU started by torchrun, against one process on the same windows of the same text.

16 windows of 32 tokens are two batches of 8, one per rank, so each batch's sums come from
the same inputs in both runs and only the order of the float64 additions differs: the
statistics and GPTQ's solutions come out equal (measured: identical files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import qconvert
from qconvert.calib import corpus
from qconvert.calib.imatrix import ImportanceMatrix
from qconvert.calib.world import World, owners, rank_device, rank_threads, shard_bounds
from qconvert.errors import InputError
from qconvert.schemes.hessian import HessianSum, accumulate_hessian, hessian_init

MODEL = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"
CAL = dict(calibration_samples=16, calibration_seqlen=32)
CAL_ARGS = ["--calibration-samples", "16", "--calibration-seqlen", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "calibration.txt"
    p.write_text(corpus.split_text("calibration")[:12000], encoding="utf-8")
    return p


def torchrun(args: list[str], cwd: Path, timeout: float = 300, model: Path = MODEL) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 --standalone -m qconvert quantize MODEL ARGS` in `cwd`.
    The timeout turns a hang into a failure rather than a stuck suite."""
    env = {**os.environ, "QCONVERT_RANK_THREADS": "1", "QCONVERT_DIST_TIMEOUT": "120"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "qconvert", "quantize", str(model), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def one_thread():
    """The single-process reference on one torch thread, as each rank runs here
    (QCONVERT_RANK_THREADS=1): torch's CPU reductions group by thread count, so GPTQ on 1
    and on 2 threads differs in a few codes whatever the number of processes (measured for
    the int4 safetensors run: 0 bytes differ at equal thread counts; 1 vs 2 threads, 5% of
    packed words by the last layer, growing layer by layer through the true-sequential pass).

    Set explicitly, as each rank does (calib/world.py), numba's included: torch's matrix
    products follow OpenMP's thread count unless pinned, and numba's first parallel kernel
    sets that to numba's own count. A reference run with OMP_NUM_THREADS=1 alone did its
    matrix products on 1 thread until the first GPTQ solve and on 2 after it, and differed
    from the 2 ranks by 118 bytes of the Qwen3-MoE fixture's GPTQ GGUF."""
    from qconvert.calib.world import _numba_threads

    n = torch.get_num_threads()
    before = _numba_threads(1)  # first: starting numba's pool may reset OpenMP's count
    torch.set_num_threads(1)
    yield
    _numba_threads(before)
    torch.set_num_threads(n)


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    return one, two


def test_two_ranks_collect_the_statistics_of_one_process(text, tmp_path, one_thread):
    one, two = dirs(tmp_path)
    qconvert.quantize(MODEL, one / "m.gguf", type="Q4_K_M", calibration=text, save_imatrix=one / "s.imatrix",
                      device="cpu", **CAL)
    p = torchrun(["-t", "Q4_K_M", "--calibration", str(text), "-o", "m.gguf", "--save-imatrix", "s.imatrix",
                  *CAL_ARGS], two)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = ImportanceMatrix.load(one / "s.imatrix"), ImportanceMatrix.load(two / "s.imatrix")
    assert a.names() == b.names() and len(a) == 4 * 7
    worst = max(float(np.max(np.abs(a.sums(n) - b.sums(n)) / np.maximum(np.abs(a.sums(n)), 1e-30)))
                for n in a.names())
    assert worst <= 1e-6, worst  # float tolerance; measured 0 (identical files)
    assert all((a.counts(n) == 16 * 32).all() and (b.counts(n) == a.counts(n)).all() for n in a.names())
    assert (two / "m.gguf").read_bytes() == (one / "m.gguf").read_bytes()
    # rank 0 alone wrote (its two files, nothing else, no staging left) and printed the summary
    assert sorted(os.listdir(two)) == ["m.gguf", "s.imatrix"]
    assert (p.stdout + p.stderr).count("wrote ") == 1


def test_two_ranks_write_the_gptq_gguf_of_one_process(text, tmp_path, one_thread):
    one, two = dirs(tmp_path)
    # the attention projections only (the MLP's F16): a third of the solving time, still 4
    # solves per layer dealt out to 2 ranks (the README's figures cover the whole Q4_K_M mix)
    res = qconvert.quantize(MODEL, one / "g.gguf", type="Q4_0", scheme="gptq", tensor_types=["ffn_=F16"],
                            calibration=text, device="cpu", **CAL)
    p = torchrun(["-t", "Q4_0", "--tensor-type", "ffn_=F16", "--scheme", "gptq", "--calibration", str(text),
                  "-o", "g.gguf", *CAL_ARGS], two)
    assert p.returncode == 0, p.stderr[-3000:]
    # byte-equal: the same batches, Hessian sums equal to float32 resolution, and every
    # rank continues with the weights the solving rank broadcast
    assert (two / "g.gguf").read_bytes() == (one / "g.gguf").read_bytes()
    assert sorted(os.listdir(two)) == ["g.gguf"]
    assert len(res.stats) == 4 * 4 and (p.stdout + p.stderr).count("wrote ") == 1


def test_two_ranks_write_the_gptq_safetensors_of_one_process(text, tmp_path, one_thread):
    one, two = dirs(tmp_path)
    qconvert.quantize(MODEL, one / "q", format="safetensors", bits=4, scheme="gptq", calibration=text,
                      device="cpu", **CAL)
    p = torchrun(["--format", "safetensors", "--bits", "4", "--scheme", "gptq", "--calibration", str(text),
                  "-o", "q", *CAL_ARGS], two)
    assert p.returncode == 0, p.stderr[-3000:]
    names = sorted(f.name for f in (one / "q").iterdir())
    assert sorted(f.name for f in (two / "q").iterdir()) == names and "model.safetensors" in names
    for name in names:
        assert (two / "q" / name).read_bytes() == (one / "q" / name).read_bytes(), name
    assert sorted(os.listdir(two)) == ["q"]


def test_two_ranks_write_the_moe_gptq_gguf_of_one_process(text, tmp_path, one_thread):
    """Routed experts: each expert's Hessian is summed over the ranks (an expert no token of
    one rank chose takes part with zeros there), the experts' solves are dealt out over the
    ranks and broadcast back (gptq_experts.ExpertSolver.solve_layer), and layer 1 is
    calibrated on layer 0's quantized experts on every rank alike."""
    from fixtures.moe_models import build

    moe = build("qwen3_moe", tmp_path / "moe")
    one, two = dirs(tmp_path)
    cal = dict(calibration_samples=16, calibration_seqlen=4)
    res = qconvert.quantize(moe, one / "g.gguf", type="Q4_K_M", scheme="gptq", calibration=text, device="cpu",
                            **cal)
    p = torchrun(["-t", "Q4_K_M", "--scheme", "gptq", "--calibration", str(text), "-o", "g.gguf",
                  "--calibration-samples", "16", "--calibration-seqlen", "4", "--device", "cpu"], two, model=moe)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (two / "g.gguf").read_bytes() == (one / "g.gguf").read_bytes()
    # 2 layers x 8 experts x 3 projections, each solved (or rounded, with no tokens) once
    assert sum(1 for k in res.stats if "_exps" in k) == 2 * 8 * 3
    assert sorted(os.listdir(two)) == ["g.gguf"]


def test_a_bad_calibration_file_fails_every_rank(tmp_path):
    p = torchrun(["--calibration", str(tmp_path / "missing.txt"), "-o", "m.gguf", *CAL_ARGS], tmp_path, timeout=180)
    assert p.returncode != 0
    assert "missing.txt" in p.stderr and "error:" in p.stderr
    assert not (tmp_path / "m.gguf").exists()


def test_a_failure_on_rank_0_alone_stops_the_other_rank(text, tmp_path):
    # only rank 0 checks the output, so only it fails; rank 1 learns it in the agreement
    # after the check and stops with the same exit code instead of calibrating alone
    (tmp_path / "m.gguf").write_bytes(b"keep")
    p = torchrun(["--calibration", str(text), "-o", "m.gguf", *CAL_ARGS], tmp_path, timeout=180)
    assert p.returncode != 0
    assert "rank 0 of 2 failed while checking the output" in p.stderr
    assert "--force" in p.stderr or "exists" in p.stderr
    assert (tmp_path / "m.gguf").read_bytes() == b"keep"


def test_a_job_without_calibration_is_refused_under_torchrun(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(InputError, match="no calibration pass"):
        qconvert.quantize(MODEL, tmp_path / "m.gguf", type="Q8_0")
    assert not (tmp_path / "m.gguf").exists()


# -- the pieces -----------------------------------------------------------------------------

def test_windows_are_shared_out_in_whole_batches():
    two = [World(r, 2) for r in range(2)]
    assert [shard_bounds(16, 8, w) for w in two] == [(0, 8), (8, 16)]
    assert [shard_bounds(20, 8, w) for w in two] == [(0, 8), (8, 20)]  # batches 0 | 1, 2 (partial)
    assert [shard_bounds(3, 8, w) for w in two] == [(0, 1), (1, 3)]  # one batch: single windows
    assert shard_bounds(5, 8, World()) == (0, 5)
    with pytest.raises(InputError, match="fewer windows than the 2 processes"):
        shard_bounds(1, 8, two[0])


def test_solves_go_to_the_least_loaded_rank():
    assert owners([1.0, 5.0, 2.0, 2.0], World(0, 2)) == [1, 0, 1, 1]
    assert owners([3.0, 3.0], World()) == [0, 0]


def test_devices_and_threads_per_rank():
    w = World(1, 2, 1, 2)
    assert rank_device("cpu", w) == "cpu" and rank_device("cuda:0", World()) == "cuda:0"
    if not torch.cuda.is_available():
        assert rank_device("auto", w) == "cpu"
        with pytest.raises(InputError, match="2 processes on this host but 0 GPU"):
            rank_device("cuda", w)
    with pytest.raises(InputError, match="cuda:LOCAL_RANK"):
        rank_device("cuda:1", w)
    assert rank_threads(w, {"QCONVERT_RANK_THREADS": "3"}) == 3
    assert rank_threads(w, {}) == max(1, len(os.sched_getaffinity(0)) // 2)
    with pytest.raises(InputError, match="QCONVERT_RANK_THREADS"):
        rank_threads(w, {"QCONVERT_RANK_THREADS": "0"})


def test_hessian_sums_add_up_over_any_split():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(64, 48, generator=g) * torch.linspace(0.1, 3, 48) for _ in range(4)]
    whole, left, right = HessianSum(48), HessianSum(48), HessianSum(48)
    for x in xs:
        whole.add(x)
    for x in xs[:2]:
        left.add(x)
    for x in xs[2:]:
        right.add(x)
    left.sum += right.sum  # what the all-reduce does
    left.rows += right.rows
    assert torch.equal(left.hessian(), whole.hessian())
    H, _ = accumulate_hessian(*hessian_init(48, dtype=torch.float64), torch.cat(xs).double())
    # the running mean's matrix, to float32 resolution of the largest entry (products are float32)
    assert float((whole.hessian(torch.float64) - H).abs().max() / H.abs().max()) < 1e-6
    assert float(whole.rows) == 256


def test_expert_solves_are_dealt_out_in_rounds_and_broadcast_back():
    """Rank 0 of 2 solves tasks 0, 2, 4, ... of a layer's experts; the others' results
    arrive by broadcast and are written into the module like its own (a fake world stands
    in for the peer, which broadcasts slabs of 7s)."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    import transformers

    from qconvert.calib.experts import expert_weight
    from qconvert.schemes.gptq_experts import ExpertSolver

    cfg = transformers.Qwen3MoeConfig(hidden_size=32, moe_intermediate_size=16, num_experts=3, num_experts_per_tok=1)
    layer = torch.nn.Module()
    layer.mlp = transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock(cfg)
    experts, base, projs = layer.mlp.experts, "model.layers.0.mlp.experts", ("gate_proj", "up_proj", "down_proj")
    tasks = [(e, proj) for e in range(3) for proj in projs]
    hess = {}
    for e, proj in tasks:
        hess[f"{base}.{e}.{proj}"] = HessianSum(32 if proj != "down_proj" else 16)
        hess[f"{base}.{e}.{proj}"].add(torch.randn(4, 32 if proj != "down_proj" else 16))
    slabs = iter(expert_weight(experts, e, proj) for e, proj in tasks)  # in the order of the broadcasts

    class RankZeroOfTwo(World):
        @contextmanager
        def agreed(self, what):
            yield

        def share(self, payload, src):
            slab = next(slabs)
            assert (payload is not None) == (src == 0)
            return payload if src == 0 else {"rows": np.zeros(1, np.uint8), "err": 0.0,
                                             "deq": np.full(tuple(slab.shape), 7.0, np.float32)}

    solved = []

    def solve_one(gname, W, h):
        solved.append(gname)
        return {"rows": np.zeros(1, np.uint8), "deq": np.ones_like(W), "err": 0.0}

    by_name = {f"blk.0.ffn_{p[:-5]}_exps": SimpleNamespace(scheme="gptq") for p in projs}
    rename = {f"{base}.{p}.weight": f"blk.0.ffn_{p[:-5]}_exps" for p in projs}.get
    stats = {}
    ExpertSolver(rename, by_name).solve_layer(0, layer, hess, solve_one, None, stats, RankZeroOfTwo(0, 2))
    assert len(solved) == 5 and not hess  # tasks 0, 2, 4, 6, 8 of 9, every Hessian used
    for t, (e, proj) in enumerate(tasks):
        want = 1.0 if t % 2 == 0 else 7.0
        assert bool((expert_weight(experts, e, proj) == want).all()), (t, e, proj)
    assert len(stats) == 9


def test_a_calibration_pass_keeps_the_thread_count_numba_would_change(tmp_path):
    """OMP_NUM_THREADS=1 alone: numba's first parallel kernel (here inside the transform, as
    in a GPTQ solve) sets OpenMP's count to numba's; the layer-wise pass keeps torch on the
    count it started with, so every layer's re-run uses what its first run used."""
    script = tmp_path / "threads.py"
    script.write_text(f"""
import numpy as np, torch
from qconvert.calib.layerwise import load_causal_lm, run_layerwise
from qconvert.kernels._blocks import row_sigma2
seen = []
def on_linear(i, name, x):
    seen.append(torch.get_num_threads())
def transform(i, layer):
    row_sigma2(np.ones((64, 256), np.float32))
    seen.append(torch.get_num_threads())
run_layerwise(load_causal_lm({str(MODEL)!r}), torch.zeros((2, 8), dtype=torch.int64), on_linear=on_linear,
              transform=transform, device="cpu")
print(sorted(set(seen)), torch.get_num_threads())
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split("\n")[-2].startswith("[1] "), p.stdout

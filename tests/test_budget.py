"""Budget planning (--target-size / --target-bpw / --target-vram): the predicted file size
is the written one, budgets hold, plans are deterministic, sensitivity is cached, the
solver matches brute force, and the VRAM accounting adds up."""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from qconvert import quantize
from qconvert.errors import BudgetError
from qconvert.plan import sensitivity
from qconvert.plan.budget import Option, solve
from qconvert.plan.memory import runtime_overhead_bytes

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny-llama"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One sensitivity cache for the module: measured once, then reused."""
    return tmp_path_factory.mktemp("sens") / "sensitivity.json"


def dry(cache, **kw):
    return quantize(EXAMPLE, dry_run=True, sensitivity_cache=cache, **kw)


def smallest_size(cache) -> int:
    with pytest.raises(BudgetError) as ei:
        dry(cache, target_size=1000)
    return ei.value.smallest


def test_impossible_budget_names_smallest_size(cache):
    smallest = smallest_size(cache)
    with pytest.raises(BudgetError, match=f"{smallest:,} bytes"):
        dry(cache, target_size=smallest - 1)
    # the size it names is achievable, exactly
    res = dry(cache, target_size=smallest)
    assert res.budget.predicted_file_size == smallest
    # and is the floor-respecting minimum: Q2_K everywhere but output (Q5_K) and token_embd (Q3_K)
    types = {t.name: t.qtype.name for t in res.plan.tensors}
    assert types["output.weight"] == "Q5_K" and types["token_embd.weight"] == "Q3_K"
    assert {types[n] for n in types if ".attn_q." in n or ".ffn_up." in n} == {"Q2_K"}


def test_predicted_size_equals_written_at_five_budgets(cache, tmp_path):
    lo = smallest_size(cache)
    hi = dry(cache, target_size="1GB").budget.predicted_file_size  # everything at Q8_0
    assert hi > 2 * lo
    for k, budget in enumerate(np.linspace(lo, hi, 5).astype(int)):
        out = tmp_path / f"b{k}.gguf"
        res = quantize(EXAMPLE, out, target_size=int(budget), sensitivity_cache=cache)
        written = out.stat().st_size
        assert written == res.file_size
        assert abs(res.budget.predicted_file_size - written) <= 0.005 * written, (budget, written)
        assert written <= budget
        # the tensors in the file are the plan's types and the file type is the dominant mix
        r = gguf.GGUFReader(out)
        got = {t.name: t.tensor_type.name for t in r.tensors}
        assert got == {t.name: t.qtype.name for t in res.plan.tensors}
        assert 0 <= res.budget.lower_bound <= res.budget.loss


def test_target_bpw_is_respected(cache):
    for bpw in (3.2, 4.5, 6.0):
        plan = dry(cache, target_bpw=bpw).plan
        assert plan.bits_per_weight <= bpw
        assert plan.bits_per_weight > bpw - 0.6  # and close to it


def test_plan_is_deterministic(cache, tmp_path):
    a = dry(cache, target_size="2.6MB")
    b = dry(tmp_path / "fresh.json", target_size="2.6MB")  # measured again from scratch
    assert [(t.name, t.qtype.name) for t in a.plan.tensors] == [(t.name, t.qtype.name) for t in b.plan.tensors]
    assert a.budget.loss == pytest.approx(b.budget.loss, rel=1e-12)
    assert a.plan.ftype == b.plan.ftype


def test_second_plan_reuses_the_cache(tmp_path, monkeypatch):
    calls = []
    real = sensitivity.tensor_loss

    def counting(*a, **k):
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(sensitivity, "tensor_loss", counting)
    path = tmp_path / "c.json"
    # a dry run measures but writes no cache; a real run measures again and writes it
    first = dry(path, target_size="2.2MB")
    assert not path.exists()
    n_first = len(calls)
    # 4 layers x 7 matrices with 14 candidates (Q2_K..Q6_K, Q4_0..Q5_1, IQ3_S, IQ4_XS, IQ4_NL, Q8_0,
    # F16: no i-quant that needs statistics), output >= Q5_K (Q5_0, Q5_K, Q5_1, Q6_K, Q8_0, F16),
    # token_embd >= Q3_K (all but Q2_K)
    assert n_first == 28 * 14 + 6 + 13 == first.budget.measured
    quantize(EXAMPLE, tmp_path / "a.gguf", target_size="2.2MB", sensitivity_cache=path)
    assert len(calls) == 2 * n_first
    second = dry(path, target_size="3.0MB")
    assert len(calls) == 2 * n_first and second.budget.measured == 0
    assert second.budget.loss < first.budget.loss
    entries = json.loads(path.read_text())["models"]
    assert sum(len(v) for v in entries.values()) == n_first


def test_importance_changes_the_key_and_the_loss(tmp_path):
    from qconvert.calib.imatrix import ImportanceMatrix
    from qconvert.source.model_source import open_source

    src = open_source(EXAMPLE)
    imx = ImportanceMatrix()
    rng = np.random.default_rng(0)
    for s in src.tensors:
        if s.name.startswith("blk.0.") and len(s.shape) == 2:
            imx.add(s.name, rng.uniform(0.1, 5, size=(1, s.shape[-1])).astype(np.float32), np.array([1]))
    targets = {"blk.0.attn_q.weight": ["Q4_K"]}
    plain, _ = sensitivity.measure(src, targets, cache_path=tmp_path / "c.json")
    weighted, n = sensitivity.measure(src, targets, imatrix=imx, cache_path=tmp_path / "c.json")
    assert n == 1  # not served from the plain entry
    w = next(s for s in src.tensors if s.name == "blk.0.attn_q.weight").load()
    imp = imx.get("blk.0.attn_q.weight")
    from qconvert import kernels
    q = kernels.decode("Q4_K", kernels.encode("Q4_K", w, importance=np.broadcast_to(imp, w.shape))).reshape(w.shape)
    # weighted by the statistics relative to their mean over the tensor's columns
    expect = float((((w.astype(np.float64) - q) ** 2) * imp).sum()) / float(imp.astype(np.float32).mean())
    assert weighted[("blk.0.attn_q.weight", "Q4_K")] == pytest.approx(expect, rel=1e-6)  # float32 mean
    assert weighted != plain


def test_row_sample_scales_to_the_whole(monkeypatch):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4096, 256)).astype(np.float32)
    full = sensitivity.tensor_loss(w, "Q4_K")
    monkeypatch.setattr(sensitivity, "MAX_SAMPLE_VALUES", 1 << 16)  # 256 of 4096 rows
    assert len(sensitivity.sample_rows(4096, 256, sensitivity.MAX_SAMPLE_VALUES)) == 256
    sampled = sensitivity.tensor_loss(w, "Q4_K")
    assert sampled != full
    assert sampled == pytest.approx(full, rel=0.05)


def test_solver_equals_brute_force():
    rng = random.Random(7)
    for trial in range(40):
        n_items, n_opts = rng.randint(2, 5), rng.randint(2, 4)
        items = {}
        for i in range(n_items):
            sizes = sorted(rng.sample(range(10, 200), n_opts))
            losses = sorted((rng.uniform(0, 100) for _ in range(n_opts)), reverse=True)
            items[f"t{i}"] = [Option(f"T{j}", b, l) for j, (b, l) in enumerate(zip(sizes, losses))]
        lo = sum(o[0].nbytes for o in items.values())
        hi = sum(o[-1].nbytes for o in items.values())
        budget = rng.randint(lo, hi)
        brute = min(sum(o.loss for o in combo) for combo in itertools.product(*items.values())
                    if sum(o.nbytes for o in combo) <= budget)
        sol = solve(items, budget)
        assert sol.nbytes <= budget
        assert sol.loss == pytest.approx(brute, abs=1e-9), trial
        # without the search, the Lagrangian + greedy answer is within its reported gap
        fast = solve(items, budget, node_limit=0)
        assert fast.nbytes <= budget
        assert fast.lower_bound <= brute + 1e-9 <= fast.loss + 1e-9
        assert fast.loss - brute <= fast.gap + 1e-9


def test_solver_budget_error():
    items = {"a": [Option("Q2_K", 50, 3.0), Option("Q4_K", 80, 1.0)], "b": [Option("Q2_K", 60, 2.0)]}
    with pytest.raises(BudgetError) as ei:
        solve(items, 109)
    assert ei.value.smallest == 110


@pytest.mark.parametrize("kv_type,elem", [("F16", 2.0), ("Q8_0", 34 / 32)])
def test_target_vram_accounting(cache, kv_type, elem):
    ctx = 8192
    # tiny-llama: 4 layers, 2 KV heads of 64, K and V
    kv = int(np.ceil(2 * 4 * 2 * 64 * ctx * elem))
    # leave 3 MB for weights: between the smallest mix (1.6 MB) and Q8_0 everywhere (4.5 MB)
    vram = kv + runtime_overhead_bytes(3_000_000, ctx, n_vocab=2048) + 3_000_000
    res = dry(cache, target_vram=vram, context=ctx, kv_type=kv_type)
    b = res.budget
    assert len({t.qtype.name for t in res.plan.tensors if t.qtype.quantized}) > 1
    assert b.kv_bytes == kv
    assert b.overhead_bytes == runtime_overhead_bytes(b.weights_bytes, ctx, n_vocab=2048)
    assert b.vram_total == b.weights_bytes + kv + b.overhead_bytes <= vram
    # the weights' budget is VRAM - KV - overhead, exactly
    w = b.weight_budget
    assert w + kv + runtime_overhead_bytes(w, ctx, n_vocab=2048) <= vram
    assert w + 1 + kv + runtime_overhead_bytes(w + 1, ctx, n_vocab=2048) > vram
    assert b.weights_bytes <= w
    assert b.weights_bytes > 0.97 * w  # the budget is used


def test_target_vram_too_small(cache):
    with pytest.raises(BudgetError, match="cannot be met at context 4096"):
        dry(cache, target_vram="100MB", context=4096)


def test_cli_dry_run_prints_losses_and_memory(cache, monkeypatch, capsys):
    from qconvert.cli.app import main

    monkeypatch.setattr(sys, "argv", ["qconvert", "quantize", str(EXAMPLE), "--target-vram", "553MB",
                                      "--context", "4096", "--kv-type", "q8_0", "--dry-run",
                                      "--sensitivity-cache", str(cache)])
    monkeypatch.setenv("COLUMNS", "250")
    try:
        main()
    except SystemExit as e:
        assert not e.code
    out = capsys.readouterr().out
    assert "pred. loss" in out and "budget: Q" in out
    assert "memory: weights" in out and "KV cache" in out and "runtime overhead" in out
    assert "predicted file size" in out


def test_target_conflicts_with_type(cache):
    from qconvert.errors import InputError

    with pytest.raises(InputError, match="--type"):
        dry(cache, target_size="2MB", type="Q4_K_M")
    with pytest.raises(InputError, match="not several"):
        dry(cache, target_size="2MB", target_bpw=4.0)

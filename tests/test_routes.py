"""The quantize request and its routes: every option is consumed by the route a job takes
or refused by name; defaults never count as given; routes come from a registry; plans stay
values and the writer pairs tensors by name; the help is grouped and fits 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import qconvert
from qconvert.errors import InputError
from qconvert.job import FLAGS, build_job
from qconvert.routes import ROUTES, route_for, route_name

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-llama"

# the route each column is, as quantize keywords
ROUTE_JOBS = {
    "gguf": {},
    "gguf-sized": {"target_size": "1GB"},
    "gguf-sized-vram": {"target_vram": "8GB"},
    "gguf-gptq": {"scheme": "gptq"},
    "safetensors": {"format": "safetensors"},
    "safetensors-gptq": {"format": "safetensors", "scheme": "gptq"},
    "gguf-awq": {"scheme": "awq"},
    "safetensors-awq": {"format": "safetensors", "scheme": "awq"},
}
# a value for each option; options used only with calibration are tried with calibration on
VALUES = {"type": "Q4_K_M", "bits": 4, "tensor_types": ["attn_v=Q8_0"], "output_tensor_type": "Q8_0",
          "token_embedding_type": "Q8_0", "pure": True, "allow_requantize": True, "no_fallback": True,
          "vocab_pre": "llama-bpe", "imatrix": "x.imatrix", "calibration": True, "calibration_samples": 8,
          "calibration_seqlen": 64, "device": "cpu", "save_imatrix": "s.gguf", "group_size": 64, "sym": False,
          "act_order": True, "damp": 0.02, "context": 2048, "kv_type": "q8_0", "sensitivity_cache": "c.json",
          "split_max_size": "50GB", "split_max_tensors": 256, "candidates": "k,legacy", "scale_search": "thorough"}
WITH_CALIBRATION = {"calibration_samples", "calibration_seqlen", "device", "save_imatrix"}
C, R = "consumed", "refused"
#                          gguf sized sized-vram gptq st st-gptq awq st-awq
TABLE = {
    "type":                 (C, R, R, C, R, R, C, R),
    "bits":                 (C, R, R, C, C, C, C, C),
    "tensor_types":         (C, R, R, C, R, R, C, R),
    "output_tensor_type":   (C, R, R, C, R, R, C, R),
    "token_embedding_type": (C, R, R, C, R, R, C, R),
    "pure":                 (C, R, R, C, R, R, C, R),
    "allow_requantize":     (C, C, C, R, R, R, R, R),
    "no_fallback":          (C, C, C, C, C, C, C, C),
    "vocab_pre":            (C, C, C, C, R, R, C, R),
    "imatrix":              (C, C, C, R, R, R, R, R),
    "calibration":          (C, C, C, C, R, C, C, C),
    "calibration_samples":  (C, C, C, C, R, C, C, C),
    "calibration_seqlen":   (C, C, C, C, R, C, C, C),
    "device":               (C, C, C, C, R, C, C, C),
    "save_imatrix":         (C, C, C, R, R, R, R, R),
    "group_size":           (R, R, R, R, C, C, R, C),
    "sym":                  (R, R, R, R, C, C, R, C),
    "act_order":            (R, R, R, R, R, C, R, R),
    "damp":                 (R, R, R, C, R, C, R, R),
    "context":              (R, R, C, R, R, R, R, R),
    "kv_type":              (R, R, C, R, R, R, R, R),
    "sensitivity_cache":    (R, C, C, R, R, R, R, R),
    "split_max_size":       (C, C, C, C, R, R, C, R),
    "split_max_tensors":    (C, C, C, C, R, R, C, R),
    "candidates":           (R, C, C, R, R, R, R, R),
    "scale_search":         (C, C, C, C, R, R, C, R),
}


def outcome(kw: dict) -> str:
    try:
        route_for(build_job(EXAMPLE, **kw))
    except InputError as e:
        assert "not used by" in str(e)
        return R
    return C


@pytest.mark.parametrize("option", sorted(TABLE))
def test_every_option_is_consumed_or_refused_per_route(option):
    got = []
    for base in ROUTE_JOBS.values():
        kw = dict(base, **{option: VALUES[option]})
        if option in WITH_CALIBRATION:
            kw.setdefault("calibration", True)
        got.append(outcome(kw))
    assert tuple(got) == TABLE[option]


def test_options_used_only_with_calibration_are_refused_without_it():
    for option in sorted(WITH_CALIBRATION):
        assert outcome({option: VALUES[option]}) == R, option
    assert outcome({"format": "safetensors", "scheme": "gptq", "act_order": True}) == C
    assert outcome({"format": "safetensors", "act_order": True}) == R


def test_every_cli_option_is_in_the_table_or_used_by_all_routes():
    common = {"output", "force", "dry_run", "progress", "format", "scheme", "allow_nonfinite"}
    targets = {"target_size", "target_bpw", "target_vram"}
    assert set(FLAGS) == set(TABLE) | common | targets


def test_defaults_do_not_count_as_given():
    job = build_job(EXAMPLE, None, calibration_samples=None, sym=None, act_order=False, tensor_types=(),
                    group_size=None, damp=None, pure=False)
    assert job.given == frozenset()
    assert (job.calibration.samples, job.scheme.sym, job.scheme.group_size, job.scheme.damp) == (128, True, 128, 0.01)
    assert build_job(EXAMPLE, sym=True).given == {"sym"}  # --sym is a choice too


def test_refusal_names_every_unused_option():
    with pytest.raises(InputError) as e:
        qconvert.quantize(EXAMPLE, type="F16", sym=False, act_order=True, group_size=64, save_imatrix="x",
                          dry_run=True)
    msg = str(e.value)
    for name in ("--asym", "--act-order", "--group-size", "--save-imatrix"):
        assert name in msg
    assert "--dry-run" not in msg.split(":")[0] and "--type" not in msg.split(":")[0]
    with pytest.raises(InputError, match="--imatrix"):
        qconvert.quantize(EXAMPLE, format="safetensors", imatrix="x.gguf", dry_run=True)
    with pytest.raises(TypeError, match="bogus"):
        qconvert.quantize(EXAMPLE, bogus=1)


def run_cli(*args, columns: int = 250):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS=str(columns))
    return subprocess.run([sys.executable, "-m", "qconvert", *map(str, args)], capture_output=True, text=True,
                          env=env)


def test_cli_refuses_unused_options_with_exit_2(tmp_path):
    r = run_cli("quantize", EXAMPLE, "--type", "F16", "--asym", "--act-order", "--group-size", "64",
                "--save-imatrix", tmp_path / "x", "--dry-run")
    assert r.returncode == 2
    assert all(n in r.stderr for n in ("--asym", "--act-order", "--group-size", "--save-imatrix"))
    r = run_cli("quantize", EXAMPLE, "--format", "safetensors", "--imatrix", tmp_path / "x", "--dry-run")
    assert r.returncode == 2 and "--imatrix" in r.stderr
    assert not (tmp_path / "x").exists()


def test_routes_come_from_the_registry():
    assert set(ROUTES.names()) == {"gguf", "gguf-sized", "gguf-sized-gptq", "gguf-gptq", "gguf-awq", "gguf-awq-gptq",
                                   "safetensors"}
    assert route_name(build_job(EXAMPLE, scheme="gptq-imatrix", target_size="1GB")) == "gguf-sized-gptq"
    assert route_name(build_job(EXAMPLE, scheme="awq")) == "gguf-awq"
    assert route_name(build_job(EXAMPLE, scheme="gptq-imatrix")) == "gguf-gptq"
    assert route_name(build_job(EXAMPLE, scheme="awq", format="safetensors")) == "safetensors"
    for name, kw in ROUTE_JOBS.items():
        want = name.removesuffix("-vram")
        assert route_name(build_job(EXAMPLE, **kw)) == ("safetensors" if want.startswith("safetensors") else want)


def test_help_is_grouped_and_fits_80_columns():
    r = run_cli("quantize", "--help", columns=80)
    assert r.returncode == 0
    for panel in ("Output", "Types", "Calibration", "Budget", "Safetensors"):
        assert f"─ {panel} ─" in r.stdout, panel
    assert r.stdout.count("qconvert quantize ./") == 3  # the examples
    assert max(map(len, r.stdout.splitlines())) <= 80
    words = set(r.stdout.replace("│", " ").split())
    for option in list(FLAGS.values()) + ["--no-progress"]:
        for name in option.split("/"):
            assert name in words, name  # whole, not cut by the column width


def test_writer_pairs_source_and_plan_by_name():
    from dataclasses import replace

    from qconvert.routes.gguf_file import paired
    from qconvert.plan.type_plan import make_quant_plan
    from qconvert.source.model_source import open_source

    src = open_source(EXAMPLE)
    plan = make_quant_plan(src, "Q8_0")
    shuffled = replace(plan, tensors=plan.tensors[::-1])
    assert [(s.name, tp.name) for s, tp in paired(src, shuffled)] == [(t.name, t.name) for t in shuffled.tensors]
    with pytest.raises(InputError, match="planned but absent: .*present but unplanned: output_norm.weight"):
        paired(src, replace(plan, tensors=[t if t.name != "output_norm.weight" else replace(t, name="x.weight")
                                           for t in plan.tensors]))


def test_schemes_return_new_plans():
    import numpy as np

    from qconvert.plan.type_plan import make_quant_plan
    from qconvert.schemes.gptq_driver import gptq_plan
    from qconvert.schemes.importance import importance_plan
    from qconvert.source.model_source import open_source

    src = open_source(EXAMPLE)
    plan = make_quant_plan(src, "Q4_K_M")
    before = [(t.name, t.scheme) for t in plan.tensors]
    stats = {t.name: np.ones(t.shape[-1], np.float32) for t in plan.tensors if t.name.startswith("blk.")}
    marked, _ = importance_plan(plan, stats)
    gptq, linears = gptq_plan(plan, src)
    assert [(t.name, t.scheme) for t in plan.tensors] == before  # the input plan is untouched
    assert {t.scheme for t in marked.tensors} == {"rtn", "importance"}
    assert {t.scheme for t in gptq.tensors} >= {"gptq"} and len(linears) > 0

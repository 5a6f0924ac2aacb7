"""A Hugging Face model id as MODEL, from huggingface_hub's cache: a cache laid out as
huggingface_hub lays it out (models--ORG--NAME/{refs,blobs,snapshots}) is built here and
read with HF_HUB_OFFLINE=1 (no network on these machines)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from qconvert.source import hub

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_cache(root: Path, repo_id: str, model_dir: Path, skip: tuple[str, ...] = ()) -> Path:
    """huggingface_hub's cache of `repo_id` holding model_dir's files (blobs by content
    hash, the snapshot linking to them, refs/main naming the snapshot)."""
    org, name = repo_id.split("/")
    repo = root / f"models--{org}--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in sorted(model_dir.iterdir()):
        if f.name in skip:
            continue
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return snap


def run_cli(*args, cwd, cache: Path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               HF_HOME=str(cache.parent / "hf-home"))
    return subprocess.run([sys.executable, "-m", "qconvert", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def test_a_model_id_converts_from_the_cache_offline(tiny, tmp_path):
    model = tiny("llama")
    cache = tmp_path / "hub"
    make_cache(cache, "acme/Tiny-Llama-1B", model)
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("quantize", "acme/Tiny-Llama-1B", "-t", "Q8_0", cwd=work, cache=cache)
    assert r.returncode == 0, r.stderr
    out = work / "Tiny-Llama-1B-Q8_0.gguf"  # named after the model, not the snapshot's hash
    assert out.is_file() and str(out) in r.stderr.replace("\n", "")
    direct = run_cli("quantize", model, "-t", "Q8_0", "-o", tmp_path / "direct.gguf", cwd=work, cache=cache)
    assert direct.returncode == 0, direct.stderr
    assert tensor_bytes(out) == tensor_bytes(tmp_path / "direct.gguf")
    # the cache is only read: no file added, none changed
    assert sorted(p.name for p in (cache / "models--acme--Tiny-Llama-1B" / "blobs").iterdir()) == sorted(
        hashlib.sha256(f.read_bytes()).hexdigest() for f in model.iterdir())


def test_safetensors_output_from_an_id_is_named_after_the_model(tiny, tmp_path):
    cache = tmp_path / "hub"
    make_cache(cache, "acme/Tiny-Llama-1B", tiny("llama"))
    r = run_cli("quantize", "acme/Tiny-Llama-1B", "--format", "safetensors", cwd=tmp_path, cache=cache)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir() if p != cache] == ["Tiny-Llama-1B-W4A16-G128"]


def test_an_unknown_id_offline_is_one_line_error(tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    r = run_cli("quantize", "acme/no-such-model", "-t", "Q8_0", cwd=tmp_path, cache=cache)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "acme/no-such-model" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0], r.stderr
    assert str(cache) in lines[0]
    assert list(tmp_path.iterdir()) == [cache]


def test_a_cached_model_missing_a_shard_is_one_line_error(tiny, tmp_path):
    model = tiny("llama")
    cache = tmp_path / "hub"
    make_cache(cache, "acme/partial", model, skip=("model-00002-of-00006.safetensors",))
    r = run_cli("quantize", "acme/partial", "-t", "Q8_0", cwd=tmp_path, cache=cache)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "model-00002-of-00006.safetensors" in r.stderr and "missing" in r.stderr
    assert not list(tmp_path.glob("*.gguf"))


def test_an_existing_path_is_never_taken_for_an_id(tiny, tmp_path):
    model = tiny("llama")
    local = tmp_path / "acme" / "Tiny-Llama-1B"
    local.parent.mkdir()
    local.symlink_to(model)
    cache = tmp_path / "hub"
    cache.mkdir()  # empty: a fetch would fail
    r = run_cli("quantize", "acme/Tiny-Llama-1B", "-t", "Q8_0", cwd=tmp_path, cache=cache)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "llama-Q8_0.gguf").is_file()


def test_what_is_fetched(tmp_path, monkeypatch):
    """Config and tokenizer first; then exactly the shards the index lists (not a
    consolidated duplicate, nor .bin files), or top-level safetensors without an index."""
    calls = []
    snap = tmp_path / "snap"
    snap.mkdir()

    def download(repo_id, patterns, ignore=None):
        calls.append((repo_id, list(patterns), ignore))
        return snap

    monkeypatch.setattr(hub, "_download", download)
    hub.fetch("acme/m", progress=False)
    assert calls[1] == ("acme/m", ["*.safetensors"], ["*/*", "consolidated*"])
    assert "config.json" in calls[0][1] and "tokenizer.json" in calls[0][1]
    assert not [p for p in calls[0][1] if p.endswith((".bin", ".safetensors", ".pth"))]
    (snap / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",'
        ' "c": "model-00002-of-00002.safetensors"}}')
    calls.clear()
    hub.fetch("acme/m", progress=False)
    assert calls[1][1] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


@pytest.mark.parametrize("text,is_id", [("Qwen/Qwen3-8B", True), ("meta-llama/Llama-3.1-8B", True),
                                        ("./Qwen3-8B", False), ("/abs/path", False), ("a/b/c", False),
                                        ("Qwen3-8B", False), ("../x", False), ("org/..", False), ("", False)])
def test_what_reads_as_an_id(text, is_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.looks_like_id(text) is is_id

"""Output safety: quantize replaces only regular files, never a file it reads, checks its
outputs before any long work, refuses a sensitivity cache path holding anything else and
writes nothing on a dry run, keeps the old output until the new one is complete, and
cleans the temporary files of dead runs. Every refusal is checked to change nothing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

import qconvert
from qconvert.errors import InputError, OutputExistsError
from qconvert.sink import atomic as atomic_mod
from qconvert.sink import atomic_dir as atomic_dir_mod
from qconvert.sink.atomic import atomic_path
from qconvert.sink.atomic_dir import atomic_dir

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny-llama"


def cli(*args, cwd=None, env=None, timeout=120):
    exe = shutil.which("qconvert")
    cmd = [exe] if exe else [sys.executable, "-m", "qconvert"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def snapshot(*roots: Path) -> dict:
    """Type, identity, size, mtime and content hash of every entry under roots (for a
    directory its entries stand for its content: the output check creates and removes a
    probe file in a valid output's directory, which touches the directory's mtime)."""
    snap = {}
    for root in roots:
        for p in [root, *(sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])]:
            st = os.lstat(p)
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            snap[str(p)] = (stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, mtime, st.st_rdev, digest)
    return snap


def refused(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert ".partial" not in lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("safety") / "model"
    shutil.copytree(EXAMPLE, d)
    return d


# -- never replace anything but a regular file --------------------------------------------------

@pytest.mark.parametrize("args", [("-o", "/dev/null", "--force"), ("-o", "/dev/full"), ("-o", "/dev/null")])
def test_devices_are_refused_and_stay_devices(model, tmp_path, args):
    dev = Path(args[1])
    before = snapshot(dev, tmp_path)
    r = cli("quantize", model, "-t", "Q8_0", *args, cwd=tmp_path)
    refused(r, str(dev), "character device")
    assert stat.S_ISCHR(os.stat(dev).st_mode)
    assert snapshot(dev, tmp_path) == before


def test_fifo_socket_and_directory_are_refused(model, tmp_path):
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.gguf"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    d = tmp_path / "dir.gguf"
    d.mkdir()
    (d / "keep").write_text("x")
    try:
        before = snapshot(tmp_path)
        # a FIFO opened for writing would block: the CLI with a timeout proves it is not opened
        refused(cli("quantize", model, "-t", "Q8_0", "-o", fifo, "--force", cwd=tmp_path, timeout=60), "a FIFO")
        with pytest.raises(InputError, match="a socket"):
            qconvert.quantize(model, sock_path, type="Q8_0", force=True)
        with pytest.raises(InputError, match="is a directory"):
            qconvert.quantize(model, d, type="Q8_0", force=True)
        for fmt_out in (fifo, sock_path):
            with pytest.raises(InputError, match="give a directory name"):
                qconvert.quantize(model, fmt_out, format="safetensors", force=True)
        assert snapshot(tmp_path) == before
    finally:
        sock.close()


# -- never a file of the input ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_model_files_are_refused_as_output(model, name):
    before = snapshot(model)
    refused(cli("quantize", model, "-t", "Q8_0", "-o", model / name, "--force"), str(model / name), "reads")
    assert snapshot(model) == before


def test_hard_and_symbolic_links_to_model_files_are_refused(model, tmp_path):
    hard = tmp_path / "hard.gguf"
    os.link(model / "model.safetensors", hard)
    soft = tmp_path / "soft.gguf"
    soft.symlink_to(model / "tokenizer.json")
    before = snapshot(model, tmp_path)
    for out in (hard, soft, model / "tokenizer_config.json", model / ".." / model.name / "config.json"):
        with pytest.raises(InputError, match="reads"):
            qconvert.quantize(model, out, type="Q8_0", force=True)
    # --save-imatrix is an output too
    with pytest.raises(InputError, match="reads"):
        qconvert.quantize(model, tmp_path / "x.gguf", type="Q8_0", calibration=True, save_imatrix=hard)
    assert snapshot(model, tmp_path) == before


def test_hub_cache_layout_blob_is_refused(tmp_path):
    """A hub cache snapshot: the model's files are links to blobs. Writing to the link's
    name, or to the blob, would overwrite the weights."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in EXAMPLE.iterdir():
        shutil.copy2(f, blobs / f.name)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / f.name)
    before = snapshot(tmp_path)
    for out in (snap / "model.safetensors", blobs / "model.safetensors", blobs / "config.json"):
        with pytest.raises(InputError, match="reads"):
            qconvert.quantize(snap, out, type="Q8_0", force=True)
    assert snapshot(tmp_path) == before


def test_gguf_input_and_its_hard_link_are_refused(model, tmp_path):
    src = qconvert.quantize(model, tmp_path / "in-F16.gguf", type="F16").output
    link = tmp_path / "link.gguf"
    os.link(src, link)
    before = snapshot(tmp_path)
    for out in (src, link):
        with pytest.raises(InputError, match="reads"):
            qconvert.quantize(src, out, type="Q8_0", force=True)
    assert snapshot(tmp_path) == before


def test_safetensors_output_dir_over_the_model_is_refused(model, tmp_path):
    link = tmp_path / "model-link"
    link.symlink_to(model, target_is_directory=True)
    before = snapshot(model)
    for out in (model, model / ".." / model.name, model.parent, link, Path("/")):
        with pytest.raises(InputError, match="holds the input model"):
            qconvert.quantize(model, out, format="safetensors", force=True)
    assert snapshot(model) == before


# -- symbolic links are followed to a regular file ----------------------------------------------

def test_symlink_output_writes_its_target(model, tmp_path):
    real = tmp_path / "real.gguf"
    real.write_bytes(b"old output")
    link = tmp_path / "link.gguf"
    link.symlink_to(real.name)
    with pytest.raises(OutputExistsError):
        qconvert.quantize(model, link, type="Q8_0")
    res = qconvert.quantize(model, link, type="Q8_0", force=True)
    assert link.is_symlink() and os.readlink(link) == real.name
    assert res.output == real
    assert len(gguf.GGUFReader(real).tensors) == len(res.plan.tensors)
    # a dangling link: its target is created; a link to a device: refused
    dangling = tmp_path / "dangling.gguf"
    dangling.symlink_to("made.gguf")
    qconvert.quantize(model, dangling, type="Q8_0")
    assert dangling.is_symlink() and (tmp_path / "made.gguf").is_file()
    null = tmp_path / "null.gguf"
    null.symlink_to("/dev/null")
    with pytest.raises(InputError, match="character device"):
        qconvert.quantize(model, null, type="Q8_0", force=True)
    assert null.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.gguf", "link.gguf", "made.gguf", "null.gguf",
                                                          "real.gguf"]


# -- checked before any long work; one line naming the output -----------------------------------

@pytest.mark.parametrize("out, words", [
    ("/proc/qconvert-x.gguf", ("/proc/qconvert-x.gguf", "cannot write in /proc")),
    ("{model}/config.json/x.gguf", ("config.json/x.gguf", "Not a directory")),
    ("missing-dir/x.gguf", ("missing-dir/x.gguf", "does not exist")),
])
def test_unwritable_output_is_one_line_naming_it(model, tmp_path, out, words):
    out = out.format(model=model)
    refused(cli("quantize", model, "-t", "Q8_0", "-o", out, cwd=tmp_path), *words)
    refused(cli("quantize", model, "--format", "safetensors", "-o", out + "-st", cwd=tmp_path), words[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw", [
    dict(type="Q4_K_M", calibration=True),
    dict(type="Q4_K_M", scheme="gptq"),
    dict(target_size="3MB", calibration=True),
    dict(format="safetensors", scheme="gptq"),
], ids=["importance", "gptq", "sized", "safetensors-gptq"])
def test_output_is_checked_before_calibration(model, tmp_path, monkeypatch, kw):
    """With transformers unimportable, calibration cannot start: the output's error must
    come first (before the change it came after the calibration pass)."""
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = "/proc/qconvert-x" + (".gguf" if kw.get("format") != "safetensors" else "")
    with pytest.raises(InputError, match="/proc/qconvert-x"):
        qconvert.quantize(model, out, **kw)
    if "calibration" in kw:  # --save-imatrix too
        with pytest.raises(InputError, match="character device"):
            qconvert.quantize(model, tmp_path / "o.gguf", save_imatrix="/dev/null", **kw)
    assert not (tmp_path / "xdg").exists() and list(tmp_path.iterdir()) == []


# -- names and spellings that would write somewhere else than meant ---------------------------

@pytest.mark.parametrize("out, words", [
    ("a\nb.gguf", ("a\\x0ab.gguf", "control character")),
    ("x" * 300 + ".gguf", ("File name too long",)),
    ("x" * 250 + ".gguf", ("255 bytes", "shorter name")),  # fits, but .NAME.PID.partial does not
    ("x" * 300 + "/o.gguf", ("File name too long",)),
    ("", ("--output ''", "empty path")),
    ("out/", ("--output out/", "trailing '/'")),
], ids=["newline", "300-bytes", "250-bytes", "300-byte-dir", "empty", "trailing-slash"])
def test_output_names_that_cannot_be_written_as_given_are_refused(model, tmp_path, out, words):
    refused(cli("quantize", model, "-t", "Q8_0", "-o", out, "--force", cwd=tmp_path), *words)
    assert list(tmp_path.iterdir()) == []


def test_trailing_slash_on_an_existing_file_is_refused(model, tmp_path):
    old = tmp_path / "x.gguf"
    old.write_bytes(b"old output")
    refused(cli("quantize", model, "-t", "Q8_0", "-o", "x.gguf/", "--force", cwd=tmp_path), "trailing '/'")
    assert old.read_bytes() == b"old output"
    # a directory output may end in '/'
    assert cli("quantize", model, "--format", "safetensors", "-o", "st/", cwd=tmp_path).returncode == 0
    assert (tmp_path / "st" / "config.json").is_file()


def test_default_output_inside_the_model_directory_can_be_replaced(model, tmp_path):
    """`cd model && qconvert quantize .` writes ./model-Q4_K_M.gguf among the model's files:
    a second run says it exists, and --force replaces it (it is not a file the run reads);
    the model's own files stay refused."""
    m = tmp_path / "m"
    shutil.copytree(model, m)
    assert cli("quantize", ".", "--bits", "4", cwd=m).returncode == 0
    out = m / "m-Q4_K_M.gguf"
    refused(cli("quantize", ".", "--bits", "4", cwd=m), "already exists", "--force")
    first = os.stat(out).st_ino
    r = cli("quantize", ".", "--bits", "4", "--pure", "--force", cwd=m)
    assert r.returncode == 0, r.stderr
    assert os.stat(out).st_ino != first  # replaced by the new file, renamed into place
    assert {t.tensor_type.name for t in gguf.GGUFReader(out).tensors} == {"F32", "Q4_K"}  # --pure's plan
    assert sorted(p.name for p in m.glob("*.gguf")) == [out.name]
    refused(cli("quantize", ".", "-o", "config.json", "--force", cwd=m), "reads")


def test_empty_model_path_is_refused(model, tmp_path):
    shutil.copytree(model, tmp_path / "m")
    before = snapshot(tmp_path)
    refused(cli("quantize", "", "-t", "Q8_0", cwd=tmp_path / "m"), "MODEL ''", "empty path")
    assert snapshot(tmp_path) == before


def test_one_path_for_two_outputs_is_refused(model, tmp_path, monkeypatch):
    """The statistics and the model in one file: one would overwrite the other. Refused
    before calibration (transformers made unimportable proves it never started)."""
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.chdir(tmp_path)
    for out, save in (("x.gguf", "x.gguf"), ("x.gguf", "./sub/../x.gguf"), (None, "model-Q4_K_M.gguf")):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(InputError, match="given as both --output and --save-imatrix"):
            qconvert.quantize(model, out, type="Q4_K_M", calibration=True, save_imatrix=save)
    with pytest.raises(InputError, match="given as both --output and --sensitivity-cache"):
        qconvert.quantize(model, "s.gguf", target_size="3MB", sensitivity_cache="s.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]


def test_force_replaces_only_a_checkpoint_directory(model, tmp_path):
    """--force on a safetensors output swaps the whole directory: one holding anything but
    a checkpoint's files (notes, a subdirectory) is refused with nothing deleted."""
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    (notes / "sub" / "a.bin").write_bytes(b"x")
    before = snapshot(tmp_path)
    refused(cli("quantize", model, "--format", "safetensors", "-o", notes, "--force"), "notes", "'sub' and 1 more",
            "not a checkpoint file")
    assert snapshot(tmp_path) == before
    # an earlier output, or an empty directory, is replaced
    out = tmp_path / "st"
    out.mkdir()
    qconvert.quantize(model, out, format="safetensors", force=True)
    qconvert.quantize(model, out, format="safetensors", bits=8, force=True)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]


# -- the sensitivity cache ----------------------------------------------------------------------

def test_sensitivity_cache_holding_anything_else_is_refused(model, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    other_json = tmp_path / "other.json"
    other_json.write_text(json.dumps({"version": 1, "models": {}, "mine": True}))
    a_dir = tmp_path / "dir"
    a_dir.mkdir()
    before = snapshot(tmp_path)
    r = cli("quantize", model, "--target-size", "3MB", "--sensitivity-cache", passwd, "--dry-run", cwd=tmp_path)
    refused(r, str(passwd), "not a qconvert sensitivity cache")
    for path in (passwd, other_json, a_dir, Path("/dev/null")):
        for dry in (True, False):
            with pytest.raises(InputError, match="not a qconvert sensitivity cache"):
                qconvert.quantize(model, tmp_path / "o.gguf", target_size="3MB", sensitivity_cache=path, dry_run=dry)
    assert snapshot(tmp_path) == before


def test_unwritable_cache_path_is_refused_before_measuring(model, tmp_path, monkeypatch):
    """A cache the run could not save (in /proc, or a name with a newline) was found out
    after every measurement; now before any (measure() made unreachable proves it)."""
    import qconvert.plan.sized as sized_mod

    monkeypatch.setattr(sized_mod, "sized_plan", lambda *a, **k: pytest.fail("measured before the cache check"))
    for cache, words in (("/proc/qc.json", "cannot write in /proc"), (tmp_path / "a\nb.json", "control character")):
        with pytest.raises(InputError, match=words):
            qconvert.quantize(model, tmp_path / "o.gguf", target_size="3MB", sensitivity_cache=cache)
    assert list(tmp_path.iterdir()) == []


def test_dry_run_writes_no_cache_and_a_real_run_writes_a_marked_one(model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    qconvert.quantize(model, dry_run=True, target_size="3MB")
    cache = tmp_path / "c" / "sens.json"
    qconvert.quantize(model, dry_run=True, target_size="3MB", sensitivity_cache=cache)
    assert list(tmp_path.iterdir()) == []  # neither the default cache directory nor the given file
    cache.parent.mkdir()
    qconvert.quantize(model, tmp_path / "o.gguf", target_size="3MB", sensitivity_cache=cache)
    d = json.loads(cache.read_text())
    assert d["format"] == "qconvert sensitivity cache" and d["models"]
    assert sorted(p.name for p in cache.parent.iterdir()) == ["sens.json"]
    before = snapshot(cache)
    res = qconvert.quantize(model, dry_run=True, target_size="2.5MB", sensitivity_cache=cache)
    assert res.budget.measured == 0 and snapshot(cache) == before
    # an empty file (mktemp) holds no cache to lose: it is used
    empty = tmp_path / "empty.json"
    empty.touch()
    qconvert.quantize(model, tmp_path / "o2.gguf", target_size="3MB", sensitivity_cache=empty)
    assert json.loads(empty.read_text())["format"] == "qconvert sensitivity cache"


# -- atomic writes ------------------------------------------------------------------------------

def test_failed_write_keeps_the_old_output(model, tmp_path, monkeypatch):
    from qconvert.sink.gguf import GGUFSink

    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous output")
    calls = []
    real = GGUFSink.write_parts  # every tensor goes out through it, piece after piece

    def failing(self, tp, parts):
        calls.append(tp.name)
        if len(calls) == 3:
            raise RuntimeError("disk trouble")
        return real(self, tp, parts)

    monkeypatch.setattr(GGUFSink, "write_parts", failing)
    with pytest.raises(RuntimeError):
        qconvert.quantize(model, out, type="Q8_0", force=True)
    assert out.read_bytes() == b"previous output"
    assert [p.name for p in tmp_path.iterdir()] == ["o.gguf"]


def test_file_is_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    out = tmp_path / "x.bin"
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"new")
    assert events == [("fsync", str(tmp)), ("replace", str(tmp)), ("fsync", str(tmp_path))]
    assert out.read_bytes() == b"new"


def test_disk_full_names_the_output_not_the_temporary_file(tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="x.gguf: cannot write the output") as ei:
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert ".partial" not in str(ei.value)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.gguf"]


def _old_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old weights")
    (out / "config.json").write_text("{}")
    return out


@pytest.mark.parametrize("can_exchange", [True, False])
def test_atomic_dir_replaces_the_old_directory(tmp_path, monkeypatch, can_exchange):
    if not can_exchange:
        monkeypatch.setattr(atomic_dir_mod, "exchange", lambda a, b: False)
    out = _old_dir(tmp_path)
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new weights")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"new weights"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("error", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt()])
def test_atomic_dir_restores_the_old_directory_when_the_new_cannot_move_in(tmp_path, monkeypatch, error):
    monkeypatch.setattr(atomic_dir_mod, "exchange", lambda a, b: False)
    out = _old_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = os.replace
    calls = []

    def flaky(a, b):
        calls.append((Path(a).name, Path(b).name))
        if len(calls) == 2:  # old moved aside; now the new one would move in
            raise error
        return real(a, b)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(type(error)):
        with atomic_dir(out) as tmp:
            (tmp / "model.safetensors").write_bytes(b"new weights")
    assert calls[0] == ("out", f".out.{os.getpid()}.old") and calls[2] == (f".out.{os.getpid()}.old", "out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_exchange_failure_keeps_the_old_directory(tmp_path, monkeypatch):
    def broken(a, b):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomic_dir_mod, "exchange", broken)
    out = _old_dir(tmp_path)
    before = snapshot(out)
    with pytest.raises(OSError):
        with atomic_dir(out) as tmp:
            (tmp / "model.safetensors").write_bytes(b"new weights")
    assert snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


# -- stale temporary files of dead runs ---------------------------------------------------------

def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_runs_are_removed(model, tmp_path):
    dead, live = dead_pid(), os.getppid()  # the parent: a live process other than the writer
    files = {f".o.gguf.{dead}.partial": "gone", f".other.bin.{dead}.partial": "gone",
             f".o.gguf.{live}.partial": "kept", f".o.gguf.{dead}.partialx": "kept", f"o2.gguf.{dead}.partial": "kept",
             f".o.gguf.partial": "kept", f".o.gguf.x{dead}.partial": "kept", f".o.gguf.{dead}.old": "kept"}
    for name in files:
        (tmp_path / name).write_text("x")
    dirs = {f".qconvert-gptq.{dead}.partial": "gone", f".st.{dead}.partial": "gone", f".st.{dead}.old": "gone",
            f".st.{live}.old": "kept", f".lost.{dead}.old": "restored"}
    for name in dirs:
        (tmp_path / name).mkdir()
        (tmp_path / name / "shard").write_text(name)
    (tmp_path / "st").mkdir()  # the output whose .old is stale: that one is deleted
    os.mkfifo(tmp_path / f".fifo.{dead}.partial")
    qconvert.quantize(model, tmp_path / "o.gguf", type="Q8_0")
    left = {p.name for p in tmp_path.iterdir()}
    expect_left = ({n for n, v in {**files, **dirs}.items() if v == "kept"}
                   | {"o.gguf", "st", "lost", f".fifo.{dead}.partial"})
    assert left == expect_left
    assert (tmp_path / "lost" / "shard").read_text() == f".lost.{dead}.old"  # moved back, not deleted

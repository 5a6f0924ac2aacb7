"""Run llama.cpp's own converter (convert_hf_to_gguf.py from a llama.cpp source tree) on a
test checkpoint, for tests that compare our GGUF with its output tensor by tensor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The converter names a BPE pre-tokenizer by hashing a test string's ids against a table of
# released models; a tokenizer trained in a test is in no table, so the name is given.
# Its XLM-RoBERTa vocabulary needs protobuf's sentencepiece_model_pb2 even when it reads
# tokenizer.json; where protobuf is absent only the token-type count is written, and the
# comparison leaves tokenizer.* out.
_RUNNER = """
import runpy, sys
src, pre = sys.argv[1], sys.argv[2]
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
try:
    import google.protobuf  # noqa: F401
except ImportError:
    import conversion.bert as bert
    bert.XLMRobertaModel._xlmroberta_set_vocab = lambda self: self.gguf_writer.add_token_type_count(
        self.hparams.get("type_vocab_size", 1))
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[3:]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def llama_cpp_source() -> Path | None:
    """A llama.cpp source tree: $LLAMA_CPP_SRC, /work/src/llama.cpp, or an unpacked
    llama-cpp-python sdist's vendor/llama.cpp."""
    def found():
        cands = [os.environ.get("LLAMA_CPP_SRC"), "/work/src/llama.cpp",
                 *sorted(map(str, Path("/tmp").glob("llama-src/*/vendor/llama.cpp")))]
        return next((Path(c) for c in cands if c and (Path(c) / "convert_hf_to_gguf.py").is_file()), None)

    return found() or (_fetch_sdist() and found())


def _fetch_sdist() -> bool:
    """Unpack the sdist of the llama-cpp-python the test extras installed (PyPI carries
    llama.cpp's whole source in it) under /tmp/llama-src/; False when PyPI cannot be reached."""
    import tarfile
    import tempfile

    import llama_cpp

    ver = llama_cpp.__version__
    dest = Path("/tmp/llama-src")
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                            f"llama-cpp-python=={ver}", "-d", d], capture_output=True, timeout=600)
        tars = list(Path(d).glob("*.tar.gz"))
        if r.returncode or not tars:
            return False
        dest.mkdir(exist_ok=True)
        with tarfile.open(tars[0]) as t:
            t.extractall(dest, filter="data")
    return True


def convert(src: Path, model_dir: Path, out: Path, outtype: str, pre: str = "default") -> Path:
    subprocess.run([sys.executable, "-c", _RUNNER, str(src), pre, str(model_dir), "--outfile", str(out),
                    "--outtype", outtype.lower()], check=True, capture_output=True)
    return out


def has_protobuf() -> bool:
    try:
        import google.protobuf  # noqa: F401
    except ImportError:
        return False
    return True

"""Where logits come from: one backend per way of running a model, registered by name.

A backend opens a model once and then maps one window of token ids to the logits of its
scored positions, float32 (n_scored, vocab). Nothing larger than one window's rows is ever
held, so a 150k-token vocabulary costs 150k * 4 bytes per scored position, not per text.

- "gguf": llama.cpp through llama-cpp-python, the program a GGUF is made for.
- "hf":   transformers' AutoModelForCausalLM in float32 on CPU: the original checkpoint
          (bf16 weights upcast exactly) or any quantized checkpoint transformers loads.

Threads default to one. Both llama.cpp and PyTorch spin at barriers between threads; on a
machine whose cores are busy with anything else, two threads ran a window of 256 tokens of a
1.5M-parameter model in ~1 s against ~35 ms with one (2-core CI box, load 5). Pass more
where the cores are free: the logits came out bit-identical with one and two threads for
both backends (Q4_K_M GGUF and the HF checkpoint of the tiny test Llama).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np

from ..errors import InputError, UnsupportedError
from ..registry import Registry


class LogitSource(Protocol):
    label: str  # what ran, for reports: "llama.cpp", "transformers float32"
    vocab: int  # token ids it takes: 0 .. vocab-1

    def __call__(self, tokens: np.ndarray, first: int) -> np.ndarray:
        """Logits at positions first .. len(tokens)-2, float32 (n_scored, vocab)."""

    def close(self) -> None: ...


BACKENDS: Registry[Callable[..., LogitSource]] = Registry("evaluation backend")


def backend_for(model: Path | str) -> str:
    """"gguf" for a .gguf file, "hf" for a directory."""
    path = Path(model)
    if path.is_dir():
        return "hf"
    if path.is_file() and (path.suffix.lower() == ".gguf" or _gguf_magic(path)):
        return "gguf"
    raise InputError(f"{path}: not a GGUF file or a model directory")


def _gguf_magic(path: Path) -> bool:
    """A file named otherwise (a link `model.bin -> x.gguf`) is a GGUF by its first bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def open_logits(model: Path | str, *, backend: Optional[str] = None, n_ctx: int = 512,
                threads: int = 1) -> LogitSource:
    return BACKENDS.get(backend or backend_for(model))(Path(model), n_ctx=n_ctx, threads=threads)


def check_vocab(model: Path | str, src: LogitSource, tokens: np.ndarray, reference_vocab: Optional[int] = None) -> None:
    """Before any window runs: every token id must be one the model has (llama.cpp fails a
    decode with an id past its vocabulary), and a candidate's vocabulary must be the
    reference's, or the two cannot be compared position by position."""
    from ..errors import ShapeError

    top = int(tokens.max()) if tokens.size else -1
    if reference_vocab is not None and src.vocab != reference_vocab:
        raise ShapeError(f"{model}: {src.vocab} tokens in its vocabulary, the reference has {reference_vocab}; "
                         "a different vocabulary cannot be compared")
    if top >= src.vocab:
        raise ShapeError(f"{model}: the text was tokenized with ids up to {top}, its vocabulary has {src.vocab}; "
                         "evaluate it with its own tokenizer (--tokenizer) or against a model of the same vocabulary")


@BACKENDS.register("gguf")
class LlamaCppLogits:
    label = "llama.cpp"

    def __init__(self, path: Path, *, n_ctx: int, threads: int) -> None:
        from .llama_model import open_llama

        # logits_all: llama.cpp otherwise returns the last position only. n_batch = n_ctx
        # so a window is one decode call, the same graph for every window.
        self.path = path
        self.llm = open_llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                              n_threads=threads, n_threads_batch=threads)
        self.vocab = self.llm.n_vocab()

    def __call__(self, tokens: np.ndarray, first: int) -> np.ndarray:
        from .llama_model import log_mark, with_reason

        self.llm.reset()  # a fresh KV cache: no window sees another
        mark = log_mark()
        try:
            self.llm.eval([int(t) for t in tokens])
        except RuntimeError as e:  # "llama_decode returned -1": the reason is in llama.cpp's log
            if "llama_decode" not in str(e):
                raise
            raise UnsupportedError(with_reason(f"{self.path}: llama.cpp could not run a window of {len(tokens)} "
                                               f"tokens ({e})", mark)) from None
        return np.array(self.llm.scores[first: len(tokens) - 1], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


@BACKENDS.register("hf")
class TransformersLogits:
    label = "transformers float32"

    def __init__(self, path: Path, *, n_ctx: int, threads: int) -> None:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar is not ours to show
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: no config.json; a model directory to evaluate needs one (or give a .gguf)")
        major = int(transformers.__version__.split(".")[0])
        kwargs = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
        try:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs).eval()
            self.vocab = int(self.model.get_input_embeddings().num_embeddings)
        except (OSError, ValueError, KeyError) as e:
            raise UnsupportedError(f"{path}: transformers cannot load this model for evaluation ({e})") from None
        self.torch = torch
        self._threads = torch.get_num_threads()  # process-wide: restored by close()
        torch.set_num_threads(threads)

    def __call__(self, tokens: np.ndarray, first: int) -> np.ndarray:
        torch = self.torch
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
        keep = len(tokens) - first  # positions first .. n-1; the last one predicts nothing we score
        with torch.inference_mode():
            logits = self.model(input_ids=ids, logits_to_keep=keep).logits[0]
        if logits.shape[0] != keep:  # a model class that ignores logits_to_keep
            logits = logits[first:]
        return logits[:-1].float().numpy()

    def close(self) -> None:
        self.model = None
        self.torch.set_num_threads(self._threads)

"""A Hugging Face model id as MODEL (`Qwen/Qwen3-8B`): fetched with huggingface_hub into
its cache, then converted from the cached snapshot like any model directory.

An argument is taken as an id only when it is not an existing path and reads as
ORG/NAME (one slash, the Hub's characters: a typo in a local path stays a "not found").
Only what a conversion reads is fetched: config, tokenizer files, sentence-transformers'
pooling description, and the weights the safetensors index lists (or model.safetensors),
never a repository's duplicate weights (consolidated.safetensors, original/) or
PyTorch .bin files. huggingface_hub resumes interrupted downloads and shows its own
progress bars; files already in the cache are not fetched again.

HF_HUB_OFFLINE=1 uses the cache alone (how the tests run: no network here); HF_HUB_CACHE
or HF_HOME choose the cache, HF_TOKEN authenticates for gated models."""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..errors import InputError, UnsupportedError
from .shard_index import INDEX, read_index

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
# every small file a conversion may read beside the weights
SMALL_FILES = ["config.json", "generation_config.json", INDEX, "tokenizer.json", "tokenizer.model",
               "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
               "merges.txt", "chat_template.jinja", "chat_template.json", "modules.json", "*_Pooling/config.json"]
SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)")


def looks_like_id(model: object) -> bool:
    """Whether MODEL is to be fetched: an ORG/NAME id that is not an existing path."""
    if not isinstance(model, str) or not REPO_ID.fullmatch(model) or ".." in model or model.endswith("."):
        return False
    return not os.path.lexists(model)


def hub_name(model_dir: Path) -> Optional[str]:
    """NAME of a cached snapshot directory (.../models--ORG--NAME/snapshots/REV), for the
    default output name; None for any other directory."""
    p = Path(os.path.abspath(model_dir))
    m = SNAPSHOT.fullmatch(p.parent.parent.name) if p.parent.name == "snapshots" else None
    return m["name"] if m else None


@contextmanager
def _bars(progress: Optional[bool]) -> Iterator[None]:
    """huggingface_hub's download bars on when progress is asked for (None: when stderr
    is a terminal), off otherwise; the global setting restored after."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_off = are_progress_bars_disabled()
    on = sys.stderr.isatty() if progress is None else bool(progress)
    (enable_progress_bars if on else disable_progress_bars)()
    try:
        yield
    finally:
        (disable_progress_bars if was_off else enable_progress_bars)()


def _download(repo_id: str, patterns: list[str], ignore: Optional[list[str]] = None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=ignore))


def fetch(repo_id: str, progress: Optional[bool] = None) -> Path:
    """The local snapshot directory of `repo_id`, its config, tokenizer and safetensors
    weights fetched first where they are not cached (one-line errors otherwise)."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise UnsupportedError(f"{repo_id}: fetching a model id needs huggingface_hub (pip install huggingface_hub)"
                               ) from None
    with _bars(progress), _hub_errors(repo_id):
        snap = _download(repo_id, SMALL_FILES)
        if (snap / INDEX).is_file():  # exactly the shards the index lists
            shards = sorted(set(read_index(snap / INDEX)[0].values()))
            snap = _download(repo_id, shards)
        else:  # top-level weights only: never original/ or a consolidated duplicate
            snap = _download(repo_id, ["*.safetensors"], ["*/*", "consolidated*"])
    return snap


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """huggingface_hub's exceptions as one-line InputErrors saying what to do."""
    from huggingface_hub import constants, errors

    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # huggingface_hub >= 1.x
    try:
        yield
    except incomplete:
        raise InputError(f"{repo_id}: the cached copy in {constants.HF_HUB_CACHE} is incomplete and the Hub "
                         "cannot be reached; fetch it again with network access") from None
    except errors.GatedRepoError:
        raise InputError(f"{repo_id}: a gated model; accept its license on huggingface.co/{repo_id} and log in "
                         "(hf auth login, or HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise InputError(f"{repo_id}: not a local path, and no such model on the Hugging Face Hub (or it is "
                         "private: log in with hf auth login, or set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise InputError(f"{repo_id}: the Hub has no such revision of this model") from None
    except errors.LocalEntryNotFoundError:
        if _offline():
            raise InputError(f"{repo_id}: not a local path, and not in the Hugging Face cache "
                             f"({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE=1; fetch it once with network "
                             "access, or give a model directory") from None
        raise InputError(f"{repo_id}: not a local path, and the Hugging Face Hub cannot be reached (and the "
                         "model is not in its cache); check the network, or give a model directory") from None
    except errors.HfHubHTTPError as e:
        raise InputError(f"{repo_id}: the Hugging Face Hub refused the download ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise InputError(f"{repo_id}: cannot write the Hugging Face cache {constants.HF_HUB_CACHE} "
                         f"({e.strerror or e})") from None


def fetched(job):
    """`job` (a job.Job) with a model id as its source replaced by the fetched snapshot
    directory; any other job as it is."""
    import dataclasses

    if not looks_like_id(str(job.source)):
        return job
    return dataclasses.replace(job, source=fetch(str(job.source), job.progress))

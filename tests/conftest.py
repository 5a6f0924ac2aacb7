"""Make tests/ helpers (ggml_oracle) and the package importable from a plain checkout."""

import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
for _p in (_TESTS, os.path.dirname(_TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """name -> a tiny transformers-built checkpoint directory (fixtures/tiny_models.py),
    each built once per session: llama, llama3, mistral, qwen2, qwen3, gemma3, gemma3_v4."""
    from fixtures.tiny_models import build, train_tokenizer

    tok = train_tokenizer()
    root = tmp_path_factory.mktemp("tiny_models")
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = build(name, root / name, tok)
        return made[name]

    return get

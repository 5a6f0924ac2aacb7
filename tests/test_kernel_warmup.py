"""kernels/warmup.py: encoders compiled in parallel children leave a cache the parent loads,
and the bytes equal the in-process path's."""

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import numpy as np
    from qconvert.kernels import encode, warmup
    types = ["Q8_0", "Q4_0"]
    assert all(warmup.needs_compile(t) for t in types), "cache should start empty"
    assert warmup.warm(types, force=True) == sorted(types)
    assert not any(warmup.needs_compile(t) for t in types)
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    for t in types:
        got = encode(t, x)
        assert got.tobytes() == encode(t, x, reference=True).tobytes(), t
        stats = [d.stats for d in warmup._dispatchers(t)]
        assert any(sum(s.cache_hits.values()) for s in stats), t  # loaded from the children's cache
        assert not any(sum(s.cache_misses.values()) for s in stats), t  # nothing recompiled here
    print("ok")
""")


def test_warmup_leaves_a_cache_the_parent_loads(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"


def test_warmup_is_off_unless_asked(monkeypatch):
    from qconvert.kernels import warmup

    monkeypatch.delenv(warmup.ENV, raising=False)
    assert warmup.warm(["Q8_0", "Q4_0"]) == []

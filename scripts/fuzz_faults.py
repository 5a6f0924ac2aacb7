"""Faults for checking the fuzz harness itself (tests/test_fuzz.py, `fuzz.py --inject`): each
stands in for a qconvert function inside a case's child ("qconvert.cli.inspect:inspect=crash")
and shows one kind of failure, so a clean fuzz run means the judge would have seen it."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path


def crash(*a, **k):
    raise KeyError("boom")


def divide(*a, **k):
    raise ZeroDivisionError("replay me")


def sleep(*a, **k):
    time.sleep(60)


def stuck(*a, **k):
    """A hang the soft timeout cannot end (as in C code holding the GIL): only a kill does."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)


def hog(*a, **k):
    import numpy as np

    x = np.ones(300 << 17)  # 300 MB
    raise SystemExit(0 if x.sum() else 1)


def clobber(path, **k):
    Path(path).parent.joinpath("precious.txt").write_text("changed")
    raise SystemExit(0)


def litter(path, **k):
    """Creates a file beside the input: nothing outside the output path may change."""
    Path(path).parent.joinpath("model", "stray.txt").write_text("x")
    raise SystemExit(0)


def nan_json(*a, **k):
    print(json.dumps({"x": float("nan")}))
    raise SystemExit(0)


def two_lines(*a, **k):
    sys.stderr.write("error: one\nsecond line\n")
    raise SystemExit(2)

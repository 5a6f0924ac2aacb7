"""Make tests/ helpers (ggml_oracle) and the package importable from a plain checkout."""

import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
for _p in (_TESTS, os.path.dirname(_TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

"""gguf-py's own NumPy quantizers (gguf.quants) against our NumPy twins: Q8_0's twin *is*
gguf-py's; for Q4_0, Q4_1, Q5_0 and Q5_1 gguf-py agrees with ggml except on blocks of
signed zeros, which is why those keep their own twins (kernels/reference/)."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from kernels.test_simple_blocks import CASES
from qconvert.kernels import kernel


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_gguf_py_quantizers_against_our_twins(name):
    k = kernel(name)
    differ = set()
    for case, x in CASES.items():
        ours = k.encode_ref(x.reshape(-1, 32))
        with np.errstate(all="ignore"):
            theirs = quantize(x, GGMLQuantizationType[name]).reshape(ours.shape)
        if not np.array_equal(ours, theirs):
            differ.add(case)
    assert differ == (set() if name == "Q8_0" else {"signed_zeros"})

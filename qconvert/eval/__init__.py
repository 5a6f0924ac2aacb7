"""Quality measurement: perplexity and KL divergence against a reference, on held-out text.

    windows = evaluation_windows("examples/tiny-llama", n_ctx=512)   # tokenized once
    ref = reference_from("tiny-F16.gguf", windows, workdir)            # F16 GGUF via llama.cpp
    m = compare("tiny-Q4_K_M.gguf", ref)                               # Metrics(ppl, mean_kl, ...)
    m = compare("examples/tiny-llama", ref)                            # transformers, float32

Modules: windows.py (the text cut into windows), logits.py (backends: llama.cpp for GGUF,
transformers for HF directories), reference.py (the reference's log-probs on disk),
statistics.py (streaming statistics of one candidate against a reference), metrics.py
(score / compare: a model run on the windows, scored alone or against a reference).
"""

from .logits import BACKENDS, backend_for, open_logits
from .metrics import Metrics, compare, score
from .reference import Reference, reference_from
from .windows import Windows, cut, evaluation_windows

__all__ = ["BACKENDS", "Metrics", "Reference", "Windows", "backend_for", "compare", "cut", "evaluation_windows",
           "open_logits", "reference_from", "score"]

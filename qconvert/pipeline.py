"""`qconvert.quantize`: the Python API's builder. The keywords become one validated request
(job.py), the route for it is chosen from a registry (routes/), and the stage runner
(runner.py) does read -> plan -> (dry run stops here) -> check output -> prepare -> write."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .job import build_job
from .plan.type_plan import DEFAULT_TYPE, make_quant_plan, resolve_type  # noqa: F401  (re-exported)
from .results import GGUFResult, QuantizeResult, SafetensorsResult  # noqa: F401  (re-exported)
from .runner import run
from .source.finite import nonfinite_allowed


def quantize(
    model: str | Path,
    output: str | Path | None = None,
    *,
    type: Optional[str] = None,
    bits: Optional[int] = None,
    force: bool = False,
    dry_run: bool = False,
    vocab_pre: Optional[str] = None,
    no_fallback: bool = False,
    tensor_types: Sequence[str] = (),
    output_tensor_type: Optional[str] = None,
    token_embedding_type: Optional[str] = None,
    pure: bool = False,
    allow_requantize: bool = False,
    allow_nonfinite: bool = False,
    imatrix: Optional[str | Path | object] = None,
    calibration: Optional[str | Path | bool] = None,
    calibration_samples: Optional[int] = None,
    calibration_seqlen: Optional[int] = None,
    device: Optional[str] = None,
    save_imatrix: Optional[str | Path] = None,
    scheme: Optional[str] = None,
    damp: Optional[float] = None,
    format: Optional[str] = None,
    group_size: Optional[int] = None,
    sym: Optional[bool] = None,
    act_order: bool = False,
    progress: Optional[bool] = False,
    target_vram: Optional[str | int] = None,
    target_size: Optional[str | int] = None,
    target_bpw: Optional[float] = None,
    context: Optional[int] = None,
    kv_type: Optional[str] = None,
    sensitivity_cache: Optional[str | Path] = None,
    split_max_size: Optional[str | int] = None,
    split_max_tensors: Optional[int] = None,
    candidates: Optional[str | Sequence[str]] = None,
    scale_search: Optional[str] = None,
) -> Optional[QuantizeResult]:
    """Convert a Hugging Face model directory (or a Hub model id "ORG/NAME", fetched into the
    Hugging Face cache; or a GGUF, a split set given by any of its files) into a GGUF file or a
    quantized safetensors checkpoint. A keyword left at None takes its default; a keyword
    the chosen output does not use is an error naming it (InputError), never ignored.

    GGUF (format "gguf", the default) -> GGUFResult (plan, output, file_size, notes, stats,
    budget). type: a llama-quantize preset (Q4_K_M, Q8_0, Q3_K_S, F16...) or a plain
    tensor type (Q4_K...) written everywhere; bits: shorthand (4 -> Q4_K_M, 8 -> Q8_0);
    tensor_types ("PATTERN=TYPE"), output_tensor_type, token_embedding_type, pure: the
    preset's overrides; no_fallback: fail where a row width does not fit a type.

    imatrix: importance statistics (a file qconvert or llama.cpp wrote, or an
    ImportanceMatrix) that weight the K-quant scale searches. calibration: True for the
    bundled calibration text, or a text file: collect those statistics first with
    transformers (needs the `calib` extra), `calibration_samples` (128) windows of
    `calibration_seqlen` (512) tokens, on `device` ("auto"); `save_imatrix` keeps them.
    scheme="gptq": GPTQ error feedback while rounding each decoder linear to its GGUF
    block type (Q4_0, Q8_0, Q2_K..Q6_K; other types get importance weighting), from the
    same kind of calibration pass; `damp` (0.01) of the Hessian's mean diagonal.

    target_size ("4.2GB" or bytes: the file), target_bpw (bits per weight of the tensors) or
    target_vram ("8GB": weights + KV cache at `context` (4096) tokens of `kv_type` F16/Q8_0
    + runtime overhead): instead of a preset, each tensor gets the GGUF type that minimises
    the total measured loss within that budget (plan/sized.py); the measurements are
    cached in `sensitivity_cache` (default ~/.cache/qconvert/sensitivity.json) and
    weighted by the importance statistics when given. candidates ("k,legacy,iq", the
    default all): the families of types to choose from (Q8_0 and F16 always; i-quants that
    need statistics only with them).

    scale_search="thorough": the K-quant blocks llama.cpp's search wrote get a more thorough
    choice of their integer scales and super-scales, each block kept only where its
    (importance-)weighted error drops (kernels/scale_refine.py); "llama" (the default)
    writes llama.cpp's bytes.

    format="safetensors" -> SafetensorsResult: an int-N checkpoint transformers loads
    (compressed-tensors pack-quantized): `bits` (2, 3, 4 (default), 8), `group_size` (128;
    -1 per channel), `sym` (True), scheme rtn (absmax / min-max rounding) or gptq
    (`act_order` with static groups, `damp`, calibration as above).

    split_max_size ("50GB" or bytes per file) / split_max_tensors (tensors per file): GGUF
    output as llama.cpp's split set, NAME-00001-of-0000N.gguf ... (the first holds the
    metadata; llama.cpp loads the set given the first); GGUFResult.files lists the set.

    Under torchrun (several processes, calib/world.py) the calibration pass is shared by
    all ranks; rank 0 writes the output and gets the result, every other rank gets None.

    A weight holding NaN or Inf is an error naming the tensor (source/finite.py), before
    anything is written; allow_nonfinite=True converts such weights anyway."""
    options = dict(locals())
    job = build_job(options.pop("model"), options.pop("output"), **options)
    with nonfinite_allowed(job.allow_nonfinite):  # for every weight the run reads
        return run(job)

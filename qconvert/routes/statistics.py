"""The importance statistics a GGUF route weights its rounding with: loaded from
--imatrix, or collected by a calibration pass (and saved with --save-imatrix)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..job import Calibration
from ..schemes.importance import load_importance
from ..sink.output_check import check_output
from ..source.model_source import Source


def loaded_importance(calib: Calibration) -> Optional[object]:
    """--imatrix as an ImportanceMatrix (a file, or one given in memory); None without it."""
    imx = calib.imatrix
    if imx is None:
        return None
    if hasattr(imx, "get") and not isinstance(imx, (str, Path)):
        return imx
    return load_importance(imx)


def statistics_reads(calib: Calibration) -> tuple:
    """The files the statistics come from, which no output may overwrite."""
    return tuple(x for x in (calib.imatrix, calib.text) if isinstance(x, (str, Path)))


def check_calibration_source(src: Source) -> None:
    if src.is_gguf:
        raise InputError(f"{src.path}: calibration runs the Hugging Face model; give the model directory, "
                         "or an importance matrix with --imatrix")


def checked_save_path(src: Source, calib: Calibration) -> Optional[Path]:
    """--save-imatrix, checked before the calibration pass (an existing file is replaced);
    None on the ranks that write nothing (torchrun: all but rank 0)."""
    from ..calib.world import current

    if calib.save_imatrix is None or not current().writer:
        return None
    return check_output(calib.save_imatrix, True, reads=(src.path, *statistics_reads(calib)))


def collected_importance(src: Source, calib: Calibration, progress, save_to: Optional[Path]):
    """Run the calibration pass; save the statistics when asked."""
    from ..calib.collect import collect_importance

    check_calibration_source(src)
    imx = collect_importance(src.path, text_file=calib.text_file, n_samples=calib.samples, seqlen=calib.seqlen,
                             device=calib.device, show_progress=progress)
    if save_to is not None:
        imx.save(save_to)
    return imx

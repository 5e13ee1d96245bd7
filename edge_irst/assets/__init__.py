"""The bundled model: an exporter output folder (manifest.json + artifacts) shipped inside the package.

`default_model()` is the one place that knows where it lives; `Detector(model=None)` and `edge-irst run` without
`--model` use it. `BUNDLED_GREY_MODEL` (lw_irstnet_grey/) is the same weights exported with `--grey-input`: one
grey channel in, the same logits on grey frames, less to preprocess and a faster stem (models/grey_input.py).
"""
from __future__ import annotations

from pathlib import Path

from edge_irst.errors import ModelFileError

BUNDLED_MODEL = Path(__file__).resolve().parent / "lw_irstnet"
BUNDLED_GREY_MODEL = BUNDLED_MODEL.with_name("lw_irstnet_grey")


def default_model() -> Path:
    """The bundled model folder (edge_irst/assets/lw_irstnet/, holding manifest.json), or ModelFileError."""
    if not (BUNDLED_MODEL / "manifest.json").is_file():
        raise ModelFileError(
            f"the bundled model is missing: {BUNDLED_MODEL / 'manifest.json'} does not exist (this installation "
            f"ships without it). Pass a model explicitly (--model PATH / Detector(model=PATH): an artifact file "
            f"such as LW_IRST.onnx or a folder written by `edge-irst export`), or reinstall edge-irst")
    return BUNDLED_MODEL


__all__ = ["BUNDLED_GREY_MODEL", "BUNDLED_MODEL", "default_model"]

"""fp32 ONNX -> MNN: fp32 weights, fp16 weights, or weight-only int8 (weights stored int8, computed in float).

Why the converter runs the way it does (MNN 3.6.1):
- Telemetry. `MNN.tools.mnnconvert` imports `MNN.tools.utils.log`, which at import time runs
  `pip install -U aliyun-log-python-sdk` through whatever `pip` is first on PATH (os.system) and opens an HTTP
  connection to a telemetry endpoint; after a conversion the wrapper uploads a record that includes
  /etc/machine-id. We never import `MNN.tools`: a child interpreter blocks both modules in sys.modules and calls
  the converter's C extension (`_tools`, shipped in the MNN wheel) directly. tests/test_export_mnn.py proves
  that no socket is opened and no process is started in the child.
- A child process, with a scratch folder as its working directory: the converter writes
  `.__convert_external_data.bin` into the current directory (removed on success, left behind on failure, and
  shared by two conversions running at once), prints its log on stdout from C, and reports failure with only a
  "[ERROR]" line: `_tools.mnnconvert` returns True whatever happened.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_irst.contract import ModelContract
from edge_irst.errors import InputError, ModelFileError

_PRECISION_ARGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--weightQuantBits", "8"]}

# Run by `python -c` in the child. Blocking a module in sys.modules makes every later import of it raise
# ImportError; MNN's wrappers catch exactly that and run without their logger.
_CHILD = """
import sys
sys.modules["MNN.tools"] = None
sys.modules["MNN.tools.utils.log"] = None
import _tools
_tools.mnnconvert(["MNNConvert", *sys.argv[1:]])
"""


def converter_command(fp32_onnx: Path, out_path: Path, precision: str) -> list[str]:
    """The child process's command line (absolute paths: the child runs in a scratch folder)."""
    return [sys.executable, "-c", _CHILD, "-f", "ONNX", "--modelFile", str(Path(fp32_onnx).resolve()),
            "--MNNModel", str(Path(out_path).resolve()), "--bizCode", "edge-irst", *_PRECISION_ARGS[precision]]


def convert_mnn(fp32_onnx: Path, contract: ModelContract, out_path: Path, precision: str,
                calib_batches: Sequence[np.ndarray]) -> tuple[Path, ModelContract]:
    """The fp32 hub ONNX -> `out_path` (.mnn). calib_batches is unused: MNN's int8 here is weight-only."""
    if precision not in _PRECISION_ARGS:
        raise InputError(f"MNN precision {precision!r} is not supported; choose {', '.join(_PRECISION_ARGS)}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.unlink(missing_ok=True)  # success is judged by the file appearing
    with tempfile.TemporaryDirectory(prefix="edge-irst-mnn-") as scratch:
        done = subprocess.run(converter_command(fp32_onnx, out_path, precision), cwd=scratch,
                              capture_output=True, text=True)
    log = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "[ERROR]" in log or not out_path.is_file() or out_path.stat().st_size == 0:
        errors = [ln for ln in log.splitlines() if "ERROR" in ln or "rror" in ln] or log.splitlines()[-5:]
        raise ModelFileError(f"MNN's converter failed on {fp32_onnx} (exit {done.returncode}): "
                             + " | ".join(errors[:6]))
    artifact = contract.replace(precision=precision)
    if precision == "int8":
        artifact = artifact.replace(extra={**artifact.extra, "mnn_int8": "weight-only int8 (--weightQuantBits 8); "
                                                                          "activations and compute stay float"})
    return out_path, artifact

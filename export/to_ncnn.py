"""PyTorch -> ncnn (.param + .bin) through pnnx: fp32 or fp16 weights, or int8 (export/ncnn_int8.py).

pnnx is driven as its binary (`pnnx.EXEC_PATH`) on a TorchScript trace, not through `pnnx.export()`: pnnx
20261020's Python wrapper runs the binary with `subprocess.run` and drops its exit status and output (a failed
conversion looks like a success), and its `input_shapes=` branch silently ignores `fp16=`.

Trap: pnnx stores ncnn weights as fp16 unless told `fp16=0`. With fp16 weights LW-IRSTNet's logits differ from
PyTorch by 0.13, with fp32 weights by 3e-4; so fp32 passes `fp16=0` and the fp16 artifact is its own file.

fp32 and fp16 go through export/ncnn_widen.py on the way out: Convolutions with 5 to 7 outputs are computed on 8
and cropped back (LW-IRSTNet's stem; the model 1.05-1.06x faster on x86).

pnnx writes a trail of side files next to its input (.pnnx.param/.bin, .pnnx.onnx, _pnnx.py, _ncnn.py): it runs
in a scratch folder and only the .param/.bin pair is kept.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_irst.backends.ncnn_format import read_param
from edge_irst.contract import ModelContract
from edge_irst.errors import InputError, MissingDependencyError, ModelFileError

from .formats import PRECISIONS
from .ncnn_int8 import quantize_ncnn
from .ncnn_widen import NARROW_OUTPUTS, WIDTH, widen_narrow_convolutions

# The second shape pnnx sees when the contract is dynamic, so it keeps H/W symbolic instead of folding the first
# shape into the graph. Any multiple of the stride that differs from the tracing size works.
_SECOND_SHAPE = (320, 480)


def blob_names(param: Path) -> tuple[str, str]:
    """(input blob, output blob) of a single-input, single-output ncnn text .param.

    The input is the top blob of the one Input layer; the output is the one blob that some layer produces and no
    layer consumes.
    """
    _, layers = read_param(param)
    inputs = [blob for layer in layers if layer.type == "Input" for blob in layer.tops]
    consumed = {blob for layer in layers for blob in layer.bottoms}
    outputs = [blob for layer in layers for blob in layer.tops if blob not in consumed and blob not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(f"{param}: expected one input and one output blob, found inputs {inputs} and "
                             f"outputs {outputs}")
    return inputs[0], outputs[0]


def _shape_arg(batch_shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in batch_shape) + "]f32"


def convert_ncnn(model, contract: ModelContract, out_path: Path, precision: str,
                 calib_batches: Sequence[np.ndarray]) -> tuple[Path, ModelContract]:
    """Eval-mode PyTorch model -> `out_path` (.param) and its .bin beside it.

    calib_batches: float32 NCHW [1, C, H, W] arrays; the first is the tracing input (its H x W is the exported
    size unless the contract is dynamic). Returns the .param and the contract with ncnn's blob names.
    """
    if precision not in PRECISIONS:
        raise InputError(f"ncnn precision {precision!r} is not supported by this exporter; choose one of "
                         f"{', '.join(PRECISIONS)}")
    if not calib_batches:
        raise InputError("ncnn export needs one example batch (float32 NCHW [1, C, H, W]) to trace the model")
    try:
        import pnnx
        import torch
    except ImportError as exc:
        raise MissingDependencyError(f"the ncnn converter ({exc.name})", "export", str(exc)) from exc
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(np.ascontiguousarray(calib_batches[0], np.float32))
    with tempfile.TemporaryDirectory(prefix="edge-irst-pnnx-") as scratch:
        with torch.no_grad():
            torch.jit.trace(model, example, check_trace=False).save(str(Path(scratch) / "model.pt"))
        command = [pnnx.EXEC_PATH, "model.pt", f"inputshape={_shape_arg(example.shape)}",
                   f"fp16={1 if precision == 'fp16' else 0}", "device=cpu",
                   "ncnnparam=model.ncnn.param", "ncnnbin=model.ncnn.bin"]
        if contract.input_size is None:
            command.append(f"inputshape2={_shape_arg((*example.shape[:2], *_SECOND_SHAPE))}")
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
        param, weights = Path(scratch) / "model.ncnn.param", Path(scratch) / "model.ncnn.bin"
        if done.returncode != 0 or not param.is_file() or not weights.is_file():
            tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
            raise ModelFileError(f"pnnx {getattr(pnnx, '__version__', '?')} failed to convert the model (exit "
                                 f"{done.returncode}): " + " | ".join(tail))
        names = blob_names(param)
        extra = contract.extra
        # Every precision widened first; int8 is then quantised from that fp32 model (fp16=0), calibrated on
        # every batch, its narrow-input stem left in widened fp32 (ncnn_int8.py says why).
        widened_path = Path(scratch) / "widened.param" if precision == "int8" else out_path
        widened = widen_narrow_convolutions(param, widened_path)
        if widened:
            extra = {**extra, "ncnn_widened": f"{widened} Convolution layer(s) with {NARROW_OUTPUTS.start}-"
                                              f"{NARROW_OUTPUTS.stop - 1} outputs computed on {WIDTH} and "
                                              f"cropped back (export/ncnn_widen.py)"}
        if precision == "int8":
            done = quantize_ncnn(widened_path, out_path, calib_batches, names[0])
            subpixel = (f", {done['subpixel_deconvolutions']} of them Deconvolutions rewritten as sub-pixel "
                        f"convolutions" if done["subpixel_deconvolutions"] else "")
            extra = {**extra, "ncnn_int8": f"{done['int8_convolutions']} Convolution layers in int8 "
                                          f"({done['requantised']} requantised for the next one{subpixel}), "
                                          f"{done['fp32_kept'] or 'nothing else'} kept fp32; {done['calibration']}"}
    return out_path, contract.replace(precision=precision, input_name=names[0], output_name=names[1], extra=extra)

"""PyTorch LW-IRSTNet -> TFLite (fp32, fp16, full-integer int8), NHWC-native, no TRANSPOSE ops.

Signature:
    convert_tflite(model, contract, out_path, precision, calib_batches, *, transpose_conv="subpixel")
        -> tuple[Path, ModelContract]

    model          eval-mode torch.nn.Module (e.g. `create_model("lw_irstnet")` or `load_checkpoint(p).model`)
    contract       the ModelContract the model was trained with; contract.input_size None -> dynamic H/W graph
    out_path       where the .tflite file is written (parent folders are created)
    precision      "fp32" | "fp16" (fp16 weights, fp32 activations/I/O) | "int8" (int8 weights, activations
                   and I/O; needs calib_batches)
    calib_batches  list of float32 NCHW arrays [1, C, H, W], already preprocessed with `contract`; int8 uses
                   them as the representative data set, every precision checks the translated graph on the first
                   one (may be empty for fp32/fp16: a fixed random tensor is used instead)
    returns        (the written path, the artifact's contract: `contract` with layout="NHWC", the precision,
                   and in `extra["tflite"]` the input/output quantisation). The same contract is embedded in the
                   file's metadata under "edge_irst.contract" (read it back with `read_tflite_contract`).

The artifact's tensors: input "input" float32 (int8 for precision "int8") NHWC [1, H, W, C]; output "output"
float32 (int8) NHWC [1, H, W, 1] logits. For int8 I/O: q = round(x / scale) + zero_point on the way in,
x = (q - zero_point) * scale on the way out (both pairs are in `extra["tflite"]` and in the tensor details).

Route (why not litert-torch / onnx2tf: see tflite_translate.py): the module's own layers and weights are rebuilt
as an NHWC TensorFlow graph (BatchNorm folded, ConvTranspose2d as sub-pixel conv + DEPTH_TO_SPACE), that graph is
checked against PyTorch, then tf.lite.TFLiteConverter writes the flatbuffer. Needs tensorflow-cpu (extra
"export"); the artifact itself runs on ai-edge-litert alone.
"""
from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edge_irst.contract import CONTRACT_KEY, ModelContract
from edge_irst.errors import InputError, MissingDependencyError, ModelFileError, VerificationError

PRECISIONS = ("fp32", "fp16", "int8")
EXTRA = "export"
# The translated TF graph must match PyTorch to this, absolute on logits (scaled up in proportion for models whose
# logits exceed +-100). A translation bug is O(1) or worse; float32 reordering on the authors' checkpoint, whose
# logits reach +-200, is <= 3.1e-4 (measured on the five sample frames).
GRAPH_CHECK_TOL = 1e-3
_CHECK_SIZE_DYNAMIC = (64, 96)  # probe size for dynamic-H/W graphs without a calibration batch (multiples of 8)


def convert_tflite(
    model,
    contract: ModelContract,
    out_path,
    precision: str,
    calib_batches: Optional[Sequence[np.ndarray]],
    *,
    transpose_conv: str = "subpixel",
) -> tuple[Path, ModelContract]:
    """Convert an eval-mode PyTorch module to a TFLite file; see the module docstring for every argument."""
    if precision not in PRECISIONS:
        raise InputError(f"TFLite precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    batches = [_check_batch(b, contract, i) for i, b in enumerate(calib_batches or [])]
    if precision == "int8" and not batches:
        raise InputError("int8 TFLite export needs calibration batches (float32 NCHW [1, C, H, W], preprocessed "
                         "with the contract): pass --calib images, e.g. 32+ training frames")
    tf = _import_tensorflow()
    import torch

    from .tflite_translate import TorchToTF

    fn = TorchToTF(model, transpose_conv=transpose_conv).function(tf)
    h, w = contract.input_size if contract.input_size is not None else (None, None)
    spec = tf.TensorSpec([1, h, w, contract.channels], tf.float32, name=contract.input_name)
    output_name = contract.output_name

    @tf.function(input_signature=[spec])
    def serving(input):  # noqa: A002  (the argument name becomes the TFLite signature's input name)
        return {output_name: fn(input)}

    concrete = serving.get_concrete_function()
    _check_graph(tf, torch, model, concrete, batches[0] if batches else _probe_batch(contract))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], serving)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([np.ascontiguousarray(b.transpose(0, 2, 3, 1))] for b in batches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        with warnings.catch_warnings():
            # TF 2.21 warns "Statistics for quantized inputs were expected" whenever int8 I/O is requested with a
            # representative dataset; the input statistics come from that dataset, so the warning is noise.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises ConverterError / RuntimeError / ValueError
        raise ModelFileError(f"tensorflow {tf.__version__}'s TFLiteConverter failed on the translated graph "
                             f"({precision}): {exc}") from exc

    out_contract = contract.replace(
        layout="NHWC",
        precision=precision,
        extra={**contract.extra, "tflite": _io_quantisation(flatbuffer, precision)},
    )
    flatbuffer = _finalise(flatbuffer, contract.input_name, contract.output_name,
                           {CONTRACT_KEY: out_contract.to_json().encode()})
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_bytes(flatbuffer)
    os.replace(tmp, out)
    return out, out_contract


# ---------------------------------------------------------------------------------------------------- helpers
def _import_tensorflow():
    # Fewer TF C++ log lines at import (the CPU-feature banner goes; TF 2.21's absl oneDNN notice stays) unless
    # the user set a level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError("tensorflow-cpu (the TFLite converter)", EXTRA, str(exc)) from exc
    return tf


def _check_batch(batch, contract: ModelContract, index: int) -> np.ndarray:
    arr = np.asarray(batch)
    expected = (1, contract.channels, *(contract.input_size or ("H", "W")))
    ok = arr.ndim == 4 and arr.shape[:2] == (1, contract.channels) and arr.dtype == np.float32
    if ok and contract.input_size is not None:
        ok = tuple(arr.shape[2:]) == tuple(contract.input_size)
    if not ok:
        raise InputError(f"calibration batch {index}: expected float32 NCHW {expected}, got {arr.dtype} "
                         f"{tuple(arr.shape)}; preprocess frames with edge_irst.preprocess.preprocess(frame, contract)")
    if not np.isfinite(arr).all():
        raise InputError(f"calibration batch {index} contains NaN or inf")
    return arr


def _probe_batch(contract: ModelContract) -> np.ndarray:
    h, w = contract.input_size or _CHECK_SIZE_DYNAMIC
    return np.random.default_rng(0).standard_normal((1, contract.channels, h, w)).astype(np.float32)


def _check_graph(tf, torch, model, concrete, batch: np.ndarray) -> None:
    """The translated TF graph must reproduce PyTorch on `batch` before anything is converted.

    This checks the hand-written translation only (so a failure says "translator", not "converter"); the
    exported file itself is verified by the export step shared by every format.
    """
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    got = next(iter(concrete(tf.constant(batch.transpose(0, 2, 3, 1))).values())).numpy().transpose(0, 3, 1, 2)
    if got.shape != ref.shape:
        raise VerificationError(f"translated TF graph returns {got.shape} where PyTorch returns {ref.shape}")
    err = float(np.abs(got - ref).max())
    tol = GRAPH_CHECK_TOL * max(1.0, float(np.abs(ref).max()) / 100.0)
    if not err <= tol:
        raise VerificationError(f"translated TF graph differs from PyTorch by {err:.3g} (> {tol:.3g}) on the "
                                f"first calibration batch: the translator mis-handles a layer of this model")


def _schema():
    """The TFLite flatbuffer schema (generated Python): ai-edge-litert's, else the copy inside tensorflow."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as litert_missing:
        try:  # tensorflow aliases `tensorflow.lite` to its API module; the file is reachable by its full name
            import importlib

            schema = importlib.import_module("tensorflow.lite.python.schema_py_generated")
        except ImportError:
            raise MissingDependencyError("ai-edge-litert (reads and writes TFLite flatbuffers)", "tflite",
                                         str(litert_missing)) from litert_missing
    return schema


def _io_quantisation(flatbuffer: bytes, precision: str) -> dict:
    """{"input": {...}, "output": {...}} with dtype and, for int8, scale / zero_point of the graph I/O."""
    schema = _schema()
    model = schema.Model.GetRootAs(flatbuffer, 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    info = {}
    for role, index in (("input", graph.Inputs(0)), ("output", graph.Outputs(0))):
        t = graph.Tensors(index)
        entry = {"dtype": names.get(t.Type(), str(t.Type())).lower()}
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            entry["scale"] = float(q.Scale(0))
            entry["zero_point"] = int(q.ZeroPoint(0))
        info[role] = entry
    info["precision"] = precision
    return info


def _finalise(flatbuffer: bytes, input_name: str, output_name: str, metadata: dict) -> bytes:
    """The flatbuffer with its I/O tensors named as the contract says and `metadata` (name -> bytes) added.

    The converter names the output tensor "Identity" (tf.function's output node); the signature keeps the
    contract's names, but runtimes that list tensors (and the backend's `outputs`) show the tensor name.
    """
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = input_name.encode()
    graph.tensors[graph.outputs[0]].name = output_name.encode()
    kept = [m for m in (model.metadata or []) if _name(m.name) not in metadata]
    for name, payload in metadata.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(payload, dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        kept.append(entry)
    model.metadata = kept
    builder = flatbuffers.Builder(len(flatbuffer) + sum(map(len, metadata.values())) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _name(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _read_model(path):
    data = Path(path).read_bytes()
    schema = _schema()
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ModelFileError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    return schema, schema.Model.GetRootAs(data, 0), data


def read_tflite_contract(path) -> Optional[ModelContract]:
    """The ModelContract embedded by convert_tflite (metadata "edge_irst.contract"), or None if there is none."""
    schema, model, data = _read_model(path)
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        if _name(meta.Name()) == CONTRACT_KEY:
            raw = model.Buffers(meta.Buffer()).DataAsNumpy()
            try:
                return ModelContract.from_dict(json.loads(bytes(raw).decode()))
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
                raise ModelFileError(f"{path}: metadata {CONTRACT_KEY!r} is not a valid contract: {exc}") from exc
    return None


def tflite_op_counts(path) -> Counter:
    """Builtin operator name -> number of uses in every subgraph of a .tflite file (read from the flatbuffer)."""
    schema, model, _ = _read_model(path)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # builtin codes >= 127 live in BuiltinCode(); the deprecated byte field saturates at 127
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        codes.append(names.get(code, f"CUSTOM:{_name(oc.CustomCode())}" if oc.CustomCode() else str(code)))
    counts: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            counts[codes[graph.Operators(o).OpcodeIndex()]] += 1
    return counts

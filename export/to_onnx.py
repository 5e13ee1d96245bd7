"""PyTorch -> ONNX: the fp32 hub (opset 18, simplified, contract embedded) and its fp16 / int8 derivatives.

Exporter path (measured with torch 2.13.0 on LW-IRSTNet): the torch.export-based exporter (`dynamo=True`, the
default since torch 2.9), not the TorchScript one (`dynamo=False`, deprecated but still shipped). The TorchScript
exporter writes F.pad's channel padding as a Shape/Gather/Sub/Concat/Reshape/Slice(step -1)/Transpose chain that
its own constant folder skips ("only steps=1 can be constant folded"); onnxslim 0.1.98's shape-inference value
propagation then folds the second of the two chains to the wrong pads ([0,32,0,0,0,0,0,0] instead of
[0,0,0,0,0,32,0,0]) and the simplified model's logits are off by ~100. The dynamo exporter traces with concrete
channel counts, emits constant pads, folds BatchNorm into the convolutions, and its graph (222 nodes: 80 Conv,
89 PRelu, 3 ConvTranspose, one BatchNormalization after the stem's concat that cannot fold) is what onnxslim
keeps; its PRelu (one shared slope each) are then rewritten as LeakyRelu (shared_slope_prelu_to_leaky_relu).
It costs the `onnxscript` package and ~3x the export time (about 10 s here), and emits opset 18: asking for 17
fails in onnx's version converter ("No Adapter To Version $17 for Pad").
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_irst.contract import CONTRACT_KEY, ModelContract
from edge_irst.errors import InputError, MissingDependencyError

OPSET = 18
# int8: static QDQ with per-channel int8 weights and uint8 activations. Measured with onnxruntime 1.32 on this
# machine (AMD EPYC with AVX512-VNNI, shared by other jobs; 1 thread, 256x256, 40 interleaved runs each, 10th
# percentile as the least-disturbed figure), on the graph with PRelu still in it: fp32 18.0 ms; QDQ/uint8 20.8 ms
# (mask IoU vs fp32 0.958 on the sample frames); QDQ/int8 21.0 ms; QOperator/uint8 20.7 ms (IoU 0.944);
# QOperator/int8 35.9 ms. QOperator is no faster, and QDQ keeps the float graph readable and is the form the
# other runtimes and EPs (TensorRT, OpenVINO, QNN, XNNPACK) consume: QDQ it is. With the PRelu -> LeakyRelu
# rewrite (shared_slope_prelu_to_leaky_relu) both get faster, int8 QDQ ~2.3x, but int8 still does not beat fp32
# here (7.1 vs 5.8 ms in one interleaved run): the tensors are small and the three ConvTranspose stay float.
# MaxPool stays float (_max_pools, _pools_of_inputs_in_float): onnxruntime runs a quantised MaxPool with its generic
# uint8 kernel, which took 4.5 of 24 ms per frame (3 nodes; the same pools in float 0.3 ms) in a profiled run of
# the bundled LW-IRSTNet on an AVX-512 Xeon. onnxruntime still folds DequantizeLinear -> MaxPool -> QuantizeLinear
# back into a uint8 pool where both carry the same calibrated scale (exact, as max commutes with the mapping).
# Figures: benchmarks/backends.py in the README (int8 vs fp32 onnxruntime rows).
_QUANT = {"quant_format": "QDQ", "per_channel": True, "weight_type": "int8", "activation_type": "uint8",
          "float_nodes": "the output head (_output_heads), MaxPool (_max_pools) and a pool of a graph input with "
                         "its output (_pools_of_inputs_in_float)"}


def _set_contract(model_proto, contract: ModelContract) -> None:
    """Put the contract JSON under metadata_props[CONTRACT_KEY], replacing an older one."""
    kept = [p for p in model_proto.metadata_props if p.key != CONTRACT_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, contract.to_json()


@contextlib.contextmanager
def _quiet_torch_onnx():
    """Silence what torch.onnx 2.13's exporter prints on every call and that is no fault of the model: one
    WARNING per torchvision operator it skips registering when torchvision is not installed, and a pytree
    FutureWarning (`isinstance(treespec, LeafSpec)` is deprecated) raised from inside torch.export."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        logger.setLevel(level)


def onnx_from_torch(model, contract: ModelContract, out_path: Path, example: np.ndarray) -> Path:
    """Export an eval-mode model to fp32 ONNX at `out_path`, simplified with onnxslim, contract embedded.

    example: float32 NCHW [1, C, H, W], the tracing input. With `contract.input_size` None the graph gets symbolic
    H and W, each a multiple of `contract.stride` (so any frame padded to the stride runs).
    """
    try:
        import onnx
        import onnxslim
        import torch
        from torch.export import Dim
    except ImportError as exc:
        raise MissingDependencyError(f"the ONNX exporter ({exc.name})", "export", str(exc)) from exc
    if model.training:
        raise InputError("the model must be in eval mode (model.eval()) before export: dropout and batch-norm "
                         "statistics differ in training mode")
    dynamic_shapes = None
    if contract.input_size is None:
        stride = contract.stride
        rows, cols = Dim("rows", min=1, max=8192 // stride), Dim("cols", min=1, max=8192 // stride)
        dynamic_shapes = ({2: stride * rows, 3: stride * cols},)
    with _quiet_torch_onnx(), torch.no_grad():
        try:
            program = torch.onnx.export(
                model, (torch.from_numpy(np.ascontiguousarray(example, np.float32)),), dynamo=True,
                opset_version=OPSET, input_names=[contract.input_name], output_names=[contract.output_name],
                dynamic_shapes=dynamic_shapes, verbose=False)
        except ModuleNotFoundError as exc:  # torch.onnx imports onnxscript only when dynamo=True
            raise MissingDependencyError(f"torch.onnx's exporter dependency {exc.name}", "export", str(exc)) from exc
    model_proto = onnxslim.slim(program.model_proto)
    shared_slope_prelu_to_leaky_relu(model_proto)
    _set_contract(model_proto, contract.replace(precision="fp32"))
    onnx.checker.check_model(model_proto, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model_proto, str(out_path))
    return out_path


def shared_slope_prelu_to_leaky_relu(model_proto) -> int:
    """Rewrite every PRelu whose slope is one constant value as LeakyRelu(alpha=slope); returns how many.

    Exact (both are x > 0 ? x : a*x; the float32 slope becomes the float32 attribute) and much faster: onnxruntime
    runs PRelu as a broadcasting binary op after each convolution, but fuses LeakyRelu into the convolution
    (FusedConv), and its int8 path has QLinearLeakyRelu where PRelu leaves a Dequantize/Quantize pair around
    every convolution. Measured on LW-IRSTNet (89 such PRelu, 1 thread, x86): fp32 2.4x faster, int8 QDQ 2.3x
    faster. MNN and OpenCV DNN read LeakyRelu as their leaky ReLU.
    """
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    constants = {init.name: init for init in graph.initializer}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in constants:
            continue
        slope = numpy_helper.to_array(constants[node.input[1]])
        if slope.size != 1:
            continue  # a per-channel slope is a real PRelu
        node.op_type = "LeakyRelu"
        del node.input[1:]
        node.attribute.append(helper.make_attribute("alpha", float(slope.reshape(-1)[0])))
        rewritten += 1
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return rewritten


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a list of float32 NCHW [1, C, H, W] arrays."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]):
        self._feeds = iter([{name: np.ascontiguousarray(b, np.float32)} for b in batches])

    def get_next(self):
        return next(self._feeds, None)


def _output_heads(graph) -> list[str]:
    """Names of the nodes that write a graph output: kept in float by the int8 export.

    The logit map is what gets thresholded; quantised to uint8 it loses the resolution near the threshold where
    a small target's few pixels sit. Measured on our LW-IRSTNet weights, with the 64 verification frames of `make
    bundle`: mask IoU vs fp32 0.900 with the 1-channel head quantised, 0.925 in float, for one float ConvTranspose.
    """
    outputs = {o.name for o in graph.output}
    return [node.name for node in graph.node if outputs.intersection(node.output) and node.name]


def _max_pools(graph) -> list[str]:
    """Names of the MaxPool nodes: kept in float by the int8 export (see _QUANT)."""
    return [node.name for node in graph.node if node.op_type == "MaxPool" and node.name]


def _quantize_int8(fp32_onnx: Path, out_path: Path, contract: ModelContract, calib_batches) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calib_batches:
        raise InputError("int8 ONNX export needs calibration frames (float32 NCHW [1, C, H, W], preprocessed with "
                         "the contract): pass --calib DIR with representative frames")
    graph = onnx.load(str(fp32_onnx)).graph
    # quantize_static logs two "consider pre-processing" hints through the root logger on every call; the model
    # is already simplified (onnxslim), so they are noise here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(fp32_onnx), str(out_path), _Batches(contract.input_name, calib_batches),
                        quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=_output_heads(graph) + _max_pools(graph))
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(out_path))
    if _pools_of_inputs_in_float(quantized.graph):
        onnx.save(quantized, str(out_path))


def _pools_of_inputs_in_float(graph) -> int:
    """Runs each MaxPool of a graph input in float: returns how many.

    quantize_static leaves such a pool reading DequantizeLinear(QuantizeLinear(input)) and writing a
    QuantizeLinear -> DequantizeLinear pair, which onnxruntime folds into its slow uint8 pool (see _QUANT); on
    LW-IRSTNet that is the stem's pool of the 3 x 256 x 256 image, 2.5 ms of a 20 ms frame in a profiled run.
    Pointing the pool at the float input alone does not help: onnxruntime's QDQ propagation moves the
    QuantizeLinear that follows up above the pool. So the pair after the pool goes too, and its consumer (the
    stem's Concat) reads float; onnxruntime then runs that Concat in float and quantises its output, one rounding
    fewer than before. Only graph inputs: a float tensor that an operator writes would have to stay materialised
    for the pool, undoing that operator's fusion with its QuantizeLinear."""
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def written_by(tensor: str, op_type: str):
        found = producer.get(tensor)
        return found if found is not None and found.op_type == op_type else None

    def only_consumer(tensor: str, op_type: str):
        found = consumers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    inputs = {value.name for value in graph.input}
    outputs = {value.name for value in graph.output}
    dropped = []
    for pool in [node for node in graph.node if node.op_type == "MaxPool"]:
        dequantized_input = written_by(pool.input[0], "DequantizeLinear")
        quantized_input = dequantized_input and written_by(dequantized_input.input[0], "QuantizeLinear")
        if quantized_input is None or quantized_input.input[0] not in inputs:
            continue
        quantize = only_consumer(pool.output[0], "QuantizeLinear")
        dequantize = quantize and only_consumer(quantize.output[0], "DequantizeLinear")
        if dequantize is None or dequantize.output[0] in outputs:
            continue
        pool.input[0] = quantized_input.input[0]
        for consumer in consumers.get(dequantize.output[0], []):
            consumer.input[:] = [pool.output[0] if name == dequantize.output[0] else name for name in consumer.input]
        dropped += [quantize, dequantize]
    for node in dropped:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    params = {name for node in dropped for name in node.input[1:]} - used
    for initializer in [i for i in graph.initializer if i.name in params]:
        graph.initializer.remove(initializer)
    return len(dropped) // 2


def convert_onnx(fp32_onnx: Path, contract: ModelContract, out_path: Path, precision: str,
                 calib_batches: Sequence[np.ndarray]) -> tuple[Path, ModelContract]:
    """The fp32 hub ONNX -> an ONNX artifact at `precision` with its contract embedded.

    fp32: the hub itself. fp16: weights and activations in float16, inputs/outputs kept float32 so callers feed
    the same tensor (onnxruntime's float16 converter, keep_io_types). int8: static quantisation calibrated on
    `calib_batches` (float32 NCHW [1, C, H, W] preprocessed with `contract`), see _QUANT.
    """
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    artifact = contract.replace(precision=precision)
    if precision == "fp32":
        model_proto = onnx.load(str(fp32_onnx))
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model_proto = convert_float_to_float16(onnx.load(str(fp32_onnx)), keep_io_types=True)
    elif precision == "int8":
        _quantize_int8(Path(fp32_onnx), out_path, contract, calib_batches)
        model_proto = onnx.load(str(out_path))
        artifact = artifact.replace(extra={**artifact.extra,
                                           "onnx_int8": {**_QUANT, "calibration_frames": len(calib_batches)}})
    else:
        raise InputError(f"ONNX precision {precision!r} is not supported; choose fp32, fp16 or int8")
    _set_contract(model_proto, artifact)
    onnx.save(model_proto, str(out_path))
    return out_path, artifact

"""An fp32 ncnn model (.param + .bin) -> its int8 twin: the Convolution layers quantised, calibrated on frames.

Written here because ncnn's own tools for it (ncnn2table, ncnn2int8) are C++ programs that neither the ncnn nor
the pnnx pip wheel ships. What is written is ncnn's int8 model form, which the runtime of the ncnn wheel loads and
runs (ncnn 1.0.20261020; tests/test_export_ncnn_int8.py checks it against numpy):
- .param: an int8 Convolution gets 8=2 (int8_scale_term: one weight scale per output channel and one input
  scale), or 8=102 when its output feeds one other int8 Convolution and nothing else: ncnn then requantises the
  output inside the layer (activation included) and the next layer takes it as int8, with no dequantise and
  quantise pass in between.
- .bin, per int8 Convolution: its weights as int8 behind the tag 0x000D4B38 (padded to 4 bytes) where the fp32
  block was, the fp32 bias as before, then the weight scales (num_output float32), the input scale (one float32)
  and, for 8=102, the input scale of the layer it feeds.
Quantisation: q = round(v * scale) clipped to [-127, 127]; a weight scale is 127 / max|w| over its output
channel; an input scale is 127 / max|x| over every calibration batch, x being the layer's input blob as the fp32
model computes it (min-max, as the ONNX int8 export calibrates too).
Deconvolutions: ncnn has no int8 kernel for them, so a 3x3 stride-2 one (padding 1, output padding 1: the 2x
upsampling of LW-IRSTNet and of most encoder-decoders) is first rewritten as the same function in two layers, a
2x2 Convolution with one output channel per output channel and output pixel phase, then PixelShuffle(2); the
Convolution then goes int8 like the others. On LW-IRSTNet (the bundle's weights, one thread, AMD EPYC, ncnn
driven directly in 15 interleaved rounds, ad hoc) that took the int8 model from 1.50x to 1.58x the speed of the
authors' fp32 ncnn, at the same accuracy on the test splits; the same rewrite made the fp32 model slower (0.89x),
so only the int8 twin gets it.
Left in fp32: depthwise convolutions (on LW-IRSTNet, one thread, AMD EPYC with AVX-512 VNNI, interleaved rounds:
the model ran 1.29x faster than fp32 with its Convolutions in int8, 1.11x with its depthwise ones in int8 too),
Convolutions that read fewer than 4 channels from a layer other than a Convolution (a stem on the 3 colour
channels or on the planes of a grey-input model), deconvolutions of any other geometry, and every other layer.
Why those narrow-input ones: they would quantise an fp32 input (at full resolution, for a stem) for an int8 kernel
that gains little on so few channels. LW-IRSTNet's stem (3 -> 5 channels at 256x256) took 0.24 ms in int8 against
0.10 ms in fp32 widened to 8 outputs (ncnn_widen.py), and the whole int8 model ran 1.04x faster with it in fp32
(ncnn 1.0.20261020, one thread, AMD EPYC Zen 5, 16 interleaved rounds, ad hoc script); so the int8 twin is
quantised from the widened fp32 model. A narrow Convolution fed by a Convolution stays int8: it gets its input
already requantised to int8 (8=102 above), and keeping the bottlenecks' 2-channel ones in fp32 as well cost
that model 5 %.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_irst.backends.ncnn_format import (CONVOLUTIONS, FP16_TAG, FP32_TAG, INT8_TAG, ParamLayer, read_param,
                                            weight_blocks)
from edge_irst.errors import InputError, MissingDependencyError, ModelFileError

REQUANTISED = 100  # added to int8_scale_term when the output is requantised for the next layer
INT8_MIN_INPUTS = 4  # Convolutions reading fewer channels, not from another Convolution, stay fp32 (module text)
_INT8_WEIGHTS = (*CONVOLUTIONS, "InnerProduct")  # layers whose param 8 says their weights are int8


def _weight_blocks(layer: ParamLayer, where: Path = Path("the ncnn model")) -> list[tuple[str, int, bool]]:
    """(name, float32 count, whether a 4-byte tag precedes it) of each block the layer reads, in .bin order
    (edge_irst.backends.ncnn_format). A layer whose layout that table does not know stops the rewriters:
    misreading one block would shift every weight after it. `where` names the model in messages."""
    if layer.type in _INT8_WEIGHTS and layer.int_param(8, 0, where):
        raise ModelFileError(f"layer {layer.name} ({layer.type}) is already int8: quantise the fp32 model")
    blocks = weight_blocks(layer, where)
    if blocks is None:
        raise ModelFileError(f"layer {layer.name}: the int8 quantiser does not know how a {layer.type} layer's "
                             f"weights are stored, so it cannot rewrite the .bin safely")
    return blocks


def stored_blocks(layer: ParamLayer, blocks: dict) -> bytes:
    """The layer's weight blocks as a .bin holds them: behind its tag where the block is tagged (float32, or float16
    padded to 4 bytes, by the array's dtype), raw float32 where it is not. A layer written back unchanged."""
    out = bytearray()
    for name, _, tagged in _weight_blocks(layer):
        data = blocks[name].tobytes()
        if tagged:
            out += struct.pack("<I", FP16_TAG if blocks[name].dtype == np.float16 else FP32_TAG)
            data += b"\0" * (-len(data) % 4)
        out += data
    return bytes(out)


def _split_weights(layers: list[ParamLayer], blob: bytes, path: Path, half: bool = False) -> list[dict]:
    """Per layer, {block name: array} read from the .bin in the order ncnn loads them: float32, and float16 for the
    tagged blocks stored so where `half` allows them (else they are refused)."""
    offset, out = 0, []
    for layer in layers:
        arrays = {}
        for name, count, tagged in _weight_blocks(layer, path):
            dtype = np.dtype(np.float32)
            if tagged:
                (tag,) = struct.unpack_from("<I", blob, offset) if offset + 4 <= len(blob) else (None,)
                if half and tag == FP16_TAG:
                    dtype = np.dtype(np.float16)
                elif tag != FP32_TAG:
                    raise ModelFileError(f"{path}: the {name} of layer {layer.name} is not stored as plain float32"
                                         f"{' or float16' if half else ''} (tag {tag if tag is None else hex(tag)})"
                                         f"{'' if half else ': quantise the fp32 .bin'}")
                offset += 4
            size = dtype.itemsize * count
            if offset + size > len(blob):
                raise ModelFileError(f"{path}: ends inside the {name} of layer {layer.name}: truncated, or not "
                                     f"the .bin of this .param")
            arrays[name] = np.frombuffer(blob, dtype, count, offset)
            offset += size + (-size % 4 if tagged else 0)
        out.append(arrays)
    if offset != len(blob):
        raise ModelFileError(f"{path}: {len(blob) - offset} bytes left after the last layer's weights: not the "
                             f".bin of this .param")
    return out


def _input_peaks(param: Path, weights: Path, batches: Sequence[np.ndarray], input_name: str,
                 blobs: list[str]) -> dict:
    """{blob: max |value| over the batches}, from the fp32 model run by ncnn."""
    try:
        import ncnn
    except ImportError as exc:
        raise MissingDependencyError("ncnn (needed to calibrate an int8 ncnn model)", "ncnn", str(exc)) from exc
    net = ncnn.Net()
    net.opt.lightmode = False  # keep every blob: they are all read after one forward pass
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ModelFileError(f"{param}: ncnn cannot load the fp32 model to calibrate it")
    peaks = dict.fromkeys(blobs, 0.0)
    for batch in batches:
        peaks_here = _batch_peaks(ncnn, net, param, np.ascontiguousarray(batch[0], np.float32), input_name, blobs)
        peaks = {blob: max(peak, peaks_here[blob]) for blob, peak in peaks.items()}
    net.clear()
    return peaks


def _batch_peaks(ncnn, net, param: Path, chw: np.ndarray, input_name: str, blobs: list[str]) -> dict:
    """{blob: max |value|} for one input. In a function of its own so that the extractor and its Mats are gone
    before the net is cleared: ncnn aborts the process when its pool allocator dies before the blobs it holds."""
    extractor = net.create_extractor()
    extractor.input(input_name, ncnn.Mat(chw))
    peaks = {}
    for blob in blobs:
        ret, mat = extractor.extract(blob)
        if ret != 0:
            raise ModelFileError(f"{param}: ncnn could not compute blob {blob!r} (returned {ret})")
        peaks[blob] = float(np.abs(np.array(mat)).max())
        if not np.isfinite(peaks[blob]):  # checked here: max() over the batches would drop a NaN
            raise InputError(f"calibration: blob {blob!r} of the fp32 model holds inf/NaN on a calibration frame")
    return peaks


# Sub-pixel form of a 3x3, stride-2, pad-1, output-pad-1 deconvolution: output row 2m + a takes input rows m and
# m + 1 (the 2x2 window at m) through kernel rows _PHASE_TAPS[a] (None: that input row does not reach it); the
# same for columns. ncnn stores deconvolution weights [out][in][ky][kx] and scatters input (i, j) to output
# (2i + ky - 1, 2j + kx - 1), so output 2m takes ky = 1 from row m, output 2m + 1 ky = 2 from row m and ky = 0
# from row m + 1.
_PHASE_TAPS = {0: (1, None), 1: (2, 0)}
_SUBPIXEL_GEOMETRY = {"kernel": (3, 3), "dilation": (1, 1), "stride": (2, 2), "pad": (1, 1, 1, 1),
                      "output_pad": (1, 1)}


def _deconvolution_geometry(p: dict) -> dict:
    """A Deconvolution's geometry with ncnn's defaults filled in (Deconvolution::load_param)."""
    def value(key: str, default: int) -> int:
        return int(p.get(key, default))

    kw, dw, sw, pl, opr = value("1", 0), value("2", 1), value("3", 1), value("4", 0), value("18", 0)
    pt = value("14", pl)
    return {"kernel": (kw, value("11", kw)), "dilation": (dw, value("12", dw)), "stride": (sw, value("13", sw)),
            "pad": (pl, value("15", pl), pt, value("16", pt)), "output_pad": (opr, value("19", opr)),
            "fixed_output": value("20", 0) or value("21", 0), "dynamic_weight": value("28", 0)}


def _subpixel(layer: ParamLayer, blocks: dict) -> tuple[list[ParamLayer], list[dict]]:
    """The layer as-is, or, for a Deconvolution of _SUBPIXEL_GEOMETRY, the 2x2 Convolution (4 x num_output
    outputs, output channel 4 co + 2 a + b holding output channel co's phase (row a, column b)) and PixelShuffle
    that compute the same, with their weight blocks. The activation (9=, 10=) moves to the Convolution: it is
    elementwise, and PixelShuffle only moves values."""
    if layer.type != "Deconvolution":
        return [layer], [blocks]
    geometry = _deconvolution_geometry(layer.params)
    if any(geometry[key] != want for key, want in _SUBPIXEL_GEOMETRY.items()) or geometry["fixed_output"] \
            or geometry["dynamic_weight"]:
        return [layer], [blocks]
    outputs = int(layer.params["0"])
    weight = blocks["weight"].reshape(outputs, -1, 3, 3)
    inputs = weight.shape[1]
    phases = np.zeros((outputs, 2, 2, inputs, 2, 2), np.float32)
    for a, rows in _PHASE_TAPS.items():
        for b, cols in _PHASE_TAPS.items():
            for dy, ky in enumerate(rows):
                for dx, kx in enumerate(cols):
                    if ky is not None and kx is not None:
                        phases[:, a, b, :, dy, dx] = weight[:, :, ky, kx]
    phases = phases.reshape(4 * outputs, inputs, 2, 2)
    middle = f"{layer.tops[0]}_phases"
    params = {"0": str(4 * outputs), "1": "2", "11": "2", "4": "0", "15": "1", "14": "0", "16": "1",
              "5": layer.params.get("5", "0"), "6": str(phases.size),
              **{key: value for key, value in layer.params.items() if key in ("9", "-23310")}}  # the activation
    conv_line = (f"Convolution {layer.name}_subpixel 1 1 {layer.bottoms[0]} {middle} "
                 + " ".join(f"{key}={value}" for key, value in params.items()))
    conv = ParamLayer("Convolution", f"{layer.name}_subpixel", list(layer.bottoms), [middle], params, conv_line)
    shuffle = ParamLayer("PixelShuffle", layer.name, [middle], list(layer.tops), {"0": "2"},
                         f"PixelShuffle {layer.name} 1 1 {middle} {layer.tops[0]} 0=2")
    conv_blocks = {"weight": phases.ravel()}
    if "bias" in blocks:
        conv_blocks["bias"] = np.repeat(blocks["bias"], 4)
    return [conv, shuffle], [conv_blocks, {}]


def input_channels(layer: ParamLayer) -> int:
    """How many channels a Convolution reads: its weight count over outputs x kernel area (ncnn's defaults: a
    square kernel when 11= is absent)."""
    p = layer.params
    kernel_w = int(p.get("1", 0))
    area = int(p.get("0", 0)) * kernel_w * int(p.get("11", kernel_w))
    return int(p.get("6", 0)) // area if area else 0


def _scale(peak: float) -> float:
    return 127.0 / peak if peak > 0 else 1.0  # an input that is always 0 quantises exactly with any scale


def quantize_ncnn(param: Path, out_param: Path, batches: Sequence[np.ndarray], input_name: str) -> dict:
    """Write the int8 twin of `param` (and its .bin) to `out_param` (and its .bin). batches: float32 NCHW
    [1, C, H, W] calibration inputs, preprocessed as the model expects. Returns a summary of what was done."""
    if not batches:
        raise InputError("ncnn int8 needs calibration batches (float32 NCHW [1, C, H, W]) to set its input scales")
    param, out_param = Path(param), Path(out_param)
    weights = param.with_suffix(".bin")
    header, original = read_param(param)
    layers, arrays = [], []
    for layer, blocks in zip(original, _split_weights(original, weights.read_bytes(), weights)):
        rewritten, rewritten_blocks = _subpixel(layer, blocks)
        layers += rewritten
        arrays += rewritten_blocks
    subpixel = len(layers) - len(original)
    layer_count, blob_count = (int(v) for v in header[1].split())
    header = [header[0], f"{layer_count + subpixel} {blob_count + subpixel}"]
    # Calibrated on the fp32 model as given: every Convolution input, a sub-pixel one's included, is a blob of it.
    producer = {blob: layer for layer in layers for blob in layer.tops}
    convolutions = [layer for layer in layers if layer.type == "Convolution"
                    and (input_channels(layer) >= INT8_MIN_INPUTS or producer[layer.bottoms[0]].type == "Convolution")]
    for layer, blocks in zip(layers, arrays):
        if layer.type == "Convolution" and not np.isfinite(blocks["weight"]).all():
            raise ModelFileError(f"{weights}: the weights of layer {layer.name} hold inf/NaN")
    inputs = list(dict.fromkeys(c.bottoms[0] for c in convolutions))  # in graph order: the first bad one is named
    peaks = _input_peaks(param, weights, batches, input_name, inputs)
    input_scale = {id(c): _scale(peaks[c.bottoms[0]]) for c in convolutions}  # by layer: names may repeat
    consumers: dict = {}
    for layer in layers:
        for blob in layer.bottoms:
            consumers.setdefault(blob, []).append(layer)

    lines, blob, requantised = list(header), bytearray(), 0
    for layer, blocks in zip(layers, arrays):
        if id(layer) not in input_scale:
            lines.append(layer.line)
            blob += stored_blocks(layer, blocks)
            continue
        outputs = int(layer.params["0"])
        kernels = blocks["weight"].reshape(outputs, -1)
        peak = np.abs(kernels).max(axis=1)
        weight_scale = (127.0 / np.where(peak > 0, peak, 127.0)).astype(np.float32)  # an all-zero channel: 1
        quantised = np.clip(np.rint(kernels * weight_scale[:, None]), -127, 127).astype(np.int8).tobytes()
        blob += struct.pack("<I", INT8_TAG) + quantised + b"\0" * (-len(quantised) % 4)
        if "bias" in blocks:
            blob += blocks["bias"].tobytes()
        blob += weight_scale.tobytes() + np.float32(input_scale[id(layer)]).tobytes()
        term = 2
        fed = consumers.get(layer.tops[0], [])
        if len(fed) == 1 and id(fed[0]) in input_scale:
            term += REQUANTISED
            blob += np.float32(input_scale[id(fed[0])]).tobytes()
            requantised += 1
        lines.append(f"{layer.line} 8={term}")
    out_param.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out_param.with_suffix(".bin").write_bytes(bytes(blob))
    left = [layer.type if layer.type != "Convolution" else "Convolution (narrow input)"
            for layer in layers if layer.type in ("ConvolutionDepthWise", "Deconvolution")
            or (layer.type == "Convolution" and id(layer) not in input_scale)]
    return {"int8_convolutions": len(convolutions), "requantised": requantised,
            "subpixel_deconvolutions": subpixel, "fp32_kept": {kind: left.count(kind) for kind in sorted(set(left))},
            "calibration": f"min-max of each int8 layer's input over {len(batches)} batches"}

"""Narrow ncnn Convolutions widened to 8 outputs: a layer with 5 to 7 output channels computes 8, the added filters
all zero, and a Crop right after it keeps its own channels. The model computes the same function.

Why: ncnn's CPU kernels work on channels packed 4, 8 or 16 to a SIMD register ("elempack"), and a layer whose
output count is a multiple of none of these runs its one-channel-at-a-time path. LW-IRSTNet's stem convolution
(3 -> 5 channels, 3x3 stride 2, 256x256 -> 128x128) took 0.58 ms on that path and 0.21 ms with 8 outputs, and the
whole fp32 model ran 1.06x faster at 1 thread and 1.05x at 2 (AMD EPYC Zen 4, ncnn 1.0.20261020, interleaved
rounds, ad hoc script). Layers with 1 or 2 outputs gained nothing from it there (widened to 8 and cropped:
0.99-1.02x of the model), so only 5 to 7 are widened; 16 outputs ran slower than 8 for that layer (0.52 ms), so
the width is 8, not the register's 16. The fp16 artifact (float16 weights, fp32 arithmetic on x86) gains the same:
1.05x at 1 thread. The int8 twin is quantised from the widened model, its narrow-input stem kept in fp32
(ncnn_int8.py): the stem widened and in int8 had run 0.97-0.99x.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_irst.backends.ncnn_format import ParamLayer, read_param

from .ncnn_int8 import _split_weights, stored_blocks

NARROW_OUTPUTS = range(5, 8)
WIDTH = 8


def _is_narrow(layer: ParamLayer) -> bool:
    p = layer.params
    # 8= int8 weights, 19= weights taken from a second input: neither has a weight block to pad here.
    return (layer.type == "Convolution" and int(p.get("0", 0)) in NARROW_OUTPUTS and not int(p.get("8", 0))
            and not int(p.get("19", 0)))


def widen_narrow_convolutions(param: Path, out_param: Path) -> int:
    """Write `param` (an ncnn .param, its .bin beside it) to `out_param` (and its .bin) with every narrow
    Convolution widened as the module says; returns how many were. Weights stay as stored: float32, or float16
    (pnnx's fp16=1), block by block; any other storage (int8) is refused."""
    param, out_param = Path(param), Path(out_param)
    weights = param.with_suffix(".bin")
    header, layers = read_param(param)
    lines, blob, widened = [], bytearray(), 0
    for layer, blocks in zip(layers, _split_weights(layers, weights.read_bytes(), weights, half=True)):
        if not _is_narrow(layer):
            lines.append(layer.line)
            blob += stored_blocks(layer, blocks)
            continue
        outputs = int(layer.params["0"])
        filters = blocks["weight"].reshape(outputs, -1)
        wide = {"weight": np.zeros((WIDTH, filters.shape[1]), filters.dtype)}  # float16 stays float16
        wide["weight"][:outputs] = filters
        if "bias" in blocks:
            wide["bias"] = np.concatenate([blocks["bias"], np.zeros(WIDTH - outputs, np.float32)])
        params = {**layer.params, "0": str(WIDTH), "6": str(wide["weight"].size)}
        top, middle = layer.tops[0], f"{layer.tops[0]}_wide"
        line = (f"Convolution {layer.name} 1 1 {layer.bottoms[0]} {middle} "
                + " ".join(f"{key}={value}" for key, value in params.items()))
        blob += stored_blocks(ParamLayer("Convolution", layer.name, list(layer.bottoms), [middle], params, line), wide)
        # channels [0, outputs) of the (C, H, W) blob; axis 0 is the channel in ncnn's batchless shapes
        lines += [line, f"Crop {layer.name}_narrow 1 1 {middle} {top} -23309=1,0 -23310=1,{outputs} -23311=1,0"]
        widened += 1
    layer_count, blob_count = (int(v) for v in header[1].split())
    out_param.write_text("\n".join([header[0], f"{layer_count + widened} {blob_count + widened}", *lines]) + "\n",
                         encoding="utf-8")
    out_param.with_suffix(".bin").write_bytes(bytes(blob))
    return widened

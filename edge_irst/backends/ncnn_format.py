"""ncnn's file format, read here once for the ncnn backend (checks before ncnn sees a pair) and the exporter's
rewriters (export/ncnn_int8.py, export/ncnn_widen.py): the text .param's layer lines, and how each layer's
weights are laid out in the .bin, as ncnn's load_model reads them (src/layer/*.cpp, src/modelbin.cpp).

Written by hand because ncnn's Python wheel exposes neither: it loads a pair or fails (and crashes on some
mismatched pairs), with no way to ask what a layer holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edge_irst.errors import ModelFileError

PARAM_MAGIC = "7767517"
# ModelBin storage tags of a tagged weight block; 0 = raw float32.
FP32_TAG, FP16_TAG, INT8_TAG, SCALED_FP32_TAG = 0, 0x01306B47, 0x000D4B38, 0x0002C056
_QUANTISATION_TABLE = 256 * 4  # any other non-zero tag: 256 float32 values, then one uint8 index per weight
# Layers that read nothing from the .bin.
WEIGHTLESS = {"Input", "Split", "ReLU", "LeakyReLU", "Sigmoid", "TanH", "Clip", "HardSigmoid", "HardSwish",
              "Swish", "Mish", "ELU", "AbsVal", "BinaryOp", "UnaryOp", "Eltwise", "Pooling", "Concat", "Slice",
              "Crop", "Interp", "PixelShuffle", "Reorg", "Reshape", "Permute", "Flatten", "Softmax", "Noop",
              "Dropout", "ShuffleChannel"}
# Convolution-like layers -> the param id of their dynamic_weight flag (weights from a second input, none stored).
CONVOLUTIONS = {"Convolution": 19, "ConvolutionDepthWise": 19, "Deconvolution": 28, "DeconvolutionDepthWise": 28}


@dataclass
class ParamLayer:
    """One layer line of a text .param: its type, name, input and output blobs, params by id as written ("0",
    "-23310") with their values as text, and the line itself (written back unchanged by the rewriters)."""

    type: str
    name: str
    bottoms: list
    tops: list
    params: dict
    line: str

    def int_param(self, key: int, default: int, path: Path) -> int:
        text = self.params.get(str(key))
        if text is None:
            return default
        try:
            return int(text)
        except ValueError:
            raise ModelFileError(f"{path}: layer {self.name!r} ({self.type}) has {key}={text!r} where ncnn reads "
                                 f"an integer") from None


def read_param(path: Path) -> tuple[list[str], list[ParamLayer]]:
    """(the magic and count lines, the layers) of a text .param, after checking its magic number, header and
    layer lines."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not a readable ncnn text .param ({exc})") from exc
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise ModelFileError(f"{path}: not an ncnn .param (first line {lines[0][:20]!r} if any, expected the magic "
                             f"number {PARAM_MAGIC})" if lines else f"{path}: empty ncnn .param")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise ModelFileError(f"{path}: ncnn .param header line 2 must be '<layer count> <blob count>'") from None
    layer_lines = [ln for ln in lines[2:] if ln.strip()]
    if len(layer_lines) < layer_count:
        raise ModelFileError(f"{path}: declares {layer_count} layers but holds {len(layer_lines)}: truncated .param")
    return lines[:2], [_parse_layer(line, path) for line in layer_lines]


def _parse_layer(line: str, path: Path) -> ParamLayer:
    """'<type> <name> <n in> <n out> <in blobs> <out blobs> <id>=<value> ...' -> ParamLayer."""
    fields = line.split()
    try:
        n_in, n_out = int(fields[2]), int(fields[3])
        blobs = fields[4:4 + n_in + n_out]
        params = dict(word.split("=", 1) for word in fields[4 + n_in + n_out:])
        for key in params:
            int(key)
    except (IndexError, ValueError):
        raise ModelFileError(f"{path}: malformed layer line {line.strip()[:80]!r} (expected '<type> <name> <inputs> "
                             f"<outputs> <blob names> <id>=<value>...')") from None
    if n_in < 0 or n_out < 0 or len(blobs) != n_in + n_out:
        raise ModelFileError(f"{path}: layer line {line.strip()[:80]!r} names fewer blobs than it counts")
    return ParamLayer(fields[0], fields[1], blobs[:n_in], blobs[n_in:], params, line)


def weight_blocks(layer: ParamLayer, path: Path) -> Optional[list[tuple[str, int, bool]]]:
    """(name, value count, tagged) of each block the layer's load_model reads, in .bin order; tagged blocks
    (ModelBin type 0) start with a storage tag, untagged ones (type 1) are raw float32. None for a layer type this
    table does not know."""
    def param(key: int, default: int = 0) -> int:
        return layer.int_param(key, default, path)

    kind = layer.type
    if kind in WEIGHTLESS:
        return []
    if kind in CONVOLUTIONS:
        if param(CONVOLUTIONS[kind]):  # dynamic_weight: the weights arrive as a second input blob
            return []
        num_output = param(0)
        blocks = [("weight", param(6), True)] + ([("bias", num_output, False)] if param(5) else [])
        return blocks + _int8_scale_blocks(kind, param(8), num_output, param(7, 1))
    if kind == "InnerProduct":
        num_output = param(0)
        blocks = [("weight", param(2), True)] + ([("bias", num_output, False)] if param(1) else [])
        return blocks + ([("weight scales", num_output, False), ("input scale", 1, False)] if param(8) else [])
    if kind == "BatchNorm":
        return [(name, param(0), False) for name in ("slope", "mean", "variance", "bias")]
    if kind in ("PReLU", "Bias"):
        return [("slope" if kind == "PReLU" else "bias", param(0), False)]
    if kind == "Scale":
        size = param(0)  # -233: the scale is a second input
        return [] if size == -233 else [("scale", size, False)] + ([("bias", size, False)] if param(1) else [])
    if kind == "Padding":
        return [("pad values", param(6), False)] if param(6) else []  # per-channel pad values
    if kind == "MemoryData":
        w, h, d, c = param(0), param(1), param(11), param(2)
        count = w * h * d * c if d else w * h * c if c else w * h if h else w
        return [("data", count, param(21, 1) == 0)] if count else []  # param 21: load type, 1 = raw float32
    return None


def _int8_scale_blocks(kind: str, int8_scale_term: int, num_output: int, group: int) -> list[tuple[str, int, bool]]:
    """The raw float32 int8 scales behind a convolution's weights and bias: weight scale(s), input scale, and
    with int8_scale_term > 100 (requantised output) the next layer's input scale."""
    if not int8_scale_term or kind not in ("Convolution", "ConvolutionDepthWise"):
        return []
    if kind == "Convolution":
        blocks = [("weight scales", num_output, False), ("input scale", 1, False)]
    elif int8_scale_term in (1, 101):
        blocks = [("weight scales", group, False), ("input scale", 1, False)]
    elif int8_scale_term in (2, 102):
        blocks = [("weight scales", 1, False), ("input scale", 1, False)]
    else:
        blocks = []
    return blocks + ([("output scale", 1, False)] if int8_scale_term > 100 else [])


def _align4(size: int) -> int:
    return (size + 3) // 4 * 4


def _tagged_size(tag: int, count: int) -> int:
    """Bytes after a tagged block's 4-byte tag (ModelBinFromDataReader::load)."""
    if tag == FP16_TAG:
        return _align4(2 * count)
    if tag == INT8_TAG:
        return _align4(count)
    if tag in (FP32_TAG, SCALED_FP32_TAG):
        return 4 * count
    return _QUANTISATION_TABLE + _align4(count)


def check_weights_size(param: Path, weights: Path, layers: list[ParamLayer]) -> None:
    """Refuse a .bin whose size is not what the .param's layers read from it: every block of the layers
    weight_blocks() knows, sized by the storage tag found in the .bin where one precedes it. Past a layer type
    it does not know, where the next block starts is unknown, so the rest is only bounded from below."""
    size = weights.stat().st_size
    offset, unknown = 0, []
    with open(weights, "rb") as fh:
        for layer in layers:
            blocks = weight_blocks(layer, param)
            if blocks is None:
                unknown.append(layer.type)
                continue
            for _, count, tagged in blocks:
                if count < 0:
                    raise ModelFileError(f"{param}: layer {layer.name!r} ({layer.type}) declares {count} weights")
                if tagged and not unknown:
                    fh.seek(offset)
                    tag = int.from_bytes(fh.read(4).ljust(4, b"\0"), "little")  # past the end: sized as raw
                    offset += 4 + _tagged_size(tag, count)
                elif tagged:  # where it starts is unknown, so is its tag: the smallest storage, int8
                    offset += 4 + _align4(count)
                else:
                    offset += 4 * count
    if offset > size or (offset != size and not unknown):
        needs = (f"at least {offset} (layers of type {', '.join(sorted(set(unknown)))} not counted)" if unknown
                 else f"exactly {offset}")
        raise ModelFileError(f"{weights}: {size} bytes, but {param} needs {needs} bytes of weights (its layers "
                             f"sized by the storage tags found in the .bin): not this .param's weights (another "
                             f"model or precision), truncated, or with bytes appended")

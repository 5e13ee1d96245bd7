"""The widening of narrow ncnn Convolutions (export/ncnn_widen.py) on a small ncnn model written here by hand, run by
the real ncnn runtime and checked against numpy. Needs ncnn only (no torch, no ../shared)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

ncnn = pytest.importorskip("ncnn", reason="the widened model is checked with the [ncnn] extra")

from edge_irst.errors import ModelFileError  # noqa: E402
from edge_irst.backends.ncnn_format import FP16_TAG, INT8_TAG, read_param  # noqa: E402
from edge_irst.export.ncnn_widen import WIDTH, widen_narrow_convolutions  # noqa: E402

SLOPE = 0.1
CHANNELS, SIZE = 3, 12


def _write_model(folder, widths: tuple, tag: int = 0):
    """Input -> one 3x3 Convolution (pad 1, bias, leaky ReLU) per entry of `widths`, in a chain -> out; returns the
    .param and the weights."""
    rng = np.random.default_rng(0)
    layers = [f"Input in0 0 1 in0 0={SIZE} 1={SIZE} 2={CHANNELS}"]
    blob, weights, bottom, inputs = b"", [], "in0", CHANNELS
    for i, outputs in enumerate(widths):
        w = rng.normal(0, 0.4, (outputs, inputs, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, outputs).astype(np.float32)
        top = "out" if i == len(widths) - 1 else f"c{i}"
        layers.append(f"Convolution conv{i} 1 1 {bottom} {top} 0={outputs} 1=3 11=3 4=1 14=1 5=1 6={w.size} 9=2 "
                      f"-23310=1,{SLOPE}")
        stored = w.astype(np.float16).tobytes() + b"\0" * (w.size % 2 * 2) if tag == FP16_TAG else w.tobytes()
        blob += struct.pack("<I", tag) + stored + b.tobytes()
        weights.append((w, b))
        bottom, inputs = top, outputs
    param = folder / "narrow.param"
    param.write_text("7767517\n" + f"{len(layers)} {len(layers)}\n" + "\n".join(layers) + "\n")
    param.with_suffix(".bin").write_bytes(blob)
    return param, weights


def _numpy_forward(x: np.ndarray, weights: list) -> np.ndarray:
    for w, b in weights:
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
        patches = np.stack([padded[:, dy:dy + SIZE, dx:dx + SIZE] for dy in range(3) for dx in range(3)], axis=1)
        y = np.einsum("ckhw,ock->ohw", patches, w.reshape(w.shape[0], w.shape[1], 9)) + b[:, None, None]
        x = np.where(y > 0, y, SLOPE * y).astype(np.float32)
    return x


def _run(param, x: np.ndarray) -> np.ndarray:
    net = ncnn.Net()
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    extractor = net.create_extractor()
    extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x)))
    status, out = extractor.extract("out")
    assert status == 0
    return np.array(out)


def test_narrow_convolutions_compute_on_8_outputs_and_give_the_same_result(tmp_path):
    # 5 and 7 outputs are widened (the 7 one reads the 5 one's cropped blob); 4 and 2 are left as they are
    param, weights = _write_model(tmp_path, (5, 4, 7, 2))
    wide = tmp_path / "wide.param"
    assert widen_narrow_convolutions(param, wide) == 2
    _, layers = read_param(wide)
    assert [(layer.type, layer.params.get("0")) for layer in layers] == [
        ("Input", str(SIZE)), ("Convolution", str(WIDTH)), ("Crop", None), ("Convolution", "4"),
        ("Convolution", str(WIDTH)), ("Crop", None), ("Convolution", "2")]
    crops = [layer for layer in layers if layer.type == "Crop"]
    assert [c.params["-23310"] for c in crops] == ["1,5", "1,7"]
    assert crops[0].tops == ["c0"] and layers[3].bottoms == ["c0"]  # the next layer reads the narrow blob again
    # the added filters are zero and the real ones come first, in order
    blob = np.frombuffer(wide.with_suffix(".bin").read_bytes(), np.float32)
    first = blob[1:1 + WIDTH * CHANNELS * 9].reshape(WIDTH, -1)
    np.testing.assert_array_equal(first[:5], weights[0][0].reshape(5, -1))
    assert not first[5:].any()

    x = np.random.default_rng(1).normal(0, 1, (CHANNELS, SIZE, SIZE)).astype(np.float32)
    narrow_out, wide_out = _run(param, x), _run(wide, x)
    assert wide_out.shape == (2, SIZE, SIZE)
    np.testing.assert_allclose(wide_out, narrow_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wide_out, _numpy_forward(x, weights), rtol=1e-3, atol=1e-3)


def test_a_model_without_narrow_convolutions_is_written_unchanged(tmp_path):
    param, _ = _write_model(tmp_path, (8, 4))
    wide = tmp_path / "wide.param"
    assert widen_narrow_convolutions(param, wide) == 0
    assert wide.read_text() == param.read_text()
    assert wide.with_suffix(".bin").read_bytes() == param.with_suffix(".bin").read_bytes()


def test_fp16_weights_are_widened_and_stay_fp16(tmp_path):
    """pnnx's fp16 artifact: float16 weight blocks behind their tag (padded to 4 bytes), float32 biases."""
    param, weights = _write_model(tmp_path, (5, 2), tag=FP16_TAG)
    wide = tmp_path / "wide.param"
    assert widen_narrow_convolutions(param, wide) == 1
    blob = wide.with_suffix(".bin").read_bytes()
    assert struct.unpack_from("<I", blob)[0] == FP16_TAG
    first = np.frombuffer(blob, np.float16, WIDTH * CHANNELS * 9, 4).reshape(WIDTH, -1)
    np.testing.assert_array_equal(first[:5], weights[0][0].astype(np.float16).reshape(5, -1))
    assert not first[5:].any()
    x = np.random.default_rng(1).normal(0, 1, (CHANNELS, SIZE, SIZE)).astype(np.float32)
    np.testing.assert_allclose(_run(wide, x), _run(param, x), rtol=1e-4, atol=1e-4)


def test_int8_weights_are_refused_not_misread(tmp_path):
    param, _ = _write_model(tmp_path, (5,), tag=INT8_TAG)
    with pytest.raises(ModelFileError, match="not stored as plain float32 or float16"):
        widen_narrow_convolutions(param, tmp_path / "wide.param")

"""The ncnn int8 quantiser (export/ncnn_int8.py) on a small ncnn model written here by hand, run by the real ncnn
runtime and checked against convolutions computed in numpy. Needs ncnn only (no torch, no ../shared)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

ncnn = pytest.importorskip("ncnn", reason="the ncnn int8 quantiser calibrates with the [ncnn] extra")

from edge_irst.errors import InputError, ModelFileError  # noqa: E402
from edge_irst.backends.ncnn_format import INT8_TAG  # noqa: E402
from edge_irst.export.ncnn_int8 import quantize_ncnn  # noqa: E402

SLOPE = 0.1
CHANNELS, HIDDEN, OUTPUTS, SIZE = 4, 8, 4, 16  # 4 inputs: conv0 is not a narrow-input stem


def _weights(seed: int = 0, channels: int = CHANNELS, hidden: int = HIDDEN) -> dict:
    rng = np.random.default_rng(seed)
    return {"w0": rng.normal(0, 0.4, (hidden, channels, 3, 3)).astype(np.float32),
            "b0": rng.normal(0, 0.1, hidden).astype(np.float32),
            "w1": rng.normal(0, 0.4, (OUTPUTS, hidden, 1, 1)).astype(np.float32),
            "b1": rng.normal(0, 0.1, OUTPUTS).astype(np.float32)}


def _write_model(folder, weights: dict, extra_layer: str = "", tag: int = 0):
    """Input -> 3x3 Convolution (pad 1, bias, leaky ReLU) -> 1x1 Convolution (bias) -> out, as pnnx writes it."""
    hidden, channels = weights["w0"].shape[:2]
    layers = [f"Input in0 0 1 in0 0={SIZE} 1={SIZE} 2={channels}",
              f"Convolution conv0 1 1 in0 c0 0={hidden} 1=3 11=3 4=1 14=1 5=1 6={weights['w0'].size} 9=2 "
              f"-23310=1,{SLOPE}",
              f"Convolution conv1 1 1 c0 out 0={OUTPUTS} 1=1 11=1 5=1 6={weights['w1'].size}"]
    if extra_layer:
        layers.append(extra_layer)
    param = folder / "tiny.param"
    param.write_text("7767517\n" + f"{len(layers)} {len(layers) + 1}\n" + "\n".join(layers) + "\n")
    blob = b"".join(struct.pack("<I", tag) + weights[f"w{i}"].tobytes() + weights[f"b{i}"].tobytes()
                    for i in (0, 1))
    param.with_suffix(".bin").write_bytes(blob)
    return param


def _numpy_model(weights: dict, x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    hidden = np.zeros((len(weights["w0"]), SIZE, SIZE), np.float64)
    for dy in range(3):
        for dx in range(3):
            hidden += np.einsum("oc,chw->ohw", weights["w0"][:, :, dy, dx], padded[:, dy:dy + SIZE, dx:dx + SIZE])
    hidden += weights["b0"][:, None, None]
    hidden = np.where(hidden > 0, hidden, SLOPE * hidden)
    return np.einsum("oc,chw->ohw", weights["w1"][:, :, 0, 0], hidden) + weights["b1"][:, None, None]


def _run(param, x: np.ndarray, int8: bool = True) -> np.ndarray:
    net = ncnn.Net()
    net.opt.use_int8_inference = int8
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    extractor = net.create_extractor()
    extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x)))
    ret, mat = extractor.extract("out")
    assert ret == 0
    out = np.array(mat).copy()
    del extractor, mat
    net.clear()
    return out


def _batches(count: int, seed: int = 1, channels: int = CHANNELS) -> list:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (1, channels, SIZE, SIZE)).astype(np.float32) for _ in range(count)]


@pytest.fixture
def tiny(tmp_path):
    weights = _weights()
    return weights, _write_model(tmp_path, weights)


def test_the_hand_written_fp32_model_is_what_numpy_computes(tiny):
    """The test's own model is right before anything is quantised (else the int8 checks prove nothing)."""
    weights, param = tiny
    x = _batches(1, seed=7)[0][0]
    np.testing.assert_allclose(_run(param, x, int8=False), _numpy_model(weights, x), atol=1e-4)


def test_int8_model_runs_in_ncnn_close_to_the_fp32_convolutions(tiny, tmp_path):
    weights, param = tiny
    done = quantize_ncnn(param, tmp_path / "tiny_int8.param", _batches(8), "in0")
    assert done["int8_convolutions"] == 2 and done["requantised"] == 1
    x = _batches(1, seed=7)[0][0]  # not a calibration batch
    expected = _numpy_model(weights, x)
    got = _run(tmp_path / "tiny_int8.param", x)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert 0 < error < 0.03  # int8, so not exact; a wrong scale or layout is off by far more


def test_a_stem_on_three_channels_stays_fp32_and_unchanged(tmp_path):
    """conv0 reads the 3-channel input: kept fp32 (line and weights as given); conv1 still goes int8."""
    weights = _weights(channels=3)
    param = _write_model(tmp_path, weights)
    done = quantize_ncnn(param, tmp_path / "stem.param", _batches(8, channels=3), "in0")
    assert done["int8_convolutions"] == 1 and done["requantised"] == 0
    assert done["fp32_kept"] == {"Convolution (narrow input)": 1}
    lines = (tmp_path / "stem.param").read_text().splitlines()
    assert lines[:4] == param.read_text().splitlines()[:4] and lines[4].endswith(" 8=2")
    w0 = weights["w0"]
    stored = (tmp_path / "stem.bin").read_bytes()[:4 + 4 * (w0.size + len(weights["b0"]))]
    assert stored == param.with_suffix(".bin").read_bytes()[:len(stored)]
    x = _batches(1, seed=7, channels=3)[0][0]
    expected = _numpy_model(weights, x)
    error = np.abs(_run(tmp_path / "stem.param", x) - expected).max() / np.abs(expected).max()
    assert 0 < error < 0.03


def test_a_narrow_convolution_fed_by_a_convolution_stays_int8(tmp_path):
    """conv1 reads 2 channels, but from conv0, which hands them over requantised: both go int8."""
    weights = _weights(hidden=2)
    param = _write_model(tmp_path, weights)
    done = quantize_ncnn(param, tmp_path / "narrow.param", _batches(8), "in0")
    assert done["int8_convolutions"] == 2 and done["requantised"] == 1 and done["fp32_kept"] == {}
    x = _batches(1, seed=7)[0][0]
    expected = _numpy_model(weights, x)
    error = np.abs(_run(tmp_path / "narrow.param", x) - expected).max() / np.abs(expected).max()
    assert 0 < error < 0.05


def test_int8_param_and_bin_layout(tiny, tmp_path):
    """conv0 feeds only conv1, so it requantises (8=102, one more scale); conv1 is the output (8=2). The .bin
    holds the int8 weights behind their tag, the fp32 bias, the per-channel weight scales and the input scale."""
    weights, param = tiny
    batches = _batches(8)
    quantize_ncnn(param, tmp_path / "q.param", batches, "in0")
    lines = (tmp_path / "q.param").read_text().splitlines()
    assert lines[3].endswith(" 8=102") and lines[4].endswith(" 8=2")
    assert lines[:3] == param.read_text().splitlines()[:3]
    blob = (tmp_path / "q.bin").read_bytes()
    offset, scales = 0, {}
    for i, (outputs, nxt) in enumerate([(HIDDEN, True), (OUTPUTS, False)]):
        w = weights[f"w{i}"]
        assert struct.unpack_from("<I", blob, offset)[0] == INT8_TAG
        q = np.frombuffer(blob, np.int8, w.size, offset + 4).reshape(outputs, -1)
        offset += 4 + w.size + (-w.size % 4)
        np.testing.assert_array_equal(np.frombuffer(blob, np.float32, outputs, offset), weights[f"b{i}"])
        offset += 4 * outputs
        weight_scale = np.frombuffer(blob, np.float32, outputs, offset)
        offset += 4 * outputs
        scales[i] = np.frombuffer(blob, np.float32, 1, offset)[0]
        offset += 4
        if nxt:
            next_scale = np.frombuffer(blob, np.float32, 1, offset)[0]
            offset += 4
        flat = w.reshape(outputs, -1)
        np.testing.assert_allclose(weight_scale, 127 / np.abs(flat).max(axis=1), rtol=1e-6)
        assert np.abs(q).max(axis=1).tolist() == [127] * outputs  # each channel's largest weight maps to 127
        assert np.abs(q / weight_scale[:, None] - flat).max() <= 0.5 / weight_scale.min() + 1e-7
    assert offset == len(blob)
    peak_in = max(float(np.abs(b).max()) for b in batches)
    assert scales[0] == pytest.approx(127 / peak_in, rel=1e-6)
    assert next_scale == scales[1]  # conv0 requantises with the scale conv1 reads its input with


@pytest.mark.parametrize("case,message", [
    ("unknown layer", "does not know how a LayerNorm layer's weights are stored"),
    ("fp16 weights", "is not stored as plain float32"),
    ("truncated", "ends inside the"),
    ("trailing bytes", "bytes left after the last layer's weights"),
    ("already int8", "is already int8"),
    ("nan weights", "weights of layer conv0 hold inf/NaN"),
])
def test_models_it_cannot_rewrite_safely_are_refused_by_name(tmp_path, case, message):
    weights = _weights()
    if case == "nan weights":
        weights["w0"][1, 0, 0, 0] = np.nan
    if case == "unknown layer":
        param = _write_model(tmp_path, weights, extra_layer="LayerNorm ln0 1 1 out ln 0=4 1=1e-5 2=1")
    else:
        param = _write_model(tmp_path, weights, tag=0x01306B47 if case == "fp16 weights" else 0)
    blob = param.with_suffix(".bin")
    if case == "truncated":
        blob.write_bytes(blob.read_bytes()[:-8])
    elif case == "trailing bytes":
        blob.write_bytes(blob.read_bytes() + b"\0" * 8)
    elif case == "already int8":
        quantize_ncnn(param, tmp_path / "q.param", _batches(2), "in0")
        param = tmp_path / "q.param"
    with pytest.raises(ModelFileError, match=message):
        quantize_ncnn(param, tmp_path / "again.param", _batches(2), "in0")
    assert not (tmp_path / "again.param").exists()


def test_calibration_needs_batches_and_finite_activations(tiny, tmp_path):
    _, param = tiny
    with pytest.raises(InputError, match="needs calibration batches"):
        quantize_ncnn(param, tmp_path / "q.param", [], "in0")
    batches = _batches(3)
    batches[1][0, 0, 4, 4] = np.inf  # one bad pixel in the second frame, after a good first frame
    with pytest.raises(InputError, match="blob 'in0' of the fp32 model holds inf/NaN"):
        quantize_ncnn(param, tmp_path / "q.param", batches, "in0")
    assert not (tmp_path / "q.param").exists()


def _write_deconvolution(folder, weight: np.ndarray, bias: np.ndarray, geometry: str, size: int):
    """Input -> Deconvolution (ncnn weight layout [out][in][ky][kx], bias, leaky ReLU) -> out."""
    outputs, inputs = weight.shape[:2]
    layers = [f"Input in0 0 1 in0 0={size} 1={size} 2={inputs}",
              f"Deconvolution up 1 1 in0 out 0={outputs} {geometry} 5=1 6={weight.size} 9=2 -23310=1,{SLOPE}"]
    param = folder / "deconv.param"
    param.write_text("7767517\n" + f"{len(layers)} {len(layers)}\n" + "\n".join(layers) + "\n")
    param.with_suffix(".bin").write_bytes(struct.pack("<I", 0) + weight.tobytes() + bias.tobytes())
    return param


def _numpy_deconvolution(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """3x3 transposed convolution, stride 2, padding 1, output padding 1, from its definition: input pixel (i, j)
    adds weight[:, :, ky, kx] @ x[:, i, j] to output pixel (2i + ky - 1, 2j + kx - 1); then bias, leaky ReLU."""
    _, h, w = x.shape
    out = np.zeros((weight.shape[0], 2 * h, 2 * w), np.float64)
    for i in range(h):
        for j in range(w):
            for ky in range(3):
                for kx in range(3):
                    y, z = 2 * i + ky - 1, 2 * j + kx - 1
                    if 0 <= y < 2 * h and 0 <= z < 2 * w:
                        out[:, y, z] += weight[:, :, ky, kx] @ x[:, i, j]
    out += bias[:, None, None]
    return np.where(out > 0, out, SLOPE * out)


UPSAMPLE = "1=3 11=3 3=2 13=2 4=1 14=1 18=1 19=1"


def test_a_stride_2_deconvolution_goes_int8_as_a_subpixel_convolution(tmp_path):
    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.4, (5, CHANNELS, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, 5).astype(np.float32)
    param = _write_deconvolution(tmp_path, weight, bias, UPSAMPLE, SIZE)
    x = _batches(1, seed=7)[0][0]
    expected = _numpy_deconvolution(weight, bias, x)
    np.testing.assert_allclose(_run(param, x, int8=False), expected, atol=1e-4)  # the test model is right
    done = quantize_ncnn(param, tmp_path / "deconv_int8.param", _batches(8), "in0")
    assert done["subpixel_deconvolutions"] == 1 and done["int8_convolutions"] == 1 and done["fp32_kept"] == {}
    lines = (tmp_path / "deconv_int8.param").read_text().splitlines()
    assert lines[1] == "3 3" and [line.split()[0] for line in lines[2:]] == ["Input", "Convolution", "PixelShuffle"]
    conv = lines[3].split()
    assert {"0=20", "1=2", "15=1", "16=1", "9=2", f"-23310=1,{SLOPE}", "8=2"} <= set(conv)
    got = _run(tmp_path / "deconv_int8.param", x)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert got.shape == expected.shape and 0 < error < 0.03  # a wrong phase or tap is off by far more


@pytest.mark.parametrize("geometry", ["1=3 11=3 3=1 13=1 4=1 14=1", "1=4 11=4 3=2 13=2 4=1 14=1"])
def test_other_deconvolutions_stay_fp32_and_unchanged(tmp_path, geometry):
    rng = np.random.default_rng(4)
    kernel = int(geometry.split()[0].split("=")[1])
    weight = rng.normal(0, 0.4, (4, CHANNELS, kernel, kernel)).astype(np.float32)
    param = _write_deconvolution(tmp_path, weight, np.zeros(4, np.float32), geometry, SIZE)
    done = quantize_ncnn(param, tmp_path / "kept.param", _batches(2), "in0")
    assert done["subpixel_deconvolutions"] == 0 and done["fp32_kept"] == {"Deconvolution": 1}
    assert (tmp_path / "kept.param").read_text() == param.read_text()
    assert (tmp_path / "kept.bin").read_bytes() == param.with_suffix(".bin").read_bytes()

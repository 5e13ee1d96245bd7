"""TFLite export: the authors' checkpoint -> fp32 / fp16 / int8 .tflite, run on ai-edge-litert, against PyTorch.

Figures are measured on the authors' five sample frames (../shared), preprocessed with the authors' contract.
Mask IoU is pooled over the five frames (intersection and union summed), since a frame's target can be 5 pixels.
int8 is calibrated on 32 SIRST + 32 NUDT-SIRST *training* frames, never on the frames it is scored on.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import require_shared

torch = pytest.importorskip("torch")
pytest.importorskip("tensorflow", reason="the TFLite converter needs tensorflow-cpu: pip install 'edge-irst[export]'")
pytest.importorskip("ai_edge_litert", reason="running .tflite needs ai-edge-litert: pip install 'edge-irst[tflite]'")

from edge_irst.backends import load_backend  # noqa: E402
from edge_irst.contract import AUTHORS_CONTRACT  # noqa: E402
from edge_irst.errors import InputError, MissingDependencyError  # noqa: E402
from edge_irst.export.tflite_translate import TorchToTF, UnsupportedLayerError  # noqa: E402
from edge_irst.export.to_tflite import convert_tflite, read_tflite_contract, tflite_op_counts  # noqa: E402
from edge_irst.preprocess import preprocess, read_image  # noqa: E402

pytestmark = pytest.mark.slow

CALIB_PER_SET = 32


def _frames(set_name: str, split: str, n: int) -> list[np.ndarray]:
    root = require_shared("data", set_name)
    stems = (root / split).read_text().split()[:n]
    return [preprocess(read_image(root / "images" / f"{s}.png"), AUTHORS_CONTRACT) for s in stems]


@pytest.fixture(scope="module")
def model():
    from edge_irst.models import load_checkpoint

    return load_checkpoint(require_shared("reference", "lw_irstnet_authors", "LW_IRST.pkl")).model.eval()


@pytest.fixture(scope="module")
def samples(sample_paths) -> list[np.ndarray]:
    assert len(sample_paths) == 5, f"expected the authors' 5 sample frames, found {len(sample_paths)}"
    return [preprocess(read_image(p), AUTHORS_CONTRACT) for p in sample_paths]


@pytest.fixture(scope="module")
def reference(model, samples) -> list[np.ndarray]:
    with torch.no_grad():
        return [model(torch.from_numpy(x)).numpy() for x in samples]


@pytest.fixture(scope="module")
def calib() -> list[np.ndarray]:
    return (_frames("sirst", "idx_427/train.txt", CALIB_PER_SET)
            + _frames("nudt_sirst", "splits_50_50/train.txt", CALIB_PER_SET))


@pytest.fixture(scope="module")
def artifacts(model, calib, tmp_path_factory):
    """precision -> (path, returned contract), converted once for the module."""
    out = tmp_path_factory.mktemp("tflite")
    return {p: convert_tflite(model, AUTHORS_CONTRACT, out / f"lw_irstnet_{p}.tflite", p, calib)
            for p in ("fp32", "fp16", "int8")}


def _run(path, batches, contract=None) -> list[np.ndarray]:
    """float32 NCHW logits from the edge-irst tflite backend (which (de)quantises int8 I/O and handles NHWC)."""
    with load_backend(path, "tflite", threads=2, contract=contract) as backend:
        return [backend.run(b) for b in batches]


def _pooled_iou(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    inter = sum(int(((x > 0) & (y > 0)).sum()) for x, y in zip(a, b))
    union = sum(int(((x > 0) | (y > 0)).sum()) for x, y in zip(a, b))
    return inter / union if union else 1.0


# ------------------------------------------------------------------------------------------------ fp32
def test_fp32_matches_pytorch(artifacts, samples, reference):
    path, contract = artifacts["fp32"]
    got = _run(path, samples, contract)
    worst = max(float(np.abs(g - r).max()) for g, r in zip(got, reference))
    agree = min(float(((g > 0) == (r > 0)).mean()) for g, r in zip(got, reference))
    assert worst <= 1e-3, f"fp32 TFLite differs from PyTorch by {worst:.3g} logits (limit 1e-3)"  # measured 3.5e-4
    assert agree >= 0.999, f"only {agree:.5f} of pixels agree on logit > 0"  # measured 1.0
    assert _pooled_iou(got, reference) == 1.0


def test_fp32_graph_is_nhwc_without_transposes(artifacts, authors_dir):
    path, contract = artifacts["fp32"]
    ops = tflite_op_counts(path)
    assert ops["TRANSPOSE"] == 0, f"layout transposes left in the graph: {dict(ops)}"
    # ConvTranspose2d became a sub-pixel convolution + depth-to-space, one per upsampling
    assert ops["DEPTH_TO_SPACE"] == 3 and ops["TRANSPOSE_CONV"] == 0, dict(ops)
    assert ops["CONV_2D"] + ops["DEPTHWISE_CONV_2D"] >= 80, dict(ops)  # every conv, BatchNorm folded in
    assert set(ops) <= {"CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "LEAKY_RELU", "ADD", "PAD", "MIRROR_PAD",
                        "MAX_POOL_2D", "CONCATENATION"}, dict(ops)
    # the counter reads real files: the authors' ONNX-derived file carries 193 of them
    assert tflite_op_counts(authors_dir / "LW_IRST_fp32.tflite")["TRANSPOSE"] == 193
    assert contract.layout == "NHWC" and contract.precision == "fp32"
    with load_backend(path, "tflite", threads=1, contract=contract) as backend:
        assert backend.inputs[0].shape == (1, 256, 256, 3) and backend.inputs[0].layout == "NHWC"
        assert backend.inputs[0].name == "input" and backend.outputs[0].name == "output"


def test_fp32_masks_match_the_authors_tflite(artifacts, authors_dir, samples):
    ours = _run(artifacts["fp32"][0], samples, artifacts["fp32"][1])
    theirs = _run(authors_dir / "LW_IRST_fp32.tflite", samples, AUTHORS_CONTRACT)  # NCHW [1,3,256,256]
    agree = min(float(((a > 0) == (b > 0)).mean()) for a, b in zip(ours, theirs))
    assert agree >= 0.999 and _pooled_iou(ours, theirs) >= 0.99, (agree, _pooled_iou(ours, theirs))  # 1.0, 1.0
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs)) <= 1e-3


def test_contract_is_embedded_and_returned(artifacts):
    for precision, (path, contract) in artifacts.items():
        embedded = read_tflite_contract(path)
        assert embedded == contract, precision
        assert embedded.layout == "NHWC" and embedded.precision == precision
        assert embedded.mean == AUTHORS_CONTRACT.mean and embedded.input_size == (256, 256)


# ------------------------------------------------------------------------------------------------ fp16 / int8
def test_fp16_masks_match_fp32(artifacts, samples):
    fp32 = _run(artifacts["fp32"][0], samples, artifacts["fp32"][1])
    fp16 = _run(artifacts["fp16"][0], samples, artifacts["fp16"][1])
    iou = _pooled_iou(fp16, fp32)
    assert iou >= 0.98, f"fp16 mask IoU vs fp32 {iou:.4f} (limit 0.98)"  # measured 1.0
    assert tflite_op_counts(artifacts["fp16"][0])["DEQUANTIZE"] > 0  # weights stored as float16
    assert artifacts["fp16"][0].stat().st_size < 0.6 * artifacts["fp32"][0].stat().st_size


def test_int8_is_full_integer_with_int8_io(artifacts):
    from ai_edge_litert import schema_py_generated as schema

    path, contract = artifacts["int8"]
    with load_backend(path, "tflite", threads=1, contract=contract) as backend:
        (inp,), (out,) = backend.inputs, backend.outputs
    assert inp.dtype == "int8" and out.dtype == "int8"
    assert inp.scale > 0 and out.scale > 0 and -128 <= inp.zero_point <= 127
    assert contract.extra["tflite"]["input"] == {"dtype": "int8", "scale": pytest.approx(inp.scale),
                                                 "zero_point": inp.zero_point}
    # no float tensor anywhere: every activation and weight is int8 (biases int32)
    graph = schema.Model.GetRootAs(path.read_bytes(), 0).Subgraphs(0)
    types = {graph.Tensors(i).Type() for i in range(graph.TensorsLength())}
    assert types <= {schema.TensorType.INT8, schema.TensorType.INT32}, types
    assert tflite_op_counts(path)["DEQUANTIZE"] == 0 and tflite_op_counts(path)["QUANTIZE"] == 0


def test_int8_masks_match_fp32(artifacts, samples):
    fp32 = _run(artifacts["fp32"][0], samples, artifacts["fp32"][1])
    int8 = _run(artifacts["int8"][0], samples, artifacts["int8"][1])
    iou = _pooled_iou(int8, fp32)
    assert iou >= 0.9, f"int8 mask IoU vs fp32 {iou:.4f} (limit 0.9)"  # measured 0.959


# ------------------------------------------------------------------------------------------------ dynamic H/W
def test_dynamic_hw_graph_runs_at_any_multiple_of_8(model, samples, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    dynamic = AUTHORS_CONTRACT.replace(input_size=None)
    path, contract = convert_tflite(model, dynamic, tmp_path / "dyn.tflite", "fp32", [])
    assert contract.input_size is None
    frame = read_image(require_shared("reference", "lw_irstnet_authors", "samples", "images", "picture.png"))
    interpreter = Interpreter(str(path), num_threads=2)
    index = interpreter.get_input_details()[0]["index"]
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [1, -1, -1, 3]
    for hw in [(96, 160), (256, 256), (200, 312)]:
        x = preprocess(frame, dynamic, size=hw)
        interpreter.resize_tensor_input(index, [1, *hw, 3])  # a dynamic graph is sized before it is allocated
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).transpose(0, 3, 1, 2)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape == (1, 1, *hw)
        assert float(np.abs(got - ref).max()) <= 1e-3, hw


# ------------------------------------------------------------------------------------------------ translator
def _tf_logits(module, x: np.ndarray, transpose_conv="subpixel") -> np.ndarray:
    import tensorflow as tf

    fn = TorchToTF(module, transpose_conv=transpose_conv).function(tf)
    return fn(tf.constant(x.transpose(0, 2, 3, 1))).numpy().transpose(0, 3, 1, 2)


def _randomised(module):
    """Random weights and BatchNorm statistics, so a wrong fold or axis shows up; eval mode."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
    return module.eval()


class _Layers(torch.nn.Module):
    """Layers the authors' checkpoint does not use, in configurations its own tests do not reach."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.dw_dilated = nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=4, bias=True)  # multiplier 2
        self.bn_cat = nn.BatchNorm2d(16)  # after a concatenation: not foldable
        self.prelu = nn.PReLU(16)  # one slope per channel
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.up_k4 = nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1, bias=True)  # sub-pixel, 2 taps per phase
        self.up_k3p0 = nn.ConvTranspose2d(4, 3, 3, stride=2)  # output 2L+1: not sub-pixel, the cropped path
        # stride 1 and unequal strides meet the sub-pixel size rule but not depth_to_space: the cropped path too
        self.up_s1 = nn.ConvTranspose2d(3, 3, 3, stride=1, padding=1)
        self.up_s21 = nn.ConvTranspose2d(3, 3, (4, 3), stride=(2, 1), padding=(1, 1))
        self.conv_s2 = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.bn_conv = nn.BatchNorm2d(5)  # folded into conv_s2

    def forward(self, x):
        y = self.prelu(self.bn_cat(torch.cat((self.dw_dilated(x), x, x), 1)))
        y = torch.nn.functional.relu(self.up_s21(self.up_s1(self.up_k3p0(self.up_k4(self.pool(y))))))
        y = self.bn_conv(self.conv_s2(y))
        return torch.nn.functional.pad(y, (0, 0, 0, 0, 0, 2)) - 1.0


@pytest.mark.parametrize("hw", [(16, 24), (15, 21)])
def test_translator_layers_match_pytorch(hw):
    module = _randomised(_Layers())
    x = np.random.default_rng(1).standard_normal((1, 4, *hw)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    got = _tf_logits(module, x)
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_transpose_conv_strategies_are_equivalent(model, samples, reference):
    subpixel = _tf_logits(model, samples[0], "subpixel")
    crop = _tf_logits(model, samples[0], "crop")
    assert float(np.abs(subpixel - reference[0]).max()) <= 1e-3
    assert float(np.abs(crop - reference[0]).max()) <= 1e-3


def test_unsupported_layer_is_named():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Upsample(scale_factor=2)).eval()
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(Upsample\)"):
        TorchToTF(module)
    with pytest.raises(UnsupportedLayerError, match="training mode"):
        TorchToTF(torch.nn.Conv2d(3, 4, 3).train())


def test_bad_arguments_are_refused(model, tmp_path):
    with pytest.raises(InputError, match="int8 TFLite export needs calibration"):
        convert_tflite(model, AUTHORS_CONTRACT, tmp_path / "m.tflite", "int8", [])
    with pytest.raises(InputError, match="precision 'int4'"):
        convert_tflite(model, AUTHORS_CONTRACT, tmp_path / "m.tflite", "int4", [])
    with pytest.raises(InputError, match=r"calibration batch 0: expected float32 NCHW \(1, 3, 256, 256\)"):
        convert_tflite(model, AUTHORS_CONTRACT, tmp_path / "m.tflite", "fp32", [np.zeros((1, 256, 256, 3), np.float32)])
    assert not (tmp_path / "m.tflite").exists()


def test_missing_tensorflow_names_the_extra(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"edge-irst\[export\]"):
        convert_tflite(model, AUTHORS_CONTRACT, tmp_path / "m.tflite", "fp32", [])

"""The exporter against the real converters and runtimes: the authors' checkpoint is exported ONCE per module to
every format x precision, then each artifact is reloaded through the backend layer and checked against PyTorch
on the authors' sample frames, against the contract it carries, and against the authors' own artifacts."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the exporter needs the [export] extra (torch==2.13.0)")

from edge_irst.backends import load_backend  # noqa: E402
from edge_irst.contract import AUTHORS_CONTRACT, CONTRACT_KEY, ModelContract, contract_for, read_sidecar  # noqa: E402
from edge_irst.errors import ModelFileError, VerificationError  # noqa: E402
from edge_irst.export import FORMATS, ConversionError, export  # noqa: E402
from edge_irst.export.exporter import ArtifactResult, ExportReport, _raise_for_failures  # noqa: E402
from edge_irst.export.verify import Reference, _tolerance_used, verify_artifact  # noqa: E402
from edge_irst.models import load_checkpoint  # noqa: E402
from edge_irst.preprocess import preprocess, read_image  # noqa: E402

pytestmark = pytest.mark.slow
ALL = ("onnx", "ncnn", "mnn", "tflite")
IOU_FLOOR = {"fp16": 0.98, "int8": 0.90}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The reference forward passes in this module on one thread: on 2 shared cores torch's default of one
    thread per core is ~30x slower than one thread when the cores are busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model(authors_dir):
    return load_checkpoint(authors_dir / "LW_IRST.pkl").model


@pytest.fixture(scope="module")
def frames(sample_paths):
    assert len(sample_paths) == 5
    return [read_image(p) for p in sample_paths]


@pytest.fixture(scope="module")
def report(authors_dir, tmp_path_factory) -> ExportReport:
    """Every format x precision, exported once for the whole module, verified on the five sample frames."""
    return export(authors_dir / "LW_IRST.pkl", formats=ALL, precisions="fp32,fp16,int8",
                  calib=authors_dir / "samples" / "images", out=tmp_path_factory.mktemp("export"), threads=1)


def _logits(model, frames, contract: ModelContract, size=(256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """(batch float32 [N, C, H, W] preprocessed with `contract`, PyTorch logits float32 [N, 1, H, W])."""
    batch = np.concatenate([preprocess(f, contract, size=size) for f in frames])
    with torch.no_grad():
        return batch, model(torch.from_numpy(batch)).numpy()


def test_every_requested_artifact_is_accounted_for(report):
    rows = {(a.format, a.precision): a for a in report.artifacts}
    assert set(rows) == {(f, p) for f in ALL for p in ("fp32", "fp16", "int8")}
    for key, row in rows.items():
        assert row.files and all((report.folder / f).is_file() for f in row.files), key
        assert row.size_bytes == sum((report.folder / f).stat().st_size for f in row.files)
        assert row.convert_seconds > 0 and row.backend == FORMATS[row.format].backend


def test_manifest_lists_what_the_report_says(report):
    manifest = json.loads((report.folder / "manifest.json").read_text())
    assert manifest["model"] == "lw_irstnet" and manifest["source_sha256"] == report.source_sha256
    keys = {"format", "precision", "files", "backend", "verified", "max_abs_diff", "mask_agreement",
            "mask_iou_vs_fp32", "size_bytes", "convert_seconds", "reason"}
    assert all(keys <= set(entry) for entry in manifest["artifacts"])
    assert [e["files"] for e in manifest["artifacts"]] == [a.files for a in report.artifacts]
    table = report.table()
    assert table.splitlines()[0].split()[:2] == ["format", "precision"]
    assert [line.split()[:2] for line in table.splitlines()[1:13]] == [[a.format, a.precision]
                                                                      for a in report.artifacts]


@pytest.mark.parametrize("fmt", ALL)
def test_fp32_artifacts_match_pytorch_when_reloaded(report, model, frames, fmt):
    """Reload from the model folder (manifest resolution) with fp32 runtime options and compare independently."""
    row = report.artifact(fmt, "fp32")
    assert row.verified and row.status == "verified", row.reason
    assert row.max_abs_diff <= 1e-3 and row.mask_agreement >= 0.999
    with load_backend(report.folder, backend=FORMATS[fmt].backend, threads=1, precision="fp32") as runtime:
        assert runtime.path == report.path(fmt, "fp32")
        batch, expected = _logits(model, frames, runtime.contract)
        got = runtime.run(batch)
    assert got.shape == expected.shape == (5, 1, 256, 256)
    assert np.abs(got - expected).max() <= 1e-3
    assert np.mean((got > 0) == (expected > 0)) >= 0.999


@pytest.mark.parametrize("fmt,precision", [(f, p) for f in ALL for p in ("fp16", "int8")])
def test_reduced_precision_is_verified_only_above_its_mask_iou_floor(report, model, frames, fmt, precision):
    row = report.artifact(fmt, precision)
    assert None not in (row.max_abs_diff, row.mask_agreement, row.mask_iou_vs_fp32)
    assert row.verified == (row.mask_iou_vs_fp32 >= IOU_FLOOR[precision])
    assert row.verified or "mask IoU vs fp32" in row.reason
    with load_backend(report.path(fmt, precision), threads=1, precision="fp32") as runtime:
        batch, expected = _logits(model, frames, runtime.contract)
        got = runtime.run(batch)
    mine, theirs = got > 0, expected > 0
    iou = np.count_nonzero(mine & theirs) / max(np.count_nonzero(mine | theirs), 1)
    assert iou == pytest.approx(row.mask_iou_vs_fp32, abs=1e-9)


def test_onnx_carries_the_contract_in_metadata_and_sidecar(report):
    onnx = pytest.importorskip("onnx")
    for precision in ("fp32", "fp16", "int8"):
        path = report.path("onnx", precision)
        proto = onnx.load(str(path))
        assert proto.opset_import[0].version >= 17
        embedded = ModelContract.from_dict(json.loads({p.key: p.value for p in proto.metadata_props}[CONTRACT_KEY]))
        sidecar = read_sidecar(path)
        assert ModelContract.from_dict(sidecar["contract"]) == embedded
        assert embedded.precision == precision and embedded.input_size == (256, 256)
        assert (embedded.input_name, embedded.output_name, embedded.layout) == ("input", "output", "NCHW")
        assert embedded.mean == (0.485, 0.456, 0.406) and embedded.std == (0.229, 0.224, 0.225)
        assert embedded.channel_order == "RGB" and embedded.threshold == 0.0
        assert embedded.architecture == "lw_irstnet" and embedded.source_sha256 == report.source_sha256
        assert sidecar["toolchain"]["onnxruntime"] and sidecar["toolchain"]["onnxslim"]
        assert sidecar["verification"]["frames"] == 5
        # fp16 and int8 keep float32 I/O so callers feed the same tensor
        assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [onnx.TensorProto.FLOAT]
        assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [onnx.TensorProto.FLOAT]


def test_int8_onnx_is_qdq_with_per_channel_weights(report):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(report.path("onnx", "int8"))).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "QLinearConv" not in ops
    scales = {i.name: i for i in graph.initializer}
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[1] in scales
                 and len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1]
    assert weight_dq, "expected per-channel (1-D) weight scales"


def test_int8_onnx_runs_its_max_pools_in_float(report, check_float_max_pools):
    check_float_max_pools(report.path("onnx", "int8"))


def test_ncnn_fp32_artifact_stores_fp32_weights(report, model):
    """pnnx writes fp16 weights unless told fp16=0: the fp32 .bin must hold ~4 bytes per parameter."""
    params = sum(p.numel() for p in model.parameters())
    fp32_bin = report.folder / report.artifact("ncnn", "fp32").files[1]
    fp16_bin = report.folder / report.artifact("ncnn", "fp16").files[1]
    assert 3.6 <= fp32_bin.stat().st_size / params <= 4.4
    assert 1.8 <= fp16_bin.stat().st_size / params <= 2.4
    assert report.artifact("ncnn", "fp32").max_abs_diff <= 1e-3
    assert report.artifact("ncnn", "fp16").max_abs_diff > 1e-2  # what fp16 weights cost: why fp32 is its own file
    # blob names are recorded as the .param declares them
    contract = contract_for(report.path("ncnn", "fp32"))
    param = report.path("ncnn", "fp32").read_text()
    assert "Input" in param and f" {contract.input_name}" in param and f" {contract.output_name}" in param


def test_ncnn_fp32_and_fp16_compute_the_5_output_stem_on_8_and_crop_it_back(report):
    """export/ncnn_widen.py on LW-IRSTNet: the stem convolution (3 -> 5) is the one Convolution with 5-7 outputs;
    it computes 8 and a Crop keeps 5, the sidecar says so, and the artifact still matches PyTorch (verified)."""
    from edge_irst.backends.ncnn_format import read_param

    _, layers = read_param(report.path("ncnn", "fp32"))
    widened = [layer for layer in layers if layer.type == "Convolution" and layer.tops[0].endswith("_wide")]
    assert len(widened) == 1 and widened[0].params["0"] == "8" and widened[0].params["6"] == str(8 * 3 * 3 * 3)
    crop = next(layer for layer in layers if layer.bottoms == widened[0].tops)
    assert crop.type == "Crop" and crop.params["-23310"] == "1,5"
    assert not [layer.name for layer in layers if layer.type == "Convolution" and 5 <= int(layer.params["0"]) <= 7]
    assert report.artifact("ncnn", "fp32").verified
    extra = read_sidecar(report.path("ncnn", "fp32"))["contract"]["extra"]
    assert extra["ncnn_widened"].startswith("1 Convolution layer(s) with 5-7 outputs")
    # fp16 (float16 weights) and int8 are widened the same way: the int8 twin is quantised from the widened model,
    # its stem (3 input channels) left in fp32 (export/ncnn_int8.py)
    for precision in ("fp16", "int8"):
        _, layers = read_param(report.path("ncnn", precision))
        assert [layer.params["-23310"] for layer in layers if layer.type == "Crop"] == ["1,5"], precision
        assert "ncnn_widened" in read_sidecar(report.path("ncnn", precision))["contract"]["extra"]


def test_ncnn_int8_artifact_runs_its_convolutions_in_int8(report):
    """export/ncnn_int8.py: the Convolutions int8 (8=2, or 8=102 where one feeds the next) but the stem on the 3
    input channels, the rest fp32; the backend counts the int8 layers and says so in the precision it reports."""
    row = report.artifact("ncnn", "int8")
    assert row.verified, row.reason
    lines = report.path("ncnn", "int8").read_text().splitlines()
    stem, *convolutions = [line for line in lines if line.startswith("Convolution ")]
    assert " 8=" not in stem and " 6=216" in stem  # 8 (widened) x 3 x 3 x 3 fp32 weights
    assert convolutions and all(line.split()[-1] in ("8=2", "8=102") for line in convolutions)
    assert any(line.endswith(" 8=102") for line in convolutions)
    assert not any(" 8=" in line for line in lines if line.split()[0] in ("ConvolutionDepthWise", "Deconvolution"))
    sidecar = read_sidecar(report.path("ncnn", "int8"))
    effect = sidecar["verification"]["options_in_effect"]
    assert effect["precision"] == "int8+fp32" and effect["int8_layers"] == len(convolutions)
    assert f"{len(convolutions)} Convolution layers in int8" in sidecar["contract"]["extra"]["ncnn_int8"]
    assert "'Convolution (narrow input)': 1" in sidecar["contract"]["extra"]["ncnn_int8"]
    # about a byte per weight of the convolutions instead of four
    fp32_bin = report.folder / report.artifact("ncnn", "fp32").files[1]
    assert (report.folder / row.files[1]).stat().st_size < 0.5 * fp32_bin.stat().st_size


def test_model_folder_holds_only_artifacts_sidecars_and_manifest(report):
    """pnnx's side files and MNN's scratch file must not land in the model folder (nor in the working dir)."""
    expected = {"manifest.json"}
    for row in report.artifacts:
        expected |= set(row.files) | ({row.files[0] + ".json"} if row.files else set())
    assert {p.name for p in report.folder.iterdir()} == expected


AUTHORS_FILES = {"onnx": "LW_IRST.onnx", "ncnn": "ncnn/LW_IRST-sim-opt.param", "mnn": "LW_IRST.mnn",
                 "tflite": "LW_IRST_fp32.tflite"}


@pytest.mark.parametrize("fmt", ALL)
def test_our_fp32_artifacts_give_the_authors_masks(report, authors_dir, frames, fmt):
    with load_backend(authors_dir / AUTHORS_FILES[fmt], threads=1, precision="fp32") as theirs, \
            load_backend(report.path(fmt, "fp32"), threads=1, precision="fp32") as ours:
        batch = np.concatenate([preprocess(f, ours.contract) for f in frames])
        a, b = ours.run(batch), theirs.run(batch)
    assert np.array_equal(a > 0, b > 0)
    assert np.abs(a - b).max() <= 1e-3


def test_verification_refuses_an_artifact_that_disagrees(report, model, frames):
    """The fp16 ONNX judged by the fp32 rule: a real artifact whose logits differ by ~0.1 is not verified."""
    path = report.path("onnx", "fp16")
    contract = contract_for(path)
    check = verify_artifact(path, "onnxruntime", "fp32", contract, Reference(model, frames, contract), (256, 256), 1)
    assert check.ran and not check.verified and "max |logit diff|" in check.reason
    failed = ArtifactResult("onnx", "fp32", "onnxruntime", files=["x.onnx"], status="FAILED", reason=check.reason)
    with pytest.raises(VerificationError, match=r"onnx/fp32: logit diff beyond .*max \|logit diff\| \d") as info:
        _raise_for_failures(ExportReport("m", report.folder, "w", "", "", [failed]))
    assert info.value.report.artifacts == [failed]


# ---- --grey-input ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grey_report(authors_dir, tmp_path_factory) -> ExportReport:
    return export(authors_dir / "LW_IRST.pkl", formats=ALL, precisions="fp32,int8", grey_input=True,
                  calib=authors_dir / "samples" / "images", out=tmp_path_factory.mktemp("grey"), threads=1)


@pytest.mark.parametrize("fmt", ALL)
def test_grey_input_artifacts_take_one_channel_and_give_the_rgb_models_logits(grey_report, model, frames, fmt):
    """--grey-input: the artifact reads the frame's grey level as its one channel and computes what the authors'
    RGB model computes on that grey frame replicated into three channels (models/grey_input.py)."""
    import cv2

    row = grey_report.artifact(fmt, "fp32")
    assert row.verified, row.reason
    assert all(grey_report.artifact(fmt, "int8").verified for fmt in ALL)
    greys = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) if f.ndim == 3 else f for f in frames]
    _, expected = _logits(model, greys, AUTHORS_CONTRACT)  # the RGB model on the grey frames, replicated
    with load_backend(grey_report.path(fmt, "fp32"), threads=1, precision="fp32") as runtime:
        contract = runtime.contract
        assert (contract.channel_order, contract.mean, contract.std) == ("GRAY", (0.0,), (1.0,))
        assert contract.scale == AUTHORS_CONTRACT.scale and "folded into the stem" in contract.extra["grey_input"]
        batch = np.concatenate([preprocess(f, contract) for f in frames])  # colour frames converted to grey
        assert batch.shape == (5, 1, 256, 256)
        got = runtime.run(batch)
    assert _tolerance_used("fp32", got, expected) <= 1.0, float(np.abs(got - expected).max())
    assert np.mean((got > 0) == (expected > 0)) >= 0.999


def test_a_grey_fold_that_strays_from_the_rgb_model_is_refused_before_any_conversion(authors_dir, tmp_path,
                                                                                      monkeypatch):
    """The exporter checks the folded model against the RGB one first: a fold that ignored the stem's zero padding
    (one plane, the means in the bias) is refused, and nothing is written."""
    import edge_irst.models as models

    fold = models.fold_grey_input

    def fold_ignoring_the_padding(model, mean, std):
        grey = fold(model, mean, std)
        weight = grey.stem.conv.weight.data
        grey.stem.conv.bias.data += weight[:, 1].sum((1, 2))
        weight[:, 1] = 0.0
        return grey

    monkeypatch.setattr(models, "fold_grey_input", fold_ignoring_the_padding)
    with pytest.raises(VerificationError, match="grey input: the folded model differs from the RGB model"):
        export(authors_dir / "LW_IRST.pkl", formats="onnx", grey_input=True, calib=authors_dir / "samples" / "images",
               out=tmp_path, threads=1)
    assert not list((tmp_path / "lw_irstnet").glob("*.onnx"))


def test_grey_input_ncnn_int8_keeps_its_stem_planes_in_fp32(grey_report):
    """The ones plane (1 -> 1), the stem (2 planes -> 5) and the pooled channels (1 -> 3) read too few channels
    from no Convolution to gain from int8 (export/ncnn_int8.py); everything after them is int8 as in RGB."""
    lines = grey_report.path("ncnn", "int8").read_text().splitlines()
    convolutions = [line for line in lines if line.startswith("Convolution ")]
    assert [" 8=" in line for line in convolutions[:3]] == [False] * 3
    assert all(line.split()[-1] in ("8=2", "8=102") for line in convolutions[3:])


# ---- --dynamic ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dynamic_report(authors_dir, tmp_path_factory) -> ExportReport:
    """fp32 of every format with --dynamic (MNN shares the ONNX hub, so one call is cheaper than two)."""
    return export(authors_dir / "LW_IRST.pkl", formats=ALL, dynamic=True,
                  calib=authors_dir / "samples" / "images", out=tmp_path_factory.mktemp("dynamic"), threads=1)


@pytest.mark.parametrize("fmt", ["onnx", "ncnn"])
def test_dynamic_artifacts_run_at_any_multiple_of_8_and_match_pytorch(dynamic_report, model, frames, fmt):
    row = dynamic_report.artifact(fmt, "fp32")
    assert row.verified, row.reason
    path = dynamic_report.path(fmt, "fp32")
    assert read_sidecar(path)["verification"]["sizes"] == [[256, 256], [320, 480]]
    with load_backend(path, threads=1, precision="fp32") as runtime:
        assert runtime.contract.input_size is None and runtime.inputs[0].hw == (None, None)
        for size in ((256, 256), (320, 480), (96, 136)):
            batch, expected = _logits(model, frames[:2], runtime.contract, size)
            got = runtime.run(batch)
            assert got.shape == expected.shape == (2, 1, *size)
            # the exporter's fp32 bound (1e-3 + 1e-4 x the frame's largest |logit|): the widened ncnn stem sums in
            # another order than pnnx's 5-output one, 1.1e-3 off PyTorch at one of these sizes
            assert _tolerance_used("fp32", got, expected) <= 1.0, (size, float(np.abs(got - expected).max()))


def test_dynamic_onnx_declares_symbolic_height_and_width(dynamic_report):
    onnx = pytest.importorskip("onnx")
    dims = onnx.load(str(dynamic_report.path("onnx", "fp32"))).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3] and all(d.dim_param for d in dims[2:])


@pytest.mark.parametrize("fmt", ["mnn", "tflite"])
def test_dynamic_mnn_and_tflite_follow_the_frame_size_back_and_forth(dynamic_report, model, frames, fmt):
    """Both runtimes plan at one size when loaded: each new frame size must re-plan them (and the first size
    again afterwards), not reuse the previous plan."""
    row = dynamic_report.artifact(fmt, "fp32")
    assert row.verified, row.reason
    path = dynamic_report.path(fmt, "fp32")
    assert read_sidecar(path)["verification"]["sizes"] == [[256, 256], [320, 480]]
    with load_backend(path, threads=1, precision="fp32") as runtime:
        assert runtime.contract.input_size is None
        assert runtime.inputs[0].hw == runtime.outputs[0].hw == (None, None)
        for size in ((256, 256), (320, 480), (256, 256)):
            batch, expected = _logits(model, frames[:2], runtime.contract, size)
            got = runtime.run(batch)
            assert got.shape == expected.shape == (2, 1, *size)
            assert np.abs(got - expected).max() <= 1e-3, size


def test_tflite_without_its_sidecar_reads_the_contract_embedded_in_the_file(dynamic_report, tmp_path):
    path = dynamic_report.path("tflite", "fp32")
    alone = shutil.copyfile(path, tmp_path / path.name)  # the artifact without its sidecar
    with load_backend(alone, threads=1) as runtime:
        assert runtime.contract == ModelContract.from_dict(read_sidecar(path)["contract"])
        assert runtime.contract != AUTHORS_CONTRACT
        assert (runtime.contract.input_size, runtime.contract.layout) == (None, "NHWC")


def test_fp32_tolerance_scales_with_the_frames_logit_range_not_beyond():
    """float32 noise grows with a frame's activations (5.5e-3 measured on a frame reaching |logit| 127); a real
    conversion bug (0.1 and more) fails at any scale."""
    from edge_irst.export.verify import _judge

    calm = np.zeros((1, 1, 4, 4), np.float32)
    calm[0, 0, 0, 0] = -5.0
    loud = calm.copy()
    loud[0, 0, 0, 0] = -150.0
    noise = np.full_like(calm, 5e-3)
    assert _judge("fp32", 5e-3, _tolerance_used("fp32", loud + noise, loud), 1.0, 1.0, 100) is None
    assert "bound" in _judge("fp32", 5e-3, _tolerance_used("fp32", calm + noise, calm), 1.0, 1.0, 100)
    assert "bound" in _judge("fp32", 0.1, _tolerance_used("fp32", loud + 0.1, loud), 1.0, 1.0, 100)
    assert _tolerance_used("int8", loud, loud) is None  # int8 / fp16 are judged by mask IoU only


def test_frames_without_targets_verify_no_reduced_precision_artifact(authors_dir, tmp_path):
    """On blank frames PyTorch's masks are empty, so the mask IoU reads 1.0 whatever the artifact computes: fp16 and
    int8 must not be marked verified there (fp32 still is: its logits are compared). On the sample frames, which
    hold targets at this size too, the same export is judged by its IoU."""
    import cv2

    blank = tmp_path / "blank"
    blank.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # dark noisy frames: sensor noise, no target
        cv2.imwrite(str(blank / f"b{i}.png"), rng.normal(40, 3, (96, 128)).clip(0, 255).astype(np.uint8))
    on_blank = export(authors_dir / "LW_IRST.pkl", formats="onnx", precisions="fp32,fp16,int8", calib=blank,
                      imgsz="64,96", out=tmp_path / "blank_out", threads=1)
    assert on_blank.artifact("onnx", "fp32").status == "verified"
    for precision in ("fp16", "int8"):
        row = on_blank.artifact("onnx", precision)
        assert row.mask_iou_vs_fp32 == 1.0  # the IoU alone would pass it
        assert not row.verified and row.status == "UNVERIFIED"
        assert "too few targets" in row.reason and "0 target pixels" in row.reason and "--calib" in row.reason
    on_samples = export(authors_dir / "LW_IRST.pkl", formats="onnx", precisions="fp16", imgsz="64,96",
                        calib=authors_dir / "samples" / "images", out=tmp_path / "samples_out", threads=1)
    row = on_samples.artifact("onnx", "fp16")
    assert row.verified == (row.mask_iou_vs_fp32 >= IOU_FLOOR["fp16"]) and "too few targets" not in (row.reason or "")


def test_onnx_has_leaky_relu_where_the_slope_is_shared(report, model):
    """Every PRelu of LW-IRSTNet has one slope: the ONNX artifacts carry them as LeakyRelu with that slope."""
    import onnx

    graph = onnx.load(str(report.path("onnx", "fp32"))).graph
    ops = [node.op_type for node in graph.node]
    slopes = sorted(float(m.weight.detach()) for m in model.modules() if isinstance(m, torch.nn.PReLU))
    alphas = sorted(next(a.f for a in node.attribute if a.name == "alpha") for node in graph.node
                    if node.op_type == "LeakyRelu")
    assert "PRelu" not in ops and len(alphas) == len(slopes) == 89
    assert np.allclose(alphas, slopes, rtol=0, atol=0)
    used = {name for node in graph.node for name in node.input}
    assert all(init.name in used for init in graph.initializer)  # the slope tensors are gone


def test_a_per_channel_prelu_stays_a_prelu():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_irst.export.to_onnx import shared_slope_prelu_to_leaky_relu

    shared = numpy_helper.from_array(np.array([0.25], np.float32), "shared")
    per_channel = numpy_helper.from_array(np.array([[[0.1]], [[0.2]]], np.float32), "per_channel")
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "shared"], ["y"]), helper.make_node("PRelu", ["y", "per_channel"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 3, 3])], [shared, per_channel])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert shared_slope_prelu_to_leaky_relu(proto) == 1
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node] == ["LeakyRelu", "PRelu"]
    assert [i.name for i in proto.graph.initializer] == ["per_channel"]
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=(1, 2, 3, 3)).astype(np.float32)
    z = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y = np.where(x > 0, x, 0.25 * x)
    assert np.array_equal(z, np.where(y > 0, y, np.array([0.1, 0.2], np.float32)[None, :, None, None] * y))


def test_a_failed_conversion_leaves_no_earlier_artifact_under_its_name(tmp_path):
    """An earlier run's artifact and its sidecar ("verified", for other weights) at the job's path must not survive
    a conversion that fails: the loader would open them. The failure here is real: TFLite's converter writes to
    <artifact>.partial, which is a folder."""
    from edge_irst.models import create_model, save_checkpoint

    weights = save_checkpoint(tmp_path / "random.pt", create_model("lw_irstnet"), "lw_irstnet")
    folder = tmp_path / "out" / "lw_irstnet"
    folder.mkdir(parents=True)
    stale = folder / "lw_irstnet_fp32.tflite"
    stale.write_bytes(b"an earlier run's model")
    (folder / "lw_irstnet_fp32.tflite.json").write_text(json.dumps({"verified": True}))
    (folder / "lw_irstnet_fp32.tflite.partial").mkdir()
    with pytest.raises(ConversionError, match="tflite/fp32: conversion failed") as failure:
        export(weights, "tflite", "fp32", imgsz=64, out=tmp_path / "out", calib_limit=2)
    assert failure.value.report.artifact("tflite", "fp32").status == "FAILED"
    assert not stale.exists() and not (folder / "lw_irstnet_fp32.tflite.json").exists()
    with pytest.raises(ModelFileError, match="no verified fp32 artifact"):
        load_backend(folder, backend="tflite")

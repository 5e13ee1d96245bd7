"""What the exporter is given: bad formats, weights, folders, sizes and missing converters fail fast with one clear
line naming the fix (CLI exit 2 for usage, 1 otherwise; the matching error type from Python), and the
calibration/verification frames come from --calib, the sample frames, or the synthetic generator."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edge_irst.cli import main
from edge_irst.errors import InputError, ModelFileError, UnknownNameError
from edge_irst.export import FORMATS, export
from edge_irst.export import calibration
from edge_irst.synthetic import synthetic_frames


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An edge-irst checkpoint of a freshly initialised LW-IRSTNet (no shared data needed)."""
    torch = pytest.importorskip("torch", reason="the exporter needs the [export] extra (torch==2.13.0)")
    from edge_irst.models import create_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "lw.pt", create_model("lw_irstnet").eval(),
                           "lw_irstnet")


def cli_error(capsys, *args: str) -> tuple[int, str]:
    """Run `edge-irst export ARGS` in-process; (exit code, the stderr line that says what went wrong)."""
    try:
        code = main(["export", *args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


# ---- names, sizes, files, folders ----------------------------------------------------------------------------
def test_unknown_format_is_a_usage_error_with_the_close_match(capsys, tmp_path):
    code, line = cli_error(capsys, "--weights", str(tmp_path / "w.pt"), "--format", "onnx,tflight")
    assert code == 2 and "unknown export format 'tflight'" in line and "Did you mean 'tflite'" in line
    with pytest.raises(UnknownNameError, match="Valid: mnn, ncnn, onnx, tflite"):
        export(tmp_path / "w.pt", formats="onnx,tflight")
    with pytest.raises(UnknownNameError, match="Did you mean 'int8'"):
        export(tmp_path / "w.pt", precisions="int9")


def test_missing_weights_file(capsys, tmp_path):
    missing = tmp_path / "nowhere.pt"
    code, line = cli_error(capsys, "--weights", str(missing), "--format", "ncnn", "--out", str(tmp_path))
    assert code == 1 and line == f"edge-irst export: error: weights file not found: {missing}"
    with pytest.raises(ModelFileError, match="weights file not found"):
        export(missing, formats="ncnn", out=tmp_path)


def test_state_dict_of_another_architecture(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    wrong = tmp_path / "conv.pt"
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), wrong)
    code, line = cli_error(capsys, "--weights", str(wrong), "--format", "ncnn", "--out", str(tmp_path))
    assert code == 1 and "weights do not fit architecture 'lw_irstnet'" in line and "missing" in line
    with pytest.raises(ModelFileError, match="do not fit architecture"):
        export(wrong, formats="ncnn", out=tmp_path)


def test_unwritable_output_folder(capsys, tmp_path, checkpoint):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "exports"  # a folder cannot be made inside a file, whoever runs the test (root included)
    code, line = cli_error(capsys, "--weights", str(checkpoint), "--format", "ncnn", "--out", str(out))
    assert code == 1 and f"cannot write the export folder {out}" in line and "pass --out" in line
    with pytest.raises(InputError, match="cannot write the export folder"):
        export(checkpoint, formats="ncnn", out=out)


def test_size_must_be_a_multiple_of_the_stride(capsys, tmp_path, checkpoint):
    code, line = cli_error(capsys, "--weights", str(checkpoint), "--format", "ncnn", "--imgsz", "250",
                           "--out", str(tmp_path))
    assert code == 1 and "multiples of 8" in line
    with pytest.raises(InputError, match="256,320"):
        export(checkpoint, formats="ncnn", imgsz="big", out=tmp_path)


@pytest.mark.parametrize("option, value", [("--calib-limit", "0"), ("--calib-limit", "-1"), ("--threads", "-2"),
                                           ("--threads", "0"), ("--threads", "two")])
def test_counts_below_one_are_usage_errors(capsys, tmp_path, checkpoint, option, value):
    code, line = cli_error(capsys, "--weights", str(checkpoint), "--format", "onnx", "--out", str(tmp_path),
                           option, value)
    assert code == 2 and f"argument {option}: {value!r}: expected a whole number >= 1" in line
    assert not (tmp_path / "lw_irstnet").exists()


def test_the_api_refuses_counts_below_one_before_any_work(tmp_path, checkpoint):
    for limit in (0, -1):
        with pytest.raises(InputError, match=f"calib_limit {limit}: expected a whole number >= 1"):
            export(checkpoint, formats="onnx", calib_limit=limit, out=tmp_path)
        with pytest.raises(InputError, match=f"calib_limit {limit}: expected"):
            calibration.calibration_frames(None, limit)
    with pytest.raises(InputError, match="threads -2: expected a whole number >= 1"):
        export(checkpoint, formats="onnx", threads=-2, out=tmp_path)
    assert not (tmp_path / "lw_irstnet").exists()


def test_missing_converter_names_the_extra(tmp_path, checkpoint):
    """pnnx made unimportable in a fresh interpreter: the CLI and the API both refuse before converting."""
    script = (
        "import sys\n"
        "sys.modules['pnnx'] = None\n"
        "from edge_irst.cli import main\n"
        "from edge_irst.errors import MissingDependencyError\n"
        "from edge_irst.export import export\n"
        f"code = main(['export', '--weights', {str(checkpoint)!r}, '--format', 'ncnn', '--out', {str(tmp_path)!r}])\n"
        "try:\n"
        f"    export({str(checkpoint)!r}, formats='ncnn', out={str(tmp_path)!r})\n"
        "except MissingDependencyError as exc:\n"
        "    print('API:', type(exc).__name__, exc)\n"
        "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "edge-irst export: error: pnnx (needed to export ncnn) is not installed: pip install 'edge-irst[export]'"]
    assert done.stdout.startswith("API: MissingDependencyError pnnx (needed to export ncnn)")
    assert not (tmp_path / "lw_irstnet").exists()


def test_help_lists_every_format_with_its_precisions_and_extra(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for fmt in FORMATS.values():
        assert f"{fmt.name:<7} {','.join(fmt.precisions)}" in text and f"[{fmt.extra}]" in text
    assert "no int8" not in text  # every format writes every precision


@pytest.mark.slow
def test_cli_exports_prints_the_manifest_and_logs_progress_on_stderr(tmp_path, checkpoint):
    done = subprocess.run([sys.executable, "-m", "edge_irst", "export", "--weights", str(checkpoint), "--format",
                           "ncnn", "--precision", "fp32,int8", "--out", str(tmp_path), "--name", "tiny",
                           "--threads", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest == json.loads((tmp_path / "tiny" / "manifest.json").read_text()) | {"folder": str(tmp_path / "tiny")}
    fp32, int8 = manifest["artifacts"]
    assert fp32["verified"] and fp32["files"] == ["tiny_fp32.param", "tiny_fp32.bin"]
    # written and judged; whether a freshly initialised net passes the int8 IoU floor depends on the frames
    assert int8["files"] == ["tiny_int8.param", "tiny_int8.bin"] and int8["mask_iou_vs_fp32"] is not None
    assert int8["status"] == ("verified" if int8["mask_iou_vs_fp32"] >= 0.9 else "UNVERIFIED")
    assert "[1/2] ncnn fp32: converting" in done.stderr and "[1/2] ncnn fp32: verified" in done.stderr


@pytest.mark.slow
def test_int8_onnx_of_a_fresh_net_runs_its_max_pools_in_float(tmp_path, checkpoint, check_float_max_pools):
    """The stem's pool of the input image included (export/to_onnx.py, _pools_of_inputs_in_float), on the default
    calibration frames (the authors' samples, or synthetic frames where ../shared is absent)."""
    report = export(checkpoint, "onnx", "int8", out=tmp_path, name="tiny", threads=1)
    check_float_max_pools(report.path("onnx", "int8"))


# ---- calibration / verification frames ---------------------------------------------------------------------------
def test_calib_folder_is_read_thinned_and_checked(tmp_path):
    import cv2

    for i in range(10):
        cv2.imwrite(str(tmp_path / f"f{i:02d}.png"), np.full((24, 32), i * 20, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    frames, origin = calibration.calibration_frames(tmp_path, limit=4)
    assert [int(f[0, 0]) for f in frames] == [0, 60, 120, 180] and origin.startswith("4 images from")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        calibration.calibration_frames(empty)
    with pytest.raises(InputError, match="not a folder"):
        calibration.calibration_frames(tmp_path / "f00.png")


def test_without_calib_or_shared_data_frames_are_synthetic(monkeypatch, tmp_path):
    monkeypatch.setattr(calibration, "SAMPLES", tmp_path / "absent")
    frames, origin = calibration.calibration_frames(None)
    assert len(frames) == calibration.SYNTHETIC_COUNT and "synthetic" in origin
    assert all(f.dtype == np.uint8 and f.shape == (256, 256) for f in frames)


def test_synthetic_frames_are_deterministic_ir_like_scenes():
    first, again, other = synthetic_frames(3, seed=7), synthetic_frames(3, seed=7), synthetic_frames(3, seed=8)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again))
    assert not np.array_equal(first[0].image, other[0].image)
    for frame in first:
        assert frame.image.dtype == np.uint8 and frame.image.shape == frame.mask.shape == (256, 256)
        assert 1 <= len(frame.centers) <= 4 and frame.mask.any()
        background = np.median(frame.image[~frame.mask])
        assert background < 100  # dark
        for x, y in frame.centers:  # every target is a local bright spot well above the background
            assert frame.image[int(round(y)), int(round(x))] > background + 40


@pytest.mark.parametrize("size, targets, seeds", [((256, 256), (1, 4), range(100)), ((48, 64), (4, 6), range(40))])
def test_every_synthetic_target_is_its_own_8_connected_component(size, targets, seeds):
    """The truth lists as many targets as the mask has 8-connected components, each of its recorded size: no two
    targets touch (seed 14, frame 4 of the default frames once held two touching ones)."""
    import cv2

    for seed in seeds:
        for index, frame in enumerate(synthetic_frames(8, size=size, seed=seed, targets=targets)):
            count, labels = cv2.connectedComponents(frame.mask.astype(np.uint8), connectivity=8)
            assert count - 1 == len(frame.centers), (seed, index)
            for (x, y), pixels in zip(frame.centers, frame.sizes):  # the component under a centre is its target
                assert np.count_nonzero(labels == labels[int(round(y)), int(round(x))]) == pixels, (seed, index)


def test_synthetic_targets_that_cannot_be_kept_apart_are_refused():
    with pytest.raises(InputError, match="40 targets do not fit apart in a 24x24 frame"):
        synthetic_frames(1, size=(24, 24), targets=(40, 40))

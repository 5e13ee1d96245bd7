"""`edge-irst info` end to end, as a user runs it: a subprocess, stdout parsed, exit codes checked."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_irst.backends import list_backends, physical_cores


def edge_irst(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_irst", "info", *args], capture_output=True, text=True,
                          timeout=120)


def test_environment_summary():
    done = edge_irst()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("edge-irst ")
    assert "postprocess: " in done.stdout and f"physical cores: {physical_cores()}" in done.stdout
    for name in list_backends():
        assert f"\n{name} " in done.stdout


def test_registry_model_figures_as_text():
    pytest.importorskip("torch", reason="counting a registry model's FLOPs needs the [export] extra")
    done = edge_irst("lw_irstnet")
    assert done.returncode == 0, done.stderr
    assert "163,232" in done.stdout and "303.53 M" in done.stdout


def test_registry_model_and_backends_as_json():
    pytest.importorskip("torch", reason="counting a registry model's FLOPs needs the [export] extra")
    done = edge_irst("lw_irstnet", "--backends", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["parameters"] == 163_232 and round(report["thop_flops"] / 1e6, 2) == 303.53
    assert report["physical_cores"] == physical_cores()
    rows = {row["name"]: row for row in report["backends"]}
    assert list(rows) == list_backends()
    for row in rows.values():
        assert isinstance(row["accelerators"], list)
        assert row["version"] if row["installed"] else "pip install 'edge-irst[" in row["reason"]
    assert rows["onnxruntime"]["installed"] and rows["opencv"]["installed"]  # core dependencies


def test_pytorch_checkpoint_counts_its_own_network_at_its_contract_size():
    """A checkpoint is a PyTorch model: info counts the trained net (here the bundled one, the registry
    architecture: the same figures as `info lw_irstnet`), at the contract's input size or --imgsz."""
    pytest.importorskip("torch", reason="loading a PyTorch checkpoint needs the [export] extra")
    from edge_irst.assets import BUNDLED_MODEL

    checkpoint = str(BUNDLED_MODEL / "lw_irstnet.pt")
    registry = json.loads(edge_irst("lw_irstnet", "--json").stdout)
    done = edge_irst(checkpoint, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "torch" and report["contract"]["input_size"] == [256, 256]
    counted = report["complexity"]
    assert counted["input_shape"] == [1, 3, 256, 256]
    assert (counted["parameters"], counted["thop_flops"], counted["conv_macs"]) == \
        (registry["parameters"], registry["thop_flops"], registry["conv_macs"])
    larger = json.loads(edge_irst(checkpoint, "--imgsz", "512", "640", "--json").stdout)["complexity"]
    assert larger["input_shape"] == [1, 3, 512, 640]
    assert larger["thop_flops"] == 5 * counted["thop_flops"]  # every layer scales with the area: 5x the pixels
    text = edge_irst(checkpoint).stdout
    assert "complexity (the checkpoint's network)" in text and "163,232" in text


def test_a_size_off_the_stride_is_counted_padded_as_bench_runs_it():
    """LW-IRSTNet takes multiples of its stride 8 only; 250x250 is counted at 256x256, as the Detector (and so
    edge-irst bench) edge-pads such a frame, and the output says so; sizes that are not positive are refused."""
    pytest.importorskip("torch", reason="counting FLOPs needs the [export] extra")
    from edge_irst.assets import BUNDLED_MODEL

    done = edge_irst("lw_irstnet", "--imgsz", "250", "250", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["input_shape"] == [1, 3, 256, 256] and report["padded_from"] == [250, 250]
    assert round(report["thop_flops"] / 1e6, 2) == 303.53  # the figures at 256x256
    assert "stride 8: counted at 256 256" in report["padding"]
    done = edge_irst(str(BUNDLED_MODEL / "lw_irstnet.pt"), "--imgsz", "250", "250")
    assert done.returncode == 0, done.stderr
    assert "3x256x256" in done.stdout and "note: --imgsz 250 250 is not a multiple of the model's stride 8" \
        in done.stdout
    done = edge_irst("lw_irstnet", "--imgsz", "0", "-5")
    assert done.returncode == 1 and "--imgsz 0 -5: H and W must be positive" in done.stderr
    assert "Traceback" not in done.stderr


def test_artifact_spec_and_contract_as_json_with_a_chatty_runtime(authors_dir):
    """MNN prints to stdout from C; the JSON on stdout must still parse."""
    pytest.importorskip("MNN", reason="the mnn backend needs the [mnn] extra")
    done = edge_irst(str(authors_dir / "LW_IRST.mnn"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "mnn" and report["inputs"][0]["shape"] == [1, 3, 256, 256]
    assert report["contract"]["input_size"] == [256, 256] and report["options_in_effect"]["threads"] == 1


def test_errors_exit_1_with_the_reason_on_stderr(tmp_path):
    done = edge_irst("lw_irstnett")
    assert done.returncode == 1 and "Did you mean 'lw_irstnet'" in done.stderr and done.stdout == ""
    done = edge_irst(str(tmp_path / "absent.onnx"))
    assert done.returncode == 1 and "artifact not found" in done.stderr


def test_registry_model_without_torch_names_the_export_extra():
    """torch blocked the way Python documents (sys.modules entry None): the real import-failure path runs."""
    code = ("import sys; sys.modules['torch'] = None; from edge_irst.cli import main; "
            "sys.exit(main(['info', 'lw_irstnet']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "pip install 'edge-irst[export]'" in done.stderr, done.stderr


def test_imgsz_on_an_exported_artifact_says_it_is_not_used():
    """--imgsz sizes the FLOPs count of a PyTorch model; on an exported artifact it used to vanish unmentioned."""
    from edge_irst.assets import BUNDLED_MODEL

    artifact = str(BUNDLED_MODEL / "lw_irstnet_fp32.onnx")
    done = edge_irst(artifact, "--imgsz", "512", "640")
    assert done.returncode == 0, done.stderr
    assert "note: --imgsz 512 640 is not used: FLOPs are counted for registry models and PyTorch checkpoints" \
        in done.stdout
    report = json.loads(edge_irst(artifact, "--imgsz", "512", "640", "--json").stdout)
    assert "onnxruntime artifact's input is its spec above" in report["note"] and "complexity" not in report
    assert "note" not in json.loads(edge_irst(artifact, "--json").stdout)


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`edge-irst info | head`: the closed pipe used to end in a BrokenPipeError traceback."""
    child = subprocess.Popen([sys.executable, "-m", "edge_irst", "info"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    child.stdout.close()  # before the child writes: its first write finds the pipe closed
    stderr = child.communicate(timeout=120)[1]
    assert child.returncode == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "Exception ignored" not in stderr

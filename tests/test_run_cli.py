"""`edge-irst run` end to end: a video written by the test, synthetic frames with ground truth, 16-bit raw images,
Ctrl-C (a real SIGINT to a subprocess) leaving complete outputs, and failures with exit codes and messages."""
from __future__ import annotations

import csv
import os
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from edge_irst.cli import main
from edge_irst.pipeline import usable_cpus
from edge_irst.synthetic import SyntheticScene

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "detections.schema.json").read_text())
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx(authors_dir) -> str:
    return str(authors_dir / "LW_IRST.onnx")


def _run_json(capsys, *argv) -> dict:
    assert main(["run", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_video_file_source_with_json_summary_and_outputs(tmp_path, capsys, onnx):
    scene = SyntheticScene((256, 256), targets=3, seed=4)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (256, 256))
    for i in range(8):
        writer.write(cv2.cvtColor(scene.frame(i).image, cv2.COLOR_GRAY2BGR))
    writer.release()
    summary = _run_json(capsys, "--source", str(video), "--model", onnx, "--backend", "onnxruntime",
                        "--threads", "1", "--save-json", str(tmp_path / "d.jsonl"),
                        "--save-csv", str(tmp_path / "d.csv"))
    assert summary["outcome"] == "completed" and summary["frames"] == 8 and summary["skipped"] == 0
    assert summary["source"]["kind"] == "video" and summary["backend"] == "onnxruntime"
    assert summary["options_in_effect"]["threads"] == 1  # read back from the runtime
    assert summary["targets"] == 24 and summary["fps"] > 0
    assert set(summary["median_ms"]) == {"decode", "preprocess", "inference", "postprocess"}
    assert "end to end" in summary["fps_includes"] and summary["postprocess"]["implementation"] in ("c", "opencv")
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(records) == 8
    for record in records:
        jsonschema.validate(record, SCHEMA)
        assert record["source"] == str(video) and record["timestamp"] == pytest.approx(record["frame_index"] / 15)
        for target, (x, y) in zip(sorted(record["targets"], key=lambda t: t["centroid"]),
                                  sorted(scene.frame(record["frame_index"]).centers.tolist())):
            assert abs(target["centroid"][0] - x) < 1.5 and abs(target["centroid"][1] - y) < 1.5
    with open(tmp_path / "d.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 24


def test_synthetic_default_source_reports_ground_truth_and_settings(capsys, onnx):
    summary = _run_json(capsys, "--model", onnx, "--max-frames", "5", "--threads", "1", "--filter", "authors",
                        "--size-min", "2", "--inclusive")
    assert summary["frames"] == 5 and summary["source"]["kind"] == "synthetic"
    assert summary["synthetic_truth"]["recall"] == 1.0 and summary["synthetic_truth"]["false"] == 0
    assert summary["filter"] == {"size_min": 2, "size_max": 100, "ratio_min": 0.2, "ratio_max": 5.0,
                                 "inclusive": True}
    assert summary["policy"] == {"policy": "resize", "model_input": [256, 256]}


def test_text_summary_on_stdout(capsys, onnx):
    assert main(["run", "--model", onnx, "--source", "synthetic:256x256,frames=3", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for expected in ("frames        3  skipped 0  dropped 0", "FPS", "end to end (decode + preprocess + inference",
                     "median ms     decode", "threads 1", "ground truth  9/9 synthetic targets found"):
        assert expected in out


def test_raw_sixteen_bit_folder_with_a_fixed_raw_range(tmp_path, capsys, caplog, onnx):
    scene = SyntheticScene((256, 256), targets=3, seed=6, bits=14)
    for i in range(3):
        assert cv2.imwrite(str(tmp_path / f"raw_{i}.png"), scene.frame(i).image)
    (tmp_path / "raw_3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a corrupt file among them
    lo, hi = scene.raw_range
    summary = _run_json(capsys, "--source", str(tmp_path), "--model", onnx, "--threads", "1",
                        "--raw-range", f"{lo:g},{hi:g}")
    assert summary["frames"] == 3 and summary["targets"] == 9
    assert summary["skipped"] == 1 and summary["source"]["skipped"] == 1
    assert summary["raw_mapping"] == {"mode": "fixed", "low": lo, "high": hi} and summary["raw_frames"] == 3
    assert "skipping" in caplog.text and "raw_3.png" in caplog.text  # reported in the log (stderr)
    assert "had no effect" not in caplog.text


def test_a_raw_range_on_eight_bit_frames_is_reported_as_without_effect(capsys, caplog, onnx):
    summary = _run_json(capsys, "--source", "synthetic:256x256,frames=3", "--model", onnx, "--threads", "1",
                        "--raw-range", "1000,15000")
    assert summary["frames"] == 3 and summary["raw_frames"] == 0
    assert "--raw-range / --raw-percentiles had no effect: they map 14/16-bit raw frames, and the 3 frames of " \
           "synthetic" in caplog.text


def test_folder_run_skips_empty_and_unsupported_images_and_counts_them(tmp_path, capsys, caplog, onnx):
    scene = SyntheticScene((256, 256), targets=3, seed=6)
    for i in range(2):
        assert cv2.imwrite(str(tmp_path / f"img_{i}.png"), scene.frame(i).image)
    (tmp_path / "img_2.png").write_bytes(b"")
    assert cv2.imwrite(str(tmp_path / "img_3.png"), np.full((64, 80, 3), 1000, np.uint16))  # 16-bit colour, last
    # as many inference threads as CPUs: no reader thread, so nothing is read ahead of the last result
    summary = _run_json(capsys, "--source", str(tmp_path), "--model", onnx, "--threads", str(usable_cpus()))
    assert summary["outcome"] == "completed" and summary["frames"] == 2 and summary["targets"] == 6
    assert summary["skipped"] == summary["source"]["skipped"] == 2
    assert "img_2.png: the file is empty (0 bytes)" in caplog.text
    assert "img_3.png, frame 3: 16-bit frames must be single-channel" in caplog.text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device on which every write fails)")
def test_a_full_disk_fails_with_the_path_and_reason_after_the_summary(capsys, onnx):
    assert main(["run", "--model", onnx, "--threads", "1", "--source", "synthetic:64x64,frames=5",
                 "--save-json", "/dev/full", "--json"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["outcome"] == "failed" and summary["frames"] == 0
    assert err.startswith("edge-irst run: error: cannot write the JSON Lines results to /dev/full: No space left on "
                          "device") and "Traceback" not in err


def test_an_output_that_cannot_open_fails_before_any_other_output_is_written(tmp_path, capsys, onnx):
    (tmp_path / "v.avi").mkdir()  # OpenCV cannot write a video over a folder
    jsonl = tmp_path / "ok.jsonl"
    assert main(["run", "--model", onnx, "--threads", "1", "--source", "synthetic:64x64,frames=5", "--json",
                 "--save-json", str(jsonl), "--save-video", str(tmp_path / "v.avi")]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["frames"] == 0 and jsonl.read_text() == ""  # the summary and the outputs agree
    assert "OpenCV cannot write the video" in err and "try .avi" not in err  # it is an .avi already


def test_missing_accelerator_fails_or_falls_back_to_the_cpu(capsys, onnx):
    argv = ["run", "--model", onnx, "--backend", "onnxruntime", "--device", "cuda", "--max-frames", "1"]
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing to fall back from")
    assert main(argv) == 1
    assert "fallback" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        summary = _run_json(capsys, *argv[1:], "--fallback", "cpu")
    assert summary["frames"] == 1 and summary["options_in_effect"]["device"] == "cpu"
    assert "cuda" in summary["options_in_effect"]["fallback"].lower()


@pytest.mark.parametrize("stop, code, outcome", [
    (signal.SIGINT, 130, "interrupted"),                # Ctrl-C
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),      # kill, systemd, docker stop: killed the run outright before
])
def test_a_stop_signal_leaves_complete_outputs_and_a_summary(tmp_path, onnx, stop, code, outcome):
    jsonl, table, video = tmp_path / "d.jsonl", tmp_path / "d.csv", tmp_path / "v.avi"
    command = [sys.executable, "-m", "edge_irst", "run", "--model", onnx, "--threads", "1", "--json",
               "--source", "synthetic:256x256,targets=2,frames=0", "--save-json", str(jsonl),
               "--save-csv", str(table), "--save-video", str(video)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_records(jsonl)) >= 3, process)
        process.send_signal(stop)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, err
    summary = json.loads(out)
    assert summary["outcome"] == outcome and summary["frames"] >= 3
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert jsonl.read_text().endswith("\n") and len(records) == summary["frames"]
    for record in records:
        jsonschema.validate(record, SCHEMA)
    with open(table, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == sum(len(r["targets"]) for r in records)
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened() and capture.get(cv2.CAP_PROP_FRAME_COUNT) == summary["frames"]
    capture.release()


def test_a_stop_signal_inside_the_block_is_held_to_its_end_and_an_ignored_one_stays_ignored():
    from edge_irst.cli.run import interrupt_after_block, sigterm_interrupts

    finished = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with sigterm_interrupts(), interrupt_after_block():
            os.kill(os.getpid(), signal.SIGTERM)
            finished.append("block")  # not cut short: the frame's outputs and its count stay together
    assert finished == ["block"] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job a script starts with `&`
    try:
        with interrupt_after_block():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("argv, message", [
    (["--policy", "native"], r"256x256 \(HxW\) inputs only.*--dynamic"),
    (["--source", "7"], r"camera '7' could not be opened"),
    (["--source", "no/such/file.png"], r"source 'no/such/file.png' not found"),
    (["--save-video", "out.gif"], r"unsupported suffix '\.gif'"),
])
def test_failures_exit_1_with_the_reason(capsys, onnx, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--model", onnx, "--max-frames", "1", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edge-irst run: error:")
    assert re.search(message, err), err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--policy", "squeeze"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["run", "--raw-range", "100,10"])
    assert "expected LO < HI" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--source", "--policy", "--raw-range", "--save-json", "--save-video", "--show", "--fallback",
                   "--reconnect-retries", "--reconnect-at-start"):
        assert option in out


def _wait_for(predicate, process, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if predicate():
            return
        time.sleep(0.05)
    assert process.poll() is None and predicate(), "the run ended or stalled before the condition held"


def _records(path: Path) -> list:
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text.splitlines()[:text.count("\n")]]  # complete lines only


def _control_run(tmp_path, onnx, control: str):
    jsonl = tmp_path / "d.jsonl"
    command = [sys.executable, "-m", "edge_irst", "run", "--model", onnx, "--threads", "1", "--json",
               "--source", "synthetic:256x256,targets=3,frames=0", "--save-json", str(jsonl), "--control", control]
    stdin = subprocess.PIPE if control == "stdin" else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=REPO, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    return process, jsonl


def _check_one_switch(records: list) -> int:
    """Index of the first frame with the new settings; every frame before has the defaults, every one after the
    new values (threshold 3, the authors' filter) and only targets the filter keeps."""
    switched = [r["threshold"] == 3.0 for r in records]
    first = switched.index(True)
    assert first >= 3 and all(switched[first:]) and not any(switched[:first])
    for record in records[:first]:
        assert record["threshold"] == 0.0 and record["filter"]["size_min"] is None
    for record in records[first:]:
        jsonschema.validate(record, SCHEMA)
        assert record["filter"] == {"size_min": 5, "size_max": 100, "ratio_min": 0.2, "ratio_max": 5,
                                    "inclusive": False}
        assert all(5 < t["size"] < 100 and 0.2 < t["aspect_ratio"] < 5 for t in record["targets"])
    return first


def _switch_then_quit(process, jsonl: Path, send, extra: str = "") -> tuple[str, str]:
    """After 3 frames: send the new settings (+ extra lines), wait until a frame shows them, send quit."""
    try:
        _wait_for(lambda: len(_records(jsonl)) >= 3, process)
        send("threshold=3 filter=authors\n" + extra)
        _wait_for(lambda: any(r["threshold"] == 3.0 for r in _records(jsonl)), process)
        send("quit\n")
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()


def test_control_lines_on_stdin_change_the_running_stream_and_quit_it(tmp_path, onnx):
    process, jsonl = _control_run(tmp_path, onnx, "stdin")

    def send(text: str) -> None:
        process.stdin.write(text)
        process.stdin.flush()

    out, err = _switch_then_quit(process, jsonl, send, extra="bogus=1\n")
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["outcome"] == "stopped by a control quit" and summary["control"]["applied"] == 1
    assert "line 'bogus=1' refused" in err and "unknown setting 'bogus'" in err
    records = _records(jsonl)
    assert len(records) == summary["frames"]
    _check_one_switch(records)
    assert summary["threshold"] == 3.0 and summary["filter"]["size_max"] == 100


def test_a_control_file_stops_being_watched_when_the_run_ends(tmp_path, capsys, onnx):
    control = tmp_path / "control.txt"
    control.write_text("threshold=1\n")
    before = set(threading.enumerate())
    summary = _run_json(capsys, "--model", onnx, "--threads", "1", "--source", "synthetic:64x64,frames=3",
                        "--control", str(control))
    assert summary["outcome"] == "completed"
    watching = [t for t in set(threading.enumerate()) - before if t.name == "edge-irst-control"]
    for thread in watching:
        thread.join(2)
    assert not any(t.is_alive() for t in watching)  # no thread left applying lines to a closed detector


def test_control_fifo_is_reopened_for_each_writer(tmp_path, onnx):
    fifo = tmp_path / "control"
    os.mkfifo(fifo)
    process, jsonl = _control_run(tmp_path, onnx, str(fifo))
    # Each write_text is one writer (open, write, close): the quit only arrives if the channel reopened the FIFO.
    out, err = _switch_then_quit(process, jsonl, fifo.write_text)
    assert process.returncode == 0, err
    assert json.loads(out)["outcome"] == "stopped by a control quit"
    _check_one_switch(_records(jsonl))


def test_control_regular_file_is_watched_while_it_runs(tmp_path, onnx):
    control = tmp_path / "control.txt"
    control.write_text("# settings\n")
    process, jsonl = _control_run(tmp_path, onnx, str(control))
    # Each write_text rewrites the file, as `echo ... > control.txt` does: read once at the start, none would apply.
    out, err = _switch_then_quit(process, jsonl, control.write_text)
    assert process.returncode == 0, err
    assert json.loads(out)["outcome"] == "stopped by a control quit"
    _check_one_switch(_records(jsonl))


def test_outputs_a_run_never_made_are_listed_apart(tmp_path, capsys, onnx):
    """--max-frames 0: the JSON Lines file is made at start (empty), the video only with its first frame."""
    jsonl, video = tmp_path / "a.jsonl", tmp_path / "a.avi"
    argv = ["--model", onnx, "--threads", "1", "--source", "synthetic:64x64,frames=5", "--max-frames", "0",
            "--save-json", str(jsonl), "--save-video", str(video)]
    summary = _run_json(capsys, *argv)
    assert summary["outputs"] == {"save_json": str(jsonl)} and jsonl.read_text() == ""
    assert summary["outputs_not_written"] == {"save_video": str(video)} and not video.exists()
    assert main(["run", *argv]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("save-video "))
    assert line.split(None, 1)[1] == f"{video} (not written: no frame reached it)"

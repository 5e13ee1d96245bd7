"""Sinks on real streams: JSON Lines validated against tests/schemas/detections.schema.json, CSV rows per target,
annotated video read back with OpenCV, annotated PNGs, and outputs that stay intact when a run is interrupted."""
from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from edge_irst.errors import InputError, SinkError
from edge_irst.pipeline import Detector
from edge_irst.sinks import (CsvSink, ImageFolderSink, JsonlSink, Sink, SinkSet, VideoSink, WindowSink,
                             gui_unavailable_reason)
from edge_irst.synthetic import SyntheticScene

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "detections.schema.json").read_text())
SPEC = "synthetic:256x256,targets=3,frames=6,seed=2"


@pytest.fixture(scope="module")
def detector(authors_dir):
    with Detector(authors_dir / "LW_IRST.onnx", "onnxruntime", threads=1) as d:
        yield d


@pytest.fixture(scope="module")
def results(detector):
    return list(detector.stream(SPEC))


def _validate_jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n"), "the last record must be complete"
    records = [json.loads(line) for line in text.splitlines()]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for record in records:
        validator.validate(record)
    return records


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_jsonl_one_valid_record_per_frame_with_the_detections(tmp_path, results):
    with JsonlSink(tmp_path / "out" / "d.jsonl", SPEC, "resize") as sink:
        for result in results:
            sink.write(result)
    records = _validate_jsonl(tmp_path / "out" / "d.jsonl")
    assert [r["frame_index"] for r in records] == [r.index for r in results]
    for record, result in zip(records, results):
        d = result.detections
        assert len(record["targets"]) == len(d) == 3
        assert record["frame_shape"] == [256, 256] and record["timestamp"] == result.timestamp
        assert record["conventions"]["size"].endswith("(policy resize)")
        assert [t["centroid"] for t in record["targets"]] == np.stack([d.x, d.y], 1).tolist()
        assert [t["box"] for t in record["targets"]] == np.stack([d.x_min, d.y_min, d.x_max, d.y_max], 1).tolist()


def test_schema_rejects_a_record_missing_what_consumers_rely_on(tmp_path, results):
    with JsonlSink(tmp_path / "d.jsonl", SPEC, "tile") as sink:
        sink.write(results[0])
    (record,) = _validate_jsonl(tmp_path / "d.jsonl")
    del record["targets"][0]["box"]
    with pytest.raises(jsonschema.ValidationError, match="'box' is a required property"):
        jsonschema.validate(record, SCHEMA)


def test_csv_has_one_row_per_target(tmp_path, results):
    with CsvSink(tmp_path / "d.csv", SPEC) as sink:
        for result in results:
            sink.write(result)
    with open(tmp_path / "d.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(len(r.detections) for r in results) == 18
    first = results[0].detections
    assert [float(r["x"]) for r in rows[:3]] == first.x.tolist()
    assert [int(r["size"]) for r in rows[:3]] == first.size.tolist()
    assert {r["source"] for r in rows} == {SPEC}


def test_annotated_video_and_images_show_boxes_around_the_targets(tmp_path, results):
    with SinkSet([VideoSink(tmp_path / "v.avi", fps=10), ImageFolderSink(tmp_path / "frames")]) as sinks:
        for result in results:
            sinks.write(result)
    capture = cv2.VideoCapture(str(tmp_path / "v.avi"))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == len(results)
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (256, 256, 3)
    pngs = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in pngs] == [f"frame_{r.index:06d}.png" for r in results]  # no partial files left
    for image in (first, cv2.imread(str(pngs[0]))):
        green = (image[:, :, 1] > 180) & (image[:, :, 0] < 100) & (image[:, :, 2] < 100)
        for x, y in zip(results[0].detections.x, results[0].detections.y):
            x0, y0 = int(x), int(y)
            assert green[max(y0 - 8, 0):y0 + 9, max(x0 - 8, 0):x0 + 9].any()  # a box drawn around each target
        assert not green[:20, 100:].any()  # ...and not where there is none (top-right corner)


@pytest.mark.parametrize("shape", ["HxW", "HxWx1"])
def test_raw_frames_are_annotated_through_the_raw_mapping(tmp_path, detector, shape):
    raw = SyntheticScene((128, 160), targets=2, bits=14).frame(0).image
    (result,) = list(detector.stream([raw if shape == "HxW" else raw[:, :, None]]))  # the detector takes both
    with SinkSet([ImageFolderSink(tmp_path), VideoSink(tmp_path / "v.avi")]) as sinks:
        sinks.write(result)
    written = cv2.imread(str(tmp_path / "frame_000000.png"))
    assert written.dtype == np.uint8 and written.shape == (128, 160, 3) and written.std() > 2
    capture = cv2.VideoCapture(str(tmp_path / "v.avi"))
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (128, 160, 3) and first.std() > 2


def test_odd_sized_frames_are_padded_not_cropped_in_the_video(tmp_path, detector):
    image = np.zeros((201, 255), np.uint8)
    image[-1, :] = image[:, -1] = 255  # the last row and column: what cropping to 254x200 would lose
    (result,) = list(detector.stream([image]))
    for suffix in (".avi", ".mp4"):
        with VideoSink(tmp_path / f"v{suffix}") as sink:
            sink.write(result)
        capture = cv2.VideoCapture(str(tmp_path / f"v{suffix}"))
        ok, written = capture.read()
        capture.release()
        grey = written[:, :, 1].astype(float)
        assert ok and written.shape == (202, 256, 3), suffix
        assert grey[100:, 254].mean() > 200 and grey[200, 100:].mean() > 200, suffix  # kept
        assert grey[100:, 255].mean() < 60 and grey[201, 100:250].mean() < 60, suffix  # the black padding


def test_interrupted_run_leaves_complete_outputs(tmp_path, detector):
    scene = SyntheticScene((128, 160), targets=2)

    def frames():
        for i in range(100):
            if i == 4:
                raise KeyboardInterrupt  # Ctrl-C while the source reads frame 4
            yield scene.frame(i).image

    sinks = SinkSet([JsonlSink(tmp_path / "d.jsonl", "frames", "resize"), CsvSink(tmp_path / "d.csv", "frames"),
                     VideoSink(tmp_path / "v.avi")])
    with pytest.raises(KeyboardInterrupt):
        with sinks, contextlib.closing(detector.stream(frames())) as results:
            for result in results:
                sinks.write(result)
    assert len(_validate_jsonl(tmp_path / "d.jsonl")) == 4
    with open(tmp_path / "d.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 8
    capture = cv2.VideoCapture(str(tmp_path / "v.avi"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 4 and capture.get(cv2.CAP_PROP_FRAME_COUNT) == 4  # the index was written on release


def test_sink_set_closes_every_sink_when_one_fails(tmp_path):
    closed = []

    class Failing(Sink):
        def close(self):
            closed.append("failing")
            raise SinkError("disk full")

    class Fine(Sink):
        def close(self):
            closed.append("fine")

    with pytest.raises(SinkError, match="disk full"):
        SinkSet([Failing(), Fine()]).close()
    assert closed == ["failing", "fine"]


def test_bad_outputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match=r"unsupported suffix '\.gif'; accepted: \.avi"):
        VideoSink(tmp_path / "v.gif")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match="cannot write the JSON Lines results"):
        JsonlSink(blocker / "d.jsonl", "s", "resize")
    with pytest.raises(SinkError, match=r"cannot write the annotated video to .*file/v\.avi: .*writable path"):
        VideoSink(blocker / "v.avi")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device on which every write fails)")
def test_a_full_disk_is_one_clear_error_naming_the_output(results):
    sink = JsonlSink("/dev/full", SPEC, "resize")
    with pytest.raises(SinkError, match="cannot write the JSON Lines results to /dev/full: No space left on device; "
                                        "free space there or choose another path"):
        sink.write(results[0])
    sink.close()  # what is still buffered cannot be written either: already reported, not raised again
    with pytest.raises(SinkError, match="cannot write the CSV results to /dev/full: No space left on device"):
        CsvSink("/dev/full", SPEC)  # its header is written when it opens


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """RLIMIT_FSIZE: a real write past `limit` bytes stops part way and then fails (EFBIG), as on a disk that fills
    up; SIGXFSZ, which would kill the process instead, is ignored meanwhile."""
    resource = pytest.importorskip("resource")
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("make", [lambda path: JsonlSink(path, SPEC, "resize"), lambda path: CsvSink(path, SPEC)],
                         ids=["jsonl", "csv"])
def test_a_write_that_fails_half_way_leaves_only_the_complete_frames(tmp_path, results, make):
    path = tmp_path / "results.txt"
    sink = make(path)
    for result in results[:2]:
        sink.write(result)
    before = path.read_bytes()
    assert len(results[2].detections) == 3  # its piece is longer than the 100 bytes the limit leaves
    with _file_size_limit(len(before) + 100):
        with pytest.raises(SinkError, match=r"cannot write the (JSON Lines|CSV) results to .*results\.txt: "
                                            r"File too large"):
            sink.write(results[2])
        sink.close()
    assert path.read_bytes() == before  # the 100 bytes of frame 2 that got through were cut off again


@pytest.fixture(scope="module")
def noise_results():
    """Frames of noise (about 50 KB each as Motion JPEG) through the bundled model: no ../shared needed."""
    from edge_irst.assets import default_model

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(20)]
    with Detector(default_model(), "onnxruntime", threads=1) as bundled:
        return list(bundled.stream(images))


@pytest.mark.parametrize("suffix", [".avi", ".mkv", ".mp4"])
def test_a_video_the_disk_cuts_short_is_reported_when_it_closes(tmp_path, noise_results, suffix):
    whole = VideoSink(tmp_path / f"whole{suffix}", fps=29.97)
    for result in noise_results:
        whole.write(result)
    whole.close()  # complete: the count read back matches, no error
    short = VideoSink(tmp_path / f"short{suffix}", fps=29.97)
    with _file_size_limit(200_000):
        for result in noise_results:
            short.write(result)  # OpenCV says nothing as the limit stops its writes
        with pytest.raises(SinkError, match=rf"annotated video .*short\{suffix} is incomplete: 20 frames were "
                                            rf"written and it (holds \d+ of them|cannot be read back).*ulimit -f"):
            short.close()
    assert (tmp_path / f"short{suffix}").stat().st_size <= 200_000


@pytest.mark.parametrize("suffix", [".avi", ".mkv", ".mp4"])
def test_a_video_no_frame_got_to_is_removed_and_the_real_failure_raised(tmp_path, noise_results, suffix):
    """SinkSet opens the video for the first frame; a sink before it fails on that frame: the video holds no
    frame, so close() leaves no file (an empty MP4 / MKV is not even readable) and does not report it as cut
    short, which would hide the failure that happened."""
    images = tmp_path / "frames"
    sinks = SinkSet([ImageFolderSink(images), VideoSink(tmp_path / f"v{suffix}")])
    images.rmdir()
    images.write_text("")  # the images' folder is gone: the first write fails
    with pytest.raises(SinkError, match="cannot write the annotated images"):
        with sinks:
            sinks.write(noise_results[0])
    assert not (tmp_path / f"v{suffix}").exists()


def test_a_sink_that_fails_on_a_frame_has_the_ones_before_it_take_that_frame_back(tmp_path):
    from edge_irst.assets import default_model

    scene = SyntheticScene((256, 256), targets=3)
    with Detector(default_model(), "onnxruntime", threads=1) as bundled:
        frames = list(bundled.stream([scene.frame(i).image for i in range(3)]))
    assert all(len(f.detections) for f in frames)  # every frame writes CSV rows
    kept, failing = tmp_path / "kept", tmp_path / "failing"
    sinks = SinkSet([JsonlSink(tmp_path / "r.jsonl", SPEC, "resize"), CsvSink(tmp_path / "r.csv", SPEC),
                     ImageFolderSink(kept), ImageFolderSink(failing)])
    for result in frames[:2]:
        sinks.write(result)
    for png in failing.iterdir():
        png.unlink()
    failing.rmdir()
    failing.write_text("")  # the last sink's folder is gone: its next write fails
    with pytest.raises(SinkError, match="cannot write the annotated images"):
        sinks.write(frames[2])
    sinks.close()
    assert [r["frame_index"] for r in _validate_jsonl(tmp_path / "r.jsonl")] == [0, 1]
    with open(tmp_path / "r.csv", newline="") as stream:
        assert {row["frame_index"] for row in csv.DictReader(stream)} == {"0", "1"}
    assert sorted(p.name for p in kept.iterdir()) == ["frame_000000.png", "frame_000001.png"]


def test_an_image_that_cannot_be_written_names_it_and_leaves_no_partial_file(tmp_path, results):
    (tmp_path / "frame_000000.png").mkdir()  # the name is taken by a folder: the rename into place fails
    with pytest.raises(SinkError, match=r"cannot write the annotated images to .*frame_000000\.png: "):
        ImageFolderSink(tmp_path).write(results[0])
    assert [p.name for p in tmp_path.iterdir()] == ["frame_000000.png"]


def test_show_without_a_gui_says_why_and_what_to_do(monkeypatch):
    if "GUI:                           NONE" not in cv2.getBuildInformation():
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        expected = "no display"
    else:
        expected = r"without a GUI \(opencv-python-headless.*pip install opencv-python"
    assert gui_unavailable_reason() is not None
    with pytest.raises(SinkError, match=expected):
        WindowSink()

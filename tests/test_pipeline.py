"""The Detector against real runtimes and the authors' published LW-IRSTNet artifacts (../shared): synthetic
targets found where the ground truth says, the same detections on every installed backend, live settings, the
resize/native/tile policies on a large frame, tile seams, raw 16-bit frames, bounded prefetching, interruption."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import warnings

import cv2
import numpy as np
import pytest

from edge_irst.backends import backend_class
from edge_irst.contract import AUTHORS_CONTRACT, write_sidecar
from edge_irst.errors import InputError, ModelFileError
from edge_irst.pipeline import BACKEND_PREFERENCE, Detector, StreamStats, _tile_layout, preferred_backend
from edge_irst.preprocess import RawMapping, read_image
from edge_irst.sources import IterableSource, VideoFileSource, open_source
from edge_irst.synthetic import SyntheticScene, add_target, match_truth

AUTHORS_FILES = {  # backend -> the authors' artifact it reads
    "onnxruntime": "LW_IRST.onnx",
    "opencv": "LW_IRST.onnx",
    "ncnn": "ncnn/LW_IRST-sim-opt.param",
    "mnn": "LW_IRST.mnn",
    "tflite": "LW_IRST_fp32.tflite",
}


def _installed(name: str) -> bool:
    return backend_class(name).installed()


@pytest.fixture(scope="module")
def fastest(authors_dir):
    """(artifact, backend) of the preferred installed CPU backend for the authors' files."""
    name = next(n for n in BACKEND_PREFERENCE["cpu"] if n in AUTHORS_FILES and _installed(n))
    return authors_dir / AUTHORS_FILES[name], name


@pytest.fixture(scope="module")
def detector(fastest):
    with Detector(*fastest, threads=1) as d:
        yield d


@pytest.fixture(scope="session")
def dynamic_onnx(authors_dir, request):
    """The authors' checkpoint exported with dynamic height/width (no such artifact is published), cached in
    pytest's cache folder keyed by the checkpoint's and torch's versions: the export costs ~10 s once."""
    torch = pytest.importorskip("torch", reason="exporting a dynamic-size ONNX needs torch (the [export] extra)")
    from edge_irst.models.checkpoint import load_checkpoint

    pkl = authors_dir / "LW_IRST.pkl"
    key = hashlib.sha256(pkl.read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    path = request.config.cache.mkdir("edge_irst_dynamic_onnx") / f"lw_irst_dynamic_{key}.onnx"
    if not path.is_file():
        model = load_checkpoint(pkl).model.eval()
        partial = path.with_suffix(".part")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.zeros(1, 3, 256, 256), str(partial), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "height", 3: "width"}})
        partial.replace(path)
    # the contract says so too (as the exporter writes it): runtimes that cannot read shapes (OpenCV DNN) go by it
    write_sidecar(path, AUTHORS_CONTRACT.replace(input_size=None, provenance="test export, dynamic H/W"))
    return path


# ---- end to end on synthetic ground truth ------------------------------------------------------------------------
def _bundled_model():
    from edge_irst.assets import default_model

    try:
        return default_model()
    except ModelFileError as exc:
        pytest.skip(f"no bundled model yet: {exc}")


@pytest.mark.parametrize("which", ["authors", "bundled"])
def test_stream_on_synthetic_targets_matches_ground_truth(which, fastest):
    model, backend = fastest if which == "authors" else (_bundled_model(), None)
    with Detector(model, backend, threads=1) as d:
        stats = StreamStats()
        with contextlib.closing(d.stream("synthetic:256x256,targets=4,frames=12,seed=2")) as results:
            for result in results:
                stats.add(result)
                match = match_truth(result.detections.x, result.detections.y, result.frame.truth.centers, 1.5)
                assert (match.found, match.missed, match.false) == (4, 0, 0), f"frame {result.index}"
                assert result.detections.frame_shape == (256, 256)
                assert result.timings.inference > 0 and result.timings.latency >= result.timings.inference
    assert stats.frames == 12 and stats.targets == 48
    summary = stats.summary()
    assert summary["fps"] > 0 and set(summary["median_ms"]) == {"decode", "preprocess", "inference", "postprocess"}


def test_resize_maps_coordinates_back_to_a_non_square_frame(detector):
    frame = SyntheticScene((384, 512), targets=5, seed=4, sigma=(1.6, 2.0), amplitude=(120, 160)).frame(0)
    detections = detector.detect(frame.image)
    match = match_truth(detections.x, detections.y, frame.centers, 1.5)
    assert match.found == 5 and match.false == 0
    assert detections.frame_shape == (384, 512)


def test_sirst_image_gives_the_same_detections_on_every_installed_backend(authors_dir):
    image = read_image(authors_dir.parents[1] / "data" / "sirst" / "images" / "Misc_1.png")
    results = {}
    for name, file in AUTHORS_FILES.items():
        if _installed(name):
            with Detector(authors_dir / file, name, threads=1) as d:
                results[name] = d.detect(image)
    assert len(results) >= 2, f"only {list(results)} installed: nothing to compare"
    reference = results.pop("onnxruntime")
    assert len(reference) == 2  # Misc_1's two targets
    for name, found in results.items():
        assert len(found) == len(reference), name
        np.testing.assert_array_equal(found.size, reference.size, err_msg=name)
        for column in ("x_min", "y_min", "x_max", "y_max"):
            np.testing.assert_array_equal(getattr(found, column), getattr(reference, column), err_msg=name)
        np.testing.assert_allclose(found.weighted_x, reference.weighted_x, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(found.peak_logit, reference.peak_logit, atol=1e-2, err_msg=name)


def test_grey_and_bgr_frames_of_the_same_picture_detect_the_same(detector):
    import cv2

    grey = SyntheticScene((256, 256), targets=3, seed=9).frame(0).image
    a, b = detector.detect(grey), detector.detect(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert len(a) == 3 and np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)


# ---- live settings -----------------------------------------------------------------------------------------------
def test_threshold_and_filter_changed_mid_stream_apply_from_the_next_frame(fastest):
    with Detector(*fastest, threads=1) as d:
        counts, thresholds = [], []
        with contextlib.closing(d.stream("synthetic:256x256,targets=3,frames=9,seed=1")) as results:
            for result in results:
                counts.append(len(result.detections))
                thresholds.append(result.settings.threshold)
                if result.index == 2:
                    d.update(threshold=1e4)  # far above any logit: nothing is a target
                elif result.index == 5:
                    d.update(threshold=0.0, size_min=1000)  # back to 0, but a filter no point target passes
    assert counts[:3] == [3, 3, 3]
    assert counts[3:6] == [0, 0, 0] and thresholds[3:6] == [1e4] * 3
    assert counts[6:] == [0, 0, 0] and thresholds[6:] == [0.0] * 3
    with pytest.raises(InputError):
        d.update(threshold=float("nan"))  # refused, nothing changed


def test_update_from_another_thread_is_seen_by_the_stream(fastest):
    with Detector(*fastest, threads=1) as d:
        changed = threading.Event()
        counts = []
        with contextlib.closing(d.stream("synthetic:256x256,targets=2,frames=0")) as results:
            for result in results:
                counts.append(len(result.detections))
                if len(counts) == 2:
                    threading.Thread(target=lambda: (d.update(threshold=1e4), changed.set())).start()
                    changed.wait()
                if len(counts) == 4:
                    break
    assert counts == [2, 2, 0, 0]


# ---- frame-size policies -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def large_frame():
    """1280x1024 with six 2-4 px targets (sigma 0.7-0.9 px): what a squeeze to 256x256 (5x) loses."""
    return SyntheticScene((1024, 1280), targets=6, seed=3, sigma=(0.7, 0.9), amplitude=(80, 120)).frame(0)


def test_tile_and_native_find_small_targets_that_resize_misses(fastest, dynamic_onnx, large_frame):
    assert large_frame.sizes.max() <= 4
    found = {}
    for policy, (model, backend) in (("resize", fastest), ("tile", fastest), ("native", (dynamic_onnx, None))):
        with Detector(model, backend, threads=1, policy=policy) as d:
            detections = d.detect(large_frame.image)
        assert detections.frame_shape == (1024, 1280)
        found[policy] = match_truth(detections.x, detections.y, large_frame.centers, 1.5).found
    assert found["tile"] == 6 and found["native"] == 6
    assert found["resize"] <= 2


def test_tile_seam_target_is_detected_once(fastest):
    with Detector(*fastest, threads=1, policy="tile") as d:
        columns = _tile_layout(1280, 256, 32)
        seam = float(columns[0][2])  # first column a pixel of the second tile owns: the cut between tiles 0 and 1
        picture = SyntheticScene((1024, 1280), targets=0, seed=5).frame(0).image.astype(np.float32)
        mask = np.zeros(picture.shape, bool)
        add_target(picture, mask, seam - 0.5, 500.0, 1.5, 130.0)  # straddles the cut: pixels on both sides
        add_target(picture, mask, 700.0, 300.0, 1.2, 110.0)
        image = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
        # both overlapping tiles see the seam target: labelling them one by one would report it twice
        for start in (columns[0][0], columns[1][0]):
            crop = d.detect(image[384:640, start:start + 256])
            assert match_truth(crop.x + start, crop.y + 384, [[seam - 0.5, 500.0]], 1.5).found == 1
        detections = d.detect(image)
    assert match_truth(detections.x, detections.y, [[seam - 0.5, 500.0], [700.0, 300.0]], 1.5).found == 2
    assert int((np.hypot(detections.x - (seam - 0.5), detections.y - 500.0) < 8.0).sum()) == 1  # not twice


def test_tile_layout_covers_every_pixel_once_with_the_requested_overlap():
    for length, tile, overlap in ((1280, 256, 32), (1024, 256, 32), (300, 256, 64), (256, 256, 32), (100, 256, 8)):
        layout = _tile_layout(length, tile, overlap)
        owned = np.concatenate([np.arange(lo, hi) for _, lo, hi in layout])
        np.testing.assert_array_equal(owned, np.arange(length))
        for (start, lo, hi), (next_start, _, _) in zip(layout, layout[1:]):
            assert start + tile - next_start >= overlap  # neighbours share at least the overlap
            assert start <= lo and hi <= start + tile  # a tile owns only pixels it holds...
            assert min(hi - 1 - start, start + tile - hi) >= overlap // 2 - 1  # ...away from its inner edge


def test_native_pads_to_the_stride_and_returns_frame_sized_logits(dynamic_onnx):
    frame = SyntheticScene((250, 301), targets=3, seed=6).frame(0)  # neither side a multiple of 8
    with Detector(dynamic_onnx, policy="native", threads=1) as d:
        detections = d.detect(frame.image)
        logits = d.logits(frame.image)
    assert logits.shape == (250, 301) and logits.dtype == np.float32
    assert match_truth(detections.x, detections.y, frame.centers, 1.5).found == 3
    assert int((logits > 0).sum()) == int(detections.size.sum())  # the map labelled is the map returned


def test_native_policy_on_a_fixed_size_artifact_is_refused_with_the_fix(fastest):
    with pytest.raises(InputError, match=r"256x256 \(HxW\) inputs only.*--dynamic.*'tile'.*'resize'"):
        Detector(*fastest, policy="native")
    with pytest.raises(InputError, match="expected one of resize, native, tile"):
        Detector(*fastest, policy="squeeze")


def test_resize_logits_are_upsampled_to_the_frame(detector):
    frame = SyntheticScene((240, 320), targets=3, seed=8, sigma=(1.5, 2.0)).frame(0)
    logits = detector.logits(frame.image)
    assert logits.shape == (240, 320) and logits.dtype == np.float32
    for x, y in frame.centers:
        assert logits[int(round(y)), int(round(x))] > 0


# ---- raw frames --------------------------------------------------------------------------------------------------
def test_sixteen_bit_raw_frames_detect_the_same_targets_as_eight_bit(fastest):
    eight = SyntheticScene((256, 256), targets=4, seed=11).frame(3)
    raw_scene = SyntheticScene((256, 256), targets=4, seed=11, bits=14)
    raw = raw_scene.frame(3)
    with Detector(*fastest, threads=1) as d:
        expected = d.detect(eight.image)
    with Detector(*fastest, threads=1, raw=RawMapping("fixed", *raw_scene.raw_range)) as d:
        fixed = d.detect(raw.image)
    with Detector(*fastest, threads=1) as d:  # the default: per-frame percentile stretch
        stretched = d.detect(raw.image)
    assert len(expected) == 4 and match_truth(expected.x, expected.y, eight.centers).found == 4
    assert len(fixed) == 4 and np.abs(fixed.x - expected.x).max() < 0.25 and np.abs(fixed.y - expected.y).max() < 0.25
    assert match_truth(stretched.x, stretched.y, raw.centers).found == 4 and len(stretched) == 4


def test_a_sixteen_bit_video_detects_what_its_frames_do(fastest, tmp_path):
    from test_sources import write_grey_video

    scene = SyntheticScene((256, 256), targets=4, seed=11, bits=14)
    images = [scene.frame(i).image for i in range(4)]
    with Detector(*fastest, threads=1, raw=RawMapping("fixed", *scene.raw_range)) as d:
        expected = [d.detect(image) for image in images]
        results = list(d.stream(write_grey_video(tmp_path / "raw.mkv", images)))
    assert len(results) == 4 and all(len(e) == 4 for e in expected)
    for result, frame_detections in zip(results, expected):  # FFV1 is lossless: the same targets exactly
        assert result.frame.image.dtype == np.uint16
        assert np.array_equal(result.detections.x, frame_detections.x)
        assert np.array_equal(result.detections.size, frame_detections.size)


def test_unsupported_frames_name_the_frame_and_what_is_accepted(detector):
    # frames the caller hands over share one format: the first unsupported one is an error, not a skip per frame
    with pytest.raises(InputError, match=r"frames, frame 1: .*frame dtype float32 not supported"):
        list(detector.stream([np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.float32)]))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_an_unsupported_image_in_a_folder_is_reported_and_skipped(fastest, tmp_path, caplog, prefetch):
    scene = SyntheticScene((64, 80), targets=1, seed=2)
    assert cv2.imwrite(str(tmp_path / "img_1.png"), scene.frame(0).image)
    assert cv2.imwrite(str(tmp_path / "img_2.png"), np.full((64, 80, 3), 1000, np.uint16))  # 16-bit colour
    assert cv2.imwrite(str(tmp_path / "img_3.png"), scene.frame(1).image)
    source = open_source(tmp_path)
    with Detector(*fastest, threads=1, prefetch=prefetch) as d:
        with caplog.at_level(logging.WARNING, logger="edge_irst.pipeline"):
            results = list(d.stream(source))
    assert [r.index for r in results] == [0, 2] and results[-1].skipped == source.skipped == 1
    assert "img_2.png, frame 1: 16-bit frames must be single-channel raw IR (HxW), got shape (64, 80, 3)" in caplog.text


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_video_streamed_again_goes_on_where_max_frames_stopped(fastest, tmp_path, caplog, prefetch):
    from test_sources import _write_video

    scene = SyntheticScene((64, 80), targets=1, seed=3)
    path = _write_video(tmp_path / "clip.avi", [scene.frame(i).image for i in range(20)], fps=10.0)
    with Detector(*fastest, threads=1, prefetch=prefetch) as d, VideoFileSource(path) as source:
        first = list(d.stream(source, max_frames=5))  # the reader must not have read ahead of frame 4
        with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
            rest = list(d.stream(source))
    assert [r.index for r in first] == list(range(5))
    assert [r.index for r in rest] == list(range(5, 20))
    assert [r.timestamp for r in rest] == pytest.approx([i / 10.0 for i in range(5, 20)], abs=1e-3)
    assert source.skipped == 0 and "truncated" not in caplog.text


# ---- threads, buffering, interruption ----------------------------------------------------------------------------
def test_reader_runs_at_most_prefetch_frames_ahead_of_a_slow_consumer(fastest):
    pulled = []

    def frames():
        scene = SyntheticScene((64, 64), targets=1)
        for i in range(100):
            pulled.append(i)
            yield scene.frame(i).image

    with Detector(*fastest, threads=1, prefetch=2) as d:
        with contextlib.closing(d.stream(IterableSource(frames()))) as results:
            for taken, _ in enumerate(results, start=1):
                time.sleep(0.1)  # a slow consumer: room for the reader to run ahead if it could
                # prefetch queued + one being put by the reader + the one the consumer holds
                assert len(pulled) <= taken + 2 + 1
                if taken == 4:
                    break
    assert len(pulled) < 100


def test_reader_thread_by_default_only_where_a_cpu_is_left_for_it(fastest):
    from edge_irst.pipeline import usable_cpus

    with Detector(*fastest, threads=usable_cpus()) as d:
        assert d.prefetch == 0 and d.describe()["reader_thread"]["used_for"] == "none (in line)"
        assert [r.index for r in d.stream("synthetic:64x64,targets=1,frames=3")] == [0, 1, 2]
    if usable_cpus() > 1:
        with Detector(*fastest, threads=1) as d:
            assert d.prefetch == 2
    with pytest.raises(InputError, match="prefetch"):
        Detector(*fastest, prefetch=-1)


def test_keyboard_interrupt_in_the_source_reaches_the_caller_and_stops_the_reader(fastest):
    def frames():
        scene = SyntheticScene((64, 64), targets=1)
        for i in range(3):
            yield scene.frame(i).image
        raise KeyboardInterrupt

    seen = []
    with Detector(*fastest, threads=1, prefetch=2) as d:
        with pytest.raises(KeyboardInterrupt):
            for result in d.stream(frames()):
                seen.append(result.index)
    assert seen == [0, 1, 2]
    assert not [t for t in threading.enumerate() if t.name.startswith("edge-irst reader")]


def test_max_frames_stops_early_and_closes_what_it_opened(detector):
    results = list(detector.stream("synthetic:64x64,targets=1,frames=0", max_frames=3))
    assert [r.index for r in results] == [0, 1, 2]
    with pytest.raises(InputError, match="max_frames"):
        list(detector.stream("synthetic", max_frames=-1))


def test_live_stream_goes_through_the_latest_frame_path(fastest):
    from test_sources import MjpegServer

    server = MjpegServer(fps=100.0)
    try:
        with Detector(*fastest, threads=1) as d:
            with contextlib.closing(d.stream(server.url)) as results:
                got = []
                for result in results:
                    got.append(result)
                    time.sleep(0.1)
                    if len(got) == 3:
                        break
    finally:
        server.stop()
    assert [r.index for r in got] == sorted({r.index for r in got})
    assert got[-1].dropped > 0 and got[-1].timings.latency > 0


# ---- backend choice and the bundled model -------------------------------------------------------------------------
def test_backend_preference_is_a_table(authors_dir, tmp_path, monkeypatch):
    onnx = authors_dir / "LW_IRST.onnx"
    readers = [n for n in BACKEND_PREFERENCE["cpu"] if _installed(n) and ".onnx" in backend_class(n).suffixes]
    assert preferred_backend(onnx) == readers[0]
    monkeypatch.setitem(BACKEND_PREFERENCE, "cpu", ("onnxruntime", "opencv"))
    assert preferred_backend(onnx) == "onnxruntime"
    entries = [{"format": "onnx", "precision": "fp32", "files": ["LW_IRST.onnx"], "verified": True},
               {"format": "mnn", "precision": "fp32", "files": ["LW_IRST.mnn"], "verified": True}]
    for entry in entries:
        (tmp_path / entry["files"][0]).symlink_to(authors_dir / entry["files"][0])
    (tmp_path / "manifest.json").write_text(json.dumps({"model": "lw_irstnet", "artifacts": entries}))
    monkeypatch.setitem(BACKEND_PREFERENCE, "cpu", ("ncnn", "mnn", "onnxruntime"))
    assert preferred_backend(tmp_path) == ("mnn" if _installed("mnn") else "onnxruntime")  # no ncnn artifact


def test_missing_bundled_model_is_a_clear_error(monkeypatch, tmp_path):
    import edge_irst.assets as assets

    monkeypatch.setattr(assets, "BUNDLED_MODEL", tmp_path / "lw_irstnet")
    with pytest.raises(ModelFileError, match=r"bundled model is missing.*--model PATH"):
        Detector()

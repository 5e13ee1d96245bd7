"""edge_irst.postprocess: both labellers (C extension, OpenCV fallback) against cv2 and against each other, edge
cases, statistics computed by hand, the target filter and its live settings, and the C core under
AddressSanitizer."""
from __future__ import annotations

import ctypes
import json
import math
import os
import pickle
import platform
import shutil
import subprocess
import sys
import threading
import warnings
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_irst.detections import COLUMNS, Detections
from edge_irst.errors import EdgeIrstError, InputError, UnknownNameError
from edge_irst.postprocess import (FILTER_PRESETS, IMPLEMENTATION, LiveSettings, PostprocessSettings, TargetFilter,
                                   available_implementations, implementation_info, label_targets)
from edge_irst.postprocess import labeller as labeller_module

REPO = Path(__file__).resolve().parents[1]
POSTPROCESS = REPO / "edge_irst" / "postprocess"
ASAN_DRIVER = REPO / "tests" / "c" / "labeller_asan.c"
REQUIRE_EXT = os.environ.get("EDGE_IRST_REQUIRE_EXT", "").strip() == "1"
C_BUILT = "c" in available_implementations()

# Every behavioural test runs against both implementations. Where the extension is missing the "c" case skips,
# unless EDGE_IRST_REQUIRE_EXT=1 (CI), where it runs and fails.
IMPLEMENTATIONS = [
    pytest.param("c", marks=pytest.mark.skipif(not C_BUILT and not REQUIRE_EXT, reason=(
        "the C extension is not built here (pip install -e . with a C compiler builds it)"))),
    "opencv",
]
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- maps ---------------------------------------------------------------------------------------------------------
@st.composite
def logit_maps(draw):
    """A float32 map with a random shape (1x1 .. 40x140, widths around the C code's 64-pixel words), density,
    memory layout (contiguous, [::2, ::3] view, transposed view, reversed view) and optional NaN/+-inf pixels."""
    height = draw(st.integers(1, 40))
    width = draw(st.one_of(st.integers(1, 140), st.sampled_from([1, 63, 64, 65, 128, 129])))
    if draw(st.integers(0, 9)) == 0:
        height = 1
    density = draw(st.sampled_from([0.0, 0.03, 0.15, 0.5, 0.85, 1.0]))
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed", "reversed"]))
    specials = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def fill(shape):
        values = np.where(rng.random(shape) < density, rng.uniform(0.01, 20.0, shape), rng.uniform(-20.0, 0.0, shape))
        if specials:
            pick = rng.random(shape)
            values[pick < 0.03] = np.nan
            values[(pick >= 0.03) & (pick < 0.05)] = np.inf
            values[(pick >= 0.05) & (pick < 0.07)] = -np.inf
        return values.astype(np.float32)

    if layout == "strided":
        return fill((2 * height, 3 * width))[::2, ::3]
    if layout == "transposed":
        return fill((width, height)).T
    if layout == "reversed":
        return fill((height, width))[::-1, ::-1]
    return fill((height, width))


def assert_matches_opencv(logits: np.ndarray, threshold: float, detections: Detections, labels: np.ndarray):
    """Same components as cv2.connectedComponentsWithStats(connectivity=8), matched through their pixel sets."""
    mask = logits > np.float32(threshold)
    assert np.array_equal(labels > 0, mask), "foreground differs from logits > threshold"
    count, cv_labels, stats, centroids = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask).view(np.uint8), connectivity=8)
    assert len(detections) == count - 1
    assert np.array_equal(detections.label, np.arange(1, count))
    if count == 1:
        return
    pairs = np.unique(np.stack([labels[mask], cv_labels[mask]]), axis=1)  # (ours, cv2) label pairs
    assert pairs.shape[1] == count - 1, "a target of ours spans several cv2 components, or the reverse"
    cv_of = np.zeros(count, np.int64)
    cv_of[pairs[0]] = pairs[1]
    matched = cv_of[detections.label]
    assert np.array_equal(detections.size, stats[matched, cv2.CC_STAT_AREA])
    assert np.array_equal(detections.x_min, stats[matched, cv2.CC_STAT_LEFT])
    assert np.array_equal(detections.y_min, stats[matched, cv2.CC_STAT_TOP])
    assert np.array_equal(detections.x_max - detections.x_min + 1, stats[matched, cv2.CC_STAT_WIDTH])
    assert np.array_equal(detections.y_max - detections.y_min + 1, stats[matched, cv2.CC_STAT_HEIGHT])
    np.testing.assert_allclose(detections.x, centroids[matched, 0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(detections.y, centroids[matched, 1], rtol=0, atol=1e-9)
    # Documented order: by first pixel in raster order.
    _, first_pixel = np.unique(labels.ravel(), return_index=True)
    assert np.all(np.diff(first_pixel[1:]) > 0)


def assert_identical(a: Detections, b: Detections):
    for name in COLUMNS:
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), f"column {name} differs"


# -- against OpenCV and each other --------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@PROPERTY_SETTINGS
@given(logits=logit_maps(), threshold=st.sampled_from([0.0, 0.0, 2.5, -1.0]))
def test_components_match_opencv(implementation, logits, threshold):
    detections, labels = label_targets(logits, threshold, return_labels=True, implementation=implementation)
    assert_matches_opencv(logits, threshold, detections, labels)


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here: nothing to compare the fallback with")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=logit_maps(), threshold=st.sampled_from([0.0, 0.0, 2.5, -1.0]))
def test_c_and_opencv_fallback_agree_bit_for_bit(logits, threshold):
    c_detections, c_labels = label_targets(logits, threshold, return_labels=True, implementation="c")
    cv_detections, cv_labels = label_targets(logits, threshold, return_labels=True, implementation="opencv")
    assert np.array_equal(c_labels, cv_labels)
    assert_identical(c_detections, cv_detections)


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here: its row bands cannot be tested")
@PROPERTY_SETTINGS
@given(logits=logit_maps(), threads=st.integers(2, 16), threshold=st.sampled_from([0.0, 2.5]))
def test_row_bands_on_threads_give_the_one_thread_result_bit_for_bit(logits, threads, threshold):
    one, one_labels = label_targets(logits, threshold, return_labels=True, implementation="c")
    banded, banded_labels = label_targets(logits, threshold, return_labels=True, implementation="c",
                                          threads=threads)
    assert np.array_equal(one_labels, banded_labels)
    assert_identical(one, banded)


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here: its row bands cannot be tested")
@pytest.mark.parametrize("kind", ["checkerboard", "diagonal", "column", "noise"])
def test_targets_crossing_every_band_seam_stay_whole(kind):
    """Large maps whose components cross the seams of 2..16 bands in every way: a checkerboard (diagonal-only
    contacts at each seam), one diagonal line, one column, and dense noise."""
    shape = (331, 257)
    rng = np.random.default_rng(11)
    if kind == "checkerboard":
        on = np.indices(shape).sum(axis=0) % 2 == 0
    elif kind == "diagonal":
        on = np.eye(*shape, dtype=bool)
    elif kind == "column":
        on = np.zeros(shape, bool)
        on[:, 200] = True
    else:
        on = rng.random(shape) < 0.45
    logits = np.where(on, rng.uniform(0.5, 9.0, shape), -5.0).astype(np.float32)
    reference, reference_labels = label_targets(logits, return_labels=True, implementation="opencv")
    if kind != "noise":
        assert len(reference) == 1
    for threads in (2, 3, 7, 16, "auto"):
        banded, labels = label_targets(logits, return_labels=True, implementation="c", threads=threads)
        assert np.array_equal(labels, reference_labels), threads
        assert_identical(banded, reference)


@pytest.mark.parametrize("threads", [0, 17, -1, 2.0, True, "all", None])
def test_rejected_thread_counts(threads):
    with pytest.raises(InputError, match=r"threads = .*expected an integer 1\.\.16 or 'auto'"):
        label_targets(np.zeros((4, 4), np.float32), threads=threads)


def test_auto_threads_use_one_band_per_auto_pixels_and_no_more_than_the_cpus(monkeypatch):
    monkeypatch.setattr(labeller_module, "_USABLE_CPUS", 4)
    per_thread = labeller_module.AUTO_PIXELS_PER_THREAD
    # The measured break-even (see AUTO_PIXELS_PER_THREAD): 256x256 stays on one band, 640x512 takes two.
    assert labeller_module._checked_threads("auto", 256 * 256) == 1
    assert labeller_module._checked_threads("auto", 640 * 512) == 2
    assert labeller_module._checked_threads("auto", 2 * per_thread) == 2
    assert labeller_module._checked_threads("auto", 1920 * 1080 * 4) == 4


def _foreground_runs(logits: np.ndarray, threshold: float = 0.0) -> int:
    """Maximal horizontal stretches of pixels > threshold, counted with numpy."""
    on = logits > threshold
    return int(on[:, 0].sum() + (on[:, 1:] & ~on[:, :-1]).sum())


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here")
def test_last_run_count_is_the_foreground_runs_of_the_last_call():
    from edge_irst.postprocess import _labeller

    workspace = _labeller.new_workspace()
    assert _labeller.last_run_count(workspace) == -1
    rng = np.random.default_rng(11)
    for shape, fraction, bands in [((64, 200), 0.3, 1), ((300, 130), 0.05, 3), ((40, 64), 0.0, 2)]:
        logits = np.where(rng.random(shape) < fraction, 1.0, -1.0).astype(np.float32)
        _labeller.label(logits, 0.0, None, workspace, None, bands)
        assert _labeller.last_run_count(workspace) == _foreground_runs(logits), (shape, bands)


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here")
def test_the_binding_checks_its_arguments_one_by_one():
    from edge_irst.postprocess import _labeller

    workspace = _labeller.new_workspace()
    logits = np.where(np.random.default_rng(5).random((40, 70)) < 0.2, 1.0, -1.0).astype(np.float32)
    with pytest.raises(TypeError, match="takes 6 arguments"):
        _labeller.label(logits, 0.0, None, workspace, None)
    with pytest.raises(TypeError):
        _labeller.label(logits, "0.0", None, workspace, None, 1)
    with pytest.raises(TypeError):
        _labeller.label(logits, 0.0, None, workspace, None, 1.0)
    for too_large in (2**40, 2**70):  # beyond a C int (as PyArg's "i" refused), beyond a C long
        with pytest.raises(OverflowError):
            _labeller.label(logits, 0.0, None, workspace, None, too_large)
    one_band = _labeller.label(logits, 0.0, None, workspace, None, 1)
    assert one_band  # 20 % foreground: targets found
    assert _labeller.label(logits, np.float32(0.0), None, workspace, None, np.int64(1)) == one_band
    for threads in (0, -5, 10**6):  # clipped to 1..16, which does not change the result
        assert _labeller.label(logits, 0.0, None, workspace, None, threads) == one_band, threads
    assert _labeller.label(logits, 0.5, None, workspace, None, 1) == one_band  # same map at 1.0 / -1.0
    assert _labeller.label(logits, 1.0, None, workspace, None, 1) == b""  # nothing above 1.0


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here")
def test_the_workspace_is_free_again_only_once_the_records_are_copied_out():
    """Releasing the map's buffer at the end of label() can run Python code: here the last reference to the
    exporter goes, and its __del__ labels a map of more targets with the same workspace, which moves its slots.
    The records must be copied out before that; before, the result was read from the moved slots."""
    from edge_irst.postprocess import _labeller

    workspace = _labeller.new_workspace()
    isolated = np.full((1200, 1200), -1.0, np.float32)
    isolated[::2, ::2] = 1.0  # 360,000 one-pixel targets: more slots than the outer call's map needs
    inner = []

    class Exporter(np.ndarray):
        def __del__(self):
            inner.append(len(_labeller.label(isolated, 0.0, None, workspace, None, 1)))

    logits = np.where(np.random.default_rng(3).random((2500, 2500)) < 0.5, 1.0, -1.0).astype(np.float32)
    expected = _labeller.label(logits, 0.0, None, workspace, None, 1)
    buffer = pickle.PickleBuffer(logits.view(Exporter))  # the view's exporter: an Exporter only this holds
    # Released while label() runs without the GIL (it takes a few hundred ms on this map): from then on only the
    # binding's Py_buffer keeps the Exporter alive, and it goes when the binding releases that buffer.
    releaser = threading.Timer(0.02, buffer.release)
    releaser.start()
    try:
        got = _labeller.label(buffer, 0.0, None, workspace, None, 1)
    finally:
        releaser.join()
    assert inner, "the exporter outlived the call: the test did not exercise the release"
    assert got == expected


@pytest.mark.skipif(not C_BUILT or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="needs the C extension and glibc's mallinfo2 (to see the heap in use)")
def test_buffers_of_bands_a_call_does_not_use_are_given_back():
    from edge_irst.postprocess import _labeller

    libc = ctypes.CDLL(None)

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2

    def heap_mib() -> float:
        info = libc.mallinfo2()
        return (info.uordblks + info.hblkhd) / 2**20

    workspace = _labeller.new_workspace()
    checkerboard = np.where(np.indices((2048, 2048)).sum(axis=0) % 2 == 0, 1.0, -1.0).astype(np.float32)
    wide_row = np.full((1, 1 << 24), -1.0, np.float32)  # its row bits alone take 2 MiB
    small = np.zeros((8, 8), np.float32)
    for many, bands, grows_by in ((checkerboard, 4, 20.0), (wide_row, 1, 1.5)):  # 2M runs in 4 bands; row bits
        before = heap_mib()
        _labeller.label(many, 0.0, None, workspace, None, bands)
        grown = heap_mib() - before
        _labeller.label(small, 0.0, None, workspace, None, 1)  # one band, a few bytes: the rest goes back
        kept = heap_mib() - before
        assert grown > grows_by and kept < 0.5, (many.shape, grown, kept)


@pytest.mark.skipif(not C_BUILT, reason="the C extension is not built here")
def test_auto_keeps_one_band_after_a_sparse_frame_on_the_same_thread():
    """threads="auto" on a large map: the pixel rule on a thread's first call, one band after a sparse frame
    (fewer than AUTO_RUNS_FOR_BANDS runs), the pixel rule again after a dense one; results identical."""
    c_labeller = labeller_module._AVAILABLE["c"]
    rng = np.random.default_rng(12)
    sparse = np.full((1080, 1920), -4.0, np.float32)
    sparse[500:503, 700:704] = 3.0
    dense = np.where(rng.random((1080, 1920)) < 0.05, 2.0, -2.0).astype(np.float32)
    assert _foreground_runs(dense) >= labeller_module.AUTO_RUNS_FOR_BANDS > _foreground_runs(sparse)
    seen = []

    def stream():  # a thread of its own: a fresh workspace
        seen.append(c_labeller.auto_bands(2))
        for frame in (sparse, dense):
            assert_identical(label_targets(frame, threads="auto"), label_targets(frame, threads=1))
            label_targets(frame, threads="auto")
            seen.append(c_labeller.auto_bands(2))
        seen.append(c_labeller.auto_bands(1))

    worker = threading.Thread(target=stream)
    worker.start()
    worker.join()
    assert seen == [2, 1, 2, 1]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_views_give_the_results_of_their_contiguous_copy(implementation):
    base = np.random.default_rng(3).normal(-1.0, 1.5, (90, 150)).astype(np.float32)
    for view in (base[::2, ::3], base.T, base[::-1], base[:, ::-1], base[5:50, 70:140], base[::-3, 1::2]):
        d_view, l_view = label_targets(view, return_labels=True, implementation=implementation)
        d_copy, l_copy = label_targets(np.ascontiguousarray(view), return_labels=True, implementation=implementation)
        assert np.array_equal(l_view, l_copy)
        assert_identical(d_view, d_copy)


# -- edge cases ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_empty_map_and_threshold_above_everything(implementation):
    logits = np.random.default_rng(0).normal(0.0, 1.0, (17, 70)).astype(np.float32)
    for detections, labels in (label_targets(np.full((5, 7), -3.0, np.float32), return_labels=True,
                                             implementation=implementation),
                               label_targets(logits, float(logits.max()), return_labels=True,
                                             implementation=implementation)):
        assert len(detections) == 0
        assert not labels.any()
        assert detections.size.dtype == np.int64 and detections.x.dtype == np.float64


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 200), (130, 1), (3, 64), (64, 3), (37, 129)])
def test_all_on_is_one_target_covering_the_map(implementation, shape):
    logits = np.ones(shape, np.float32)
    detections, labels = label_targets(logits, return_labels=True, implementation=implementation)
    height, width = shape
    assert len(detections) == 1 and (labels == 1).all()
    assert detections.size[0] == height * width
    assert (detections.x_min[0], detections.y_min[0], detections.x_max[0], detections.y_max[0]) == \
           (0, 0, width - 1, height - 1)
    assert detections.x[0] == (width - 1) / 2 and detections.y[0] == (height - 1) / 2
    assert detections.aspect_ratio[0] == width / height


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_targets_touching_every_border(implementation):
    logits = np.full((6, 70), -1.0, np.float32)
    logits[0, 0] = logits[0, 69] = logits[5, 0] = logits[5, 69] = 1.0  # the four corners, apart
    logits[2:4, 0] = 1.0  # left edge
    logits[2, 69] = 1.0  # right edge
    detections = label_targets(logits, implementation=implementation)
    boxes = np.stack([detections.x_min, detections.y_min, detections.x_max, detections.y_max], axis=1)
    assert boxes.tolist() == [[0, 0, 0, 0], [69, 0, 69, 0], [0, 2, 0, 3], [69, 2, 69, 2], [0, 5, 0, 5],
                              [69, 5, 69, 5]]

    ring = np.full((9, 66), -1.0, np.float32)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = 2.0
    detections = label_targets(ring, implementation=implementation)
    assert len(detections) == 1 and detections.size[0] == 2 * 66 + 2 * 7


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_diagonal_neighbours_join_and_gaps_do_not(implementation):
    def count(points, shape=(4, 130)):
        logits = np.full(shape, -1.0, np.float32)
        for y, x in points:
            logits[y, x] = 1.0
        return len(label_targets(logits, implementation=implementation))

    assert count([(0, 0), (1, 1)]) == 1  # two targets under 4-connectivity, one under 8
    assert count([(0, 1), (1, 0)]) == 1  # the other diagonal
    assert count([(0, 63), (1, 64)]) == 1  # across the C scan's 64-pixel word boundary
    assert count([(1, 64), (0, 63), (2, 65), (3, 66)]) == 1
    assert count([(0, 0), (0, 2)]) == 2
    assert count([(0, 0), (2, 0)]) == 2
    assert count([(0, 0), (2, 2)]) == 2


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_targets_are_numbered_by_their_first_raster_pixel(implementation):
    logits = np.full((5, 9), -1.0, np.float32)
    logits[0:4, 0] = logits[0:4, 4] = logits[3, 0:5] = 1.0  # a U: two arms that only meet on row 3
    logits[0, 2] = 1.0  # between the arms, first seen after the U's first pixel
    logits[1, 8] = logits[4, 7] = 1.0
    detections, labels = label_targets(logits, return_labels=True, implementation=implementation)
    assert detections.size.tolist() == [11, 1, 1, 1]
    assert (detections.x_min.tolist(), detections.y_min.tolist()) == ([0, 2, 8, 7], [0, 0, 1, 4])
    assert labels[0, 4] == labels[0, 0] == 1 and labels[0, 2] == 2


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nan_is_never_a_target_and_infinities_follow_their_sign(implementation):
    logits = np.full((3, 8), -1.0, np.float32)
    logits[1, 1] = np.nan
    logits[1, 2] = np.inf
    logits[1, 3] = np.nan  # does not bridge 1,2 and 1,4
    logits[1, 4] = 2.0
    logits[1, 6] = -np.inf
    detections, labels = label_targets(logits, return_labels=True, implementation=implementation)
    assert len(detections) == 2
    assert labels[1, 1] == labels[1, 3] == labels[1, 6] == 0
    assert detections.peak_logit.tolist() == [np.inf, 2.0]
    assert detections.mean_logit[0] == np.inf
    # Not even with a threshold below everything: NaN compares false.
    assert label_targets(logits, -3e38, return_labels=True, implementation=implementation)[1][1, 1] == 0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_pixel_equal_to_the_threshold_is_background(implementation):
    logits = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert label_targets(logits, 0.5, implementation=implementation).size.tolist() == [1]
    assert label_targets(logits, 0.0, implementation=implementation).size.tolist() == [2]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_huge_values(implementation):
    logits = np.full((2, 3), -3.4e38, np.float32)
    logits[0, :2] = 3.4e38
    detections = label_targets(logits, -3.0e38, implementation=implementation)
    assert detections.size.tolist() == [2]
    assert np.isfinite(detections.weighted_x).all() and detections.weighted_x[0] == pytest.approx(0.5)
    assert detections.mean_logit[0] == pytest.approx(3.4e38, rel=1e-6)


# -- statistics by hand -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_statistics_of_a_crafted_target(implementation):
    logits = np.full((6, 7), -5.0, np.float32)
    logits[2, 3], logits[2, 4], logits[3, 4] = 1.0, 3.0, 2.0
    d = label_targets(logits, implementation=implementation)
    assert len(d) == 1 and d.size[0] == 3
    assert (d.x_min[0], d.y_min[0], d.x_max[0], d.y_max[0], d.aspect_ratio[0]) == (3, 2, 4, 3, 1.0)
    assert d.x[0] == pytest.approx((3 + 4 + 4) / 3) and d.y[0] == pytest.approx((2 + 2 + 3) / 3)
    # weights = logit - threshold = 1, 3, 2
    assert d.weighted_x[0] == pytest.approx((3 * 1 + 4 * 3 + 4 * 2) / 6)
    assert d.weighted_y[0] == pytest.approx((2 * 1 + 2 * 3 + 3 * 2) / 6)
    assert (d.peak_logit[0], d.peak_x[0], d.peak_y[0]) == (3.0, 4, 2)
    assert d.mean_logit[0] == pytest.approx(2.0)
    # threshold 0.5: weights 0.5, 2.5, 1.5 (the threshold moves the weights, not the plain centroid)
    d = label_targets(logits, 0.5, implementation=implementation)
    assert d.weighted_x[0] == pytest.approx((3 * 0.5 + 4 * 2.5 + 4 * 1.5) / 4.5)
    assert d.x[0] == pytest.approx(11 / 3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_peak_ties_take_the_first_raster_pixel(implementation):
    logits = np.full((4, 4), -1.0, np.float32)
    logits[1, 2] = logits[2, 0] = logits[2, 1] = 7.0
    logits[1, 1] = 2.0
    d = label_targets(logits, implementation=implementation)
    assert (d.peak_x[0], d.peak_y[0]) == (2, 1)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("first, second", [(-0.0, 0.0), (0.0, -0.0)])
def test_the_peak_value_is_the_first_tied_pixel_signed_zero_included(implementation, first, second):
    # -0.0 == 0.0: a tie, so the peak is the first pixel, and its value keeps that pixel's sign
    for logits in (np.array([[first, second]], np.float32), np.array([[first], [second]], np.float32)):
        d = label_targets(logits, -1.0, implementation=implementation)
        assert (d.peak_x[0], d.peak_y[0]) == (0, 0)
        assert math.copysign(1.0, d.peak_logit[0]) == math.copysign(1.0, first)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_infinite_logits_weight_the_centroid_alone(implementation):
    logits = np.full((3, 6), -1.0, np.float32)
    logits[1, 0:5] = [5.0, np.inf, 1.0, np.inf, 9.0]
    d = label_targets(logits, implementation=implementation)
    assert d.weighted_x[0] == 2.0 and d.weighted_y[0] == 1.0  # mean of the two +inf pixels (x = 1 and 3)
    assert d.x[0] == 2.0 and d.peak_logit[0] == np.inf and d.peak_x[0] == 1


# -- input validation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.float64), "astype"),
    (np.zeros((4, 4), np.int32), "float32"),
    (np.zeros((4, 4), ">f4"), "native float32"),
    (np.zeros((1, 4, 4), np.float32), "2-D"),
    (np.zeros((1, 1, 4, 4), np.float32), r"out\[i, 0\]"),
    (np.zeros(16, np.float32), "2-D"),
    (np.zeros((0, 4), np.float32), "at least one pixel"),
    ([[0.0, 1.0]], "numpy float32 array"),
    # A view over one value (no memory behind it) with more pixels than the labeller's int32 indices reach.
    (np.broadcast_to(np.float32(-1.0), (2**16, 2**15 + 1)), "more than the 2147483647 supported; label in tiles"),
])
def test_rejected_maps_say_what_is_accepted(bad, message):
    with pytest.raises(InputError, match=message):
        label_targets(bad)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), 1e39, True, "0.5", None])
def test_rejected_thresholds(threshold):
    with pytest.raises(InputError, match="threshold"):
        label_targets(np.zeros((2, 2), np.float32), threshold)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_read_only_and_misaligned_maps_are_accepted(implementation):
    logits = np.full((3, 5), -1.0, np.float32)
    logits[1, 1:3] = 1.0
    logits.flags.writeable = False
    assert label_targets(logits, implementation=implementation).size.tolist() == [2]
    raw = np.zeros(logits.nbytes + 1, np.uint8)
    raw[1:] = np.frombuffer(logits.tobytes(), np.uint8)
    misaligned = np.frombuffer(raw.data, np.float32, offset=1).reshape(3, 5)
    assert not misaligned.flags.aligned
    assert label_targets(misaligned, implementation=implementation).size.tolist() == [2]


def test_metadata_is_carried_and_the_frame_shape_defaults_to_the_map():
    logits = np.full((4, 6), -1.0, np.float32)
    assert label_targets(logits).frame_shape == (4, 6)
    d = label_targets(logits, frame_index=7, timestamp=1.5, frame_shape=(480, 640, 3))
    assert (d.frame_index, d.timestamp, d.frame_shape) == (7, 1.5, (480, 640, 3))


# -- implementation selection -------------------------------------------------------------------------------------
def test_active_implementation_is_reported():
    info = implementation_info()
    assert info["implementation"] == IMPLEMENTATION in ("c", "opencv")
    assert "opencv" in info["available"] and info["detail"]
    if REQUIRE_EXT:
        assert C_BUILT, f"EDGE_IRST_REQUIRE_EXT=1 but the C labeller is unavailable: {info['detail']}"
    if IMPLEMENTATION == "c":
        assert info["scan"] in _expected_scans() and info["scan"] in info["detail"]
    else:
        assert info["scan"] is None


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith(("flags", "Features"))
            for flag in line.split(":", 1)[1].split()}


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def _expected_scans() -> tuple:
    """The scans the C labeller may pick on this CPU, best first (one, where /proc/cpuinfo tells)."""
    machine, flags = platform.machine().lower(), _cpu_flags()
    if _X86:
        if not flags:
            return ("avx512", "avx2", "sse2")
        return ("avx512",) if "avx512f" in flags else ("avx2",) if "avx2" in flags else ("sse2",)
    return ("neon",) if machine in ("aarch64", "arm64") else ("portable",)


def test_environment_variable_chooses_and_missing_extension_falls_back(monkeypatch):
    monkeypatch.setattr(labeller_module, "_load_c_labeller", lambda: (None, "the C extension is not built (test)"))
    monkeypatch.setenv("EDGE_IRST_POSTPROCESS", "auto")
    with pytest.warns(RuntimeWarning, match="OpenCV fallback"):
        assert labeller_module._select()[0] == "opencv"
    monkeypatch.setenv("EDGE_IRST_POSTPROCESS", "c")
    with pytest.raises(EdgeIrstError, match="EDGE_IRST_POSTPROCESS=c but the C extension is not built"):
        labeller_module._select()
    monkeypatch.setenv("EDGE_IRST_POSTPROCESS", "opencv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # forcing the fallback is a choice, not worth a warning
        assert labeller_module._select()[0] == "opencv"
    monkeypatch.setenv("EDGE_IRST_POSTPROCESS", "cuda")
    with pytest.raises(InputError, match="auto, c, opencv"):
        labeller_module._select()
    with pytest.raises(InputError, match="not available"):
        label_targets(np.zeros((2, 2), np.float32), implementation="cuda")


# -- target filter ------------------------------------------------------------------------------------------------
def _detections_with(sizes, ratios) -> Detections:
    n = len(sizes)
    zeros = np.zeros(n)
    return Detections(x=zeros, y=zeros, weighted_x=zeros, weighted_y=zeros, x_min=zeros, y_min=zeros, x_max=zeros,
                      y_max=zeros, size=np.array(sizes), aspect_ratio=np.array(ratios, float), peak_logit=zeros,
                      peak_x=zeros, peak_y=zeros, mean_logit=zeros, label=np.arange(1, n + 1))


def test_authors_preset_is_exclusive_and_inclusive_keeps_the_boundaries():
    d = _detections_with([5, 6, 99, 100, 50, 50, 50, 50], [1, 1, 1, 1, 0.2, 0.21, 4.99, 5.0])
    authors = TargetFilter.preset("authors")
    assert (authors.size_min, authors.size_max, authors.ratio_min, authors.ratio_max, authors.inclusive) == \
           (5, 100, 0.2, 5.0, False)
    assert authors(d).label.tolist() == [2, 3, 6, 7]
    inclusive = TargetFilter(5, 100, 0.2, 5.0, inclusive=True)
    assert inclusive(d).label.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    # a real 1x5 box has ratio exactly 0.2: rejected by the exclusive bound, kept by the inclusive one
    logits = np.full((7, 3), -1.0, np.float32)
    logits[1:6, 1] = 1.0
    column = label_targets(logits)
    assert column.aspect_ratio[0] == 0.2
    assert len(TargetFilter(ratio_min=0.2)(column)) == 0
    assert len(TargetFilter(ratio_min=0.2, inclusive=True)(column)) == 1


def test_none_preset_and_one_sided_bounds():
    d = _detections_with([1, 10, 1000], [0.1, 1, 10])
    assert TargetFilter.preset("none")(d) is d and FILTER_PRESETS["none"] == TargetFilter()
    assert TargetFilter(size_min=5)(d).size.tolist() == [10, 1000]
    assert TargetFilter(ratio_max=1, inclusive=True)(d).size.tolist() == [1, 10]
    assert TargetFilter(size_max=10).keep(d).tolist() == [True, False, False]


def test_filter_as_plain_values_and_one_line():
    authors = TargetFilter.preset("authors")
    assert authors.to_dict() == {"size_min": 5, "size_max": 100, "ratio_min": 0.2, "ratio_max": 5,
                                 "inclusive": False}
    assert TargetFilter(**authors.to_dict()) == authors
    assert authors.describe() == "size_min 5, size_max 100, ratio_min 0.2, ratio_max 5 (strict)"
    assert TargetFilter(size_max=7.5, inclusive=True).describe() == "size_max 7.5 (inclusive)"
    assert TargetFilter(inclusive=True).describe() == "none"


def test_filter_bounds_become_plain_numbers_that_the_c_labeller_compares_alike():
    numpy_bounds = TargetFilter(size_min=np.int64(5), ratio_max=np.float32(2.5), inclusive=np.bool_(True))
    plain = numpy_bounds.to_dict()
    assert json.loads(json.dumps(plain)) == {"size_min": 5, "size_max": None, "ratio_min": None, "ratio_max": 2.5,
                                             "inclusive": True}
    assert [type(v) for v in plain.values()] == [int, type(None), type(None), float, bool]
    # aspect ratios 5, 0.2, 1 and 1: a Fraction bound of exactly 1/5 is its float, 0.2 > 1/5, in every labeller
    logits = np.full((12, 12), -1.0, np.float32)
    logits[0, 0:5] = logits[2:7, 7] = logits[8, 0] = logits[10:12, 10:12] = 1.0
    fraction = TargetFilter(ratio_min=Fraction(1, 5))
    assert fraction.ratio_min == 0.2
    kept = [label_targets(logits, target_filter=fraction, implementation=name).label.tolist()
            for name in available_implementations()] + [fraction(label_targets(logits)).label.tolist()]
    assert kept == [[1, 3, 4]] * len(kept)


@pytest.mark.parametrize("arguments, message", [
    ({"size_min": 10, "size_max": 5}, "size_min = 10 > size_max = 5"),
    ({"ratio_min": 3.0, "ratio_max": 2.0}, "ratio_min <= ratio_max"),
    ({"size_min": -1}, ">= 0"),
    ({"ratio_min": 0.0}, "> 0"),
    ({"ratio_max": float("nan")}, "finite"),
    ({"size_max": True}, "finite number"),
    ({"inclusive": "yes"}, "inclusive"),
])
def test_filter_validation(arguments, message):
    with pytest.raises(InputError, match=message):
        TargetFilter(**arguments)


def test_unknown_preset_suggests_the_close_one():
    with pytest.raises(UnknownNameError, match="authors"):
        TargetFilter.preset("author")


@st.composite
def target_filters(draw):
    sizes = st.sampled_from([None, 0, 1, 2, 3, 5, 8, 100])
    ratios = st.sampled_from([None, 0.2, 0.5, 1.0, 2.0, 5.0])
    low_size, high_size = sorted([draw(sizes) or 0, draw(sizes) or 10**6])
    low_ratio, high_ratio = sorted([draw(ratios) or 0.01, draw(ratios) or 100.0])
    return TargetFilter(low_size, high_size, low_ratio, high_ratio, inclusive=draw(st.booleans()))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@PROPERTY_SETTINGS
@given(logits=logit_maps(), target_filter=target_filters())
def test_filter_inside_the_labeller_equals_filtering_afterwards(implementation, logits, target_filter):
    inside, labels = label_targets(logits, return_labels=True, target_filter=target_filter,
                                   implementation=implementation)
    everything, all_labels = label_targets(logits, return_labels=True, implementation=implementation)
    assert np.array_equal(labels, all_labels), "the label image shows every target, filtered or not"
    assert_identical(inside, target_filter(everything))


def test_postprocess_settings_apply_threshold_then_filter():
    logits = np.full((8, 8), -1.0, np.float32)
    logits[1, 1:4] = 0.5  # 3 pixels
    logits[4:7, 4:7] = 2.0  # 9 pixels
    postprocess = PostprocessSettings(threshold=0.0, target_filter=TargetFilter(size_min=5))
    assert postprocess.apply(logits).size.tolist() == [9]
    kept, labels = postprocess.apply(logits, return_labels=True, frame_index=3)
    assert kept.label.tolist() == [2] and labels.max() == 2 and kept.frame_index == 3
    assert PostprocessSettings(target_filter="authors").target_filter == FILTER_PRESETS["authors"]
    with pytest.raises(InputError, match="threshold"):
        PostprocessSettings(threshold=float("nan"))


def test_live_update_from_another_thread_is_used_by_the_next_call():
    logits = np.full((8, 8), -1.0, np.float32)
    logits[1, 1:4] = 0.5
    logits[4:7, 4:7] = 2.0
    live = LiveSettings()
    assert live.snapshot().apply(logits).size.tolist() == [3, 9]
    updater = threading.Thread(target=live.update, kwargs={"threshold": 1.0, "size_max": 20})
    updater.start()
    updater.join()
    current = live.snapshot()
    assert current.threshold == 1.0 and current.target_filter.size_max == 20
    assert current.apply(logits).size.tolist() == [9]
    live.update(target_filter="authors", inclusive=True)  # preset first, then the single bound
    assert live.snapshot().target_filter == TargetFilter(5, 100, 0.2, 5.0, inclusive=True)


def test_live_settings_never_expose_a_half_applied_update():
    first = PostprocessSettings(threshold=0.0, target_filter=TargetFilter(size_min=1, size_max=2))
    second = PostprocessSettings(threshold=3.0, target_filter=TargetFilter(size_min=30, size_max=40))
    live = LiveSettings(first)
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            for target in (second, first):
                live.update(threshold=target.threshold, size_min=target.target_filter.size_min,
                            size_max=target.target_filter.size_max)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        seen = {(s.threshold, s.target_filter.size_min, s.target_filter.size_max)
                for s in (live.snapshot() for _ in range(3000))}
    finally:
        stop.set()
        flipper.join()
    assert seen <= {(0.0, 1, 2), (3.0, 30, 40)}


def test_invalid_live_update_raises_and_changes_nothing():
    live = LiveSettings(PostprocessSettings(threshold=0.5))
    before = live.snapshot()
    with pytest.raises(InputError, match="size_min = 9 > size_max = 3"):
        live.update(threshold=2.0, size_min=9, size_max=3)
    with pytest.raises(InputError, match="unknown setting.*thresold"):
        live.update(thresold=1.0)
    assert live.snapshot() is before


# -- the C core under AddressSanitizer ----------------------------------------------------------------------------
def _c_compiler():
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _build(compiler, sources, output, flags):
    return subprocess.run([compiler, "-std=c99", "-pthread", *flags, "-I", str(POSTPROCESS), *map(str, sources),
                           "-o", str(output), "-lm"], capture_output=True, text=True)


@pytest.mark.parametrize("scan, sanitizer", [("simd", "address,undefined"), ("avx2", "address,undefined"),
                                              ("sse2", "address,undefined"), ("portable", "address,undefined"),
                                              ("simd", "thread")])
def test_c_core_under_sanitizers_matches_a_flood_fill(tmp_path, scan, sanitizer):
    """simd: the scan this CPU gets (AVX-512 or AVX2 where it has them); avx2: with AVX-512 compiled out; sse2:
    the x86 baseline; portable: plain C. The driver says which scan ran, so a test meant for one scan cannot pass
    on another. It labels with 1-5 row bands on threads: ThreadSanitizer checks that they share nothing they
    write."""
    if scan in ("avx2", "sse2") and not _X86:
        pytest.skip(f"the {scan} scan exists on x86 only")
    if scan == "avx2" and _expected_scans()[0] not in ("avx512", "avx2"):
        pytest.skip("this CPU has no AVX2")
    compiler = _c_compiler()
    if compiler is None:
        pytest.skip("no C compiler (cc, gcc, clang or $CC) to build the sanitizer driver")
    flags = ["-g", "-O1", "-fno-omit-frame-pointer", f"-fsanitize={sanitizer}", "-fno-sanitize-recover=all",
             "-Wall", "-Wextra", *{"simd": [], "avx2": ["-DIRST_NO_AVX512"], "sse2": ["-DIRST_NO_AVX2"],
                                   "portable": ["-DIRST_PORTABLE"]}[scan]]
    driver = tmp_path / "labeller_sanitized"
    build = _build(compiler, [ASAN_DRIVER, POSTPROCESS / "labeller_core.c"], driver, flags)
    if build.returncode != 0:
        probe = tmp_path / "probe.c"
        probe.write_text("int main(void) { return 0; }\n")
        if _build(compiler, [probe], tmp_path / "probe", [f"-fsanitize={sanitizer}"]).returncode != 0:
            pytest.skip(f"{compiler} cannot link -fsanitize={sanitizer} programs here (sanitizer runtime missing)")
        pytest.fail(f"the driver does not compile:\n{build.stderr}")
    assert "warning" not in build.stderr, build.stderr
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1", "TSAN_OPTIONS": "halt_on_error=1"}
    maps = 300 if sanitizer == "thread" else 600
    run = subprocess.run([str(driver), str(maps)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"ok: {maps} maps"), run.stdout
    ran = run.stdout.split(", ")[-1].split()[0]
    assert ran in (_expected_scans() if scan == "simd" else (scan,)), run.stdout
    assert "WARNING: ThreadSanitizer" not in run.stderr, run.stderr


def test_c_core_neon_scan_on_aarch64_under_qemu(tmp_path):
    """The NEON scan compiled for aarch64 (Termux, Raspberry Pi OS 64-bit) and run under qemu-user, where both
    are installed (apt install gcc-aarch64-linux-gnu qemu-user); x86 machines test AVX2, SSE2 and portable C."""
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not (cross and qemu):
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64 (apt install gcc-aarch64-linux-gnu qemu-user)")
    driver = tmp_path / "labeller_aarch64"
    build = _build(cross, [ASAN_DRIVER, POSTPROCESS / "labeller_core.c"], driver,
                   ["-O3", "-ffp-contract=off", "-static", "-Wall", "-Wextra"])
    assert build.returncode == 0 and "warning" not in build.stderr, build.stderr
    run = subprocess.run([qemu, str(driver), "400"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("ok: 400 maps"), run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("neon scan"), run.stdout


def test_ab_benchmark_builds_two_revisions_of_the_core_into_one_driver(tmp_path):
    """benchmarks/labeller_ab.py against HEAD: the base build is HEAD's core under renamed symbols, linked beside the
    working tree's; on every map of the postprocess benchmark both must return the same records, bit for bit (the
    labeller's results may not change with its speed)."""
    if _c_compiler() is None or shutil.which("git") is None:
        pytest.skip("needs a C compiler and git")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    out = tmp_path / "ab.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "labeller_ab.py"), "--base", "HEAD", "--quick",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 21 and all(row["same_records"] for row in rows), rows
    assert all(row["variants"] >= 4 for row in rows)  # new maps call after call, as a stream brings them
    assert {row["map"]: row["targets"] for row in rows}["1920x1080 50 targets"] == 50
    assert all(row["base_us"] > 0 and row["head_us"] > 0 for row in rows)


# -- the build ----------------------------------------------------------------------------------------------------
def test_build_without_a_compiler_warns_and_installs_the_fallback_unless_required(tmp_path):
    source = tmp_path / "source"  # the package and its build files, without this checkout's built extension
    shutil.copytree(REPO / "edge_irst", source / "edge_irst",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "assets"))
    for name in ("setup.py", "setup.cfg", "pyproject.toml"):
        shutil.copy2(REPO / name, source / name)
    command = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    env = {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false", "EDGE_IRST_REQUIRE_EXT": "0"}
    built = subprocess.run(command, cwd=source, capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "WARNING: edge-irst: the C labeller was not built" in built.stderr
    assert not list((source / "edge_irst" / "postprocess").glob("_labeller*.so"))
    # that installation's import says plainly what is missing (Python's own words speak of a circular import)
    probe = subprocess.run([sys.executable, "-W", "always", "-c", "import edge_irst.postprocess as p; "
                            "print(p.IMPLEMENTATION)"], cwd=source, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(source)})
    assert probe.stdout.strip() == "opencv", probe.stderr[-2000:]
    assert "the C extension edge_irst.postprocess._labeller is not in this installation" in probe.stderr
    assert "circular" not in probe.stderr and "slower OpenCV fallback" in probe.stderr
    env["EDGE_IRST_REQUIRE_EXT"] = "1"
    required = subprocess.run(command, cwd=source, capture_output=True, text=True, env=env)
    assert required.returncode != 0
    assert "EDGE_IRST_REQUIRE_EXT=1 makes this an error" in required.stderr


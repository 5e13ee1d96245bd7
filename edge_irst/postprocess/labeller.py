"""label_targets(): eight-connected targets of `logit > threshold`, by the C labeller or the OpenCV fallback.

Which implementation runs is decided once, at import:
- EDGE_IRST_POSTPROCESS=auto (default): the C extension if it is built and current, else the OpenCV fallback with
  a one-line RuntimeWarning;
- EDGE_IRST_POSTPROCESS=c: the C extension, or an error saying why it is unusable;
- EDGE_IRST_POSTPROCESS=opencv: the fallback.
IMPLEMENTATION names the active one; implementation_info() says more (for `edge-irst info`). Both produce
identical Detections (same order, same values, bit for bit); the tests hold them to it.
"""
from __future__ import annotations

import math
import numbers
import os
import threading
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..detections import Detections, _checked_metadata
from ..errors import EdgeIrstError, InputError
from .records import BYTES_PER_TARGET, TARGET_FIELDS, blocks_from_bytes
from .target_filter import TargetFilter, as_target_filter

ENVIRONMENT_VARIABLE = "EDGE_IRST_POSTPROCESS"
_CHOICES = ("auto", "c", "opencv")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NATIVE_FLOAT32 = np.dtype(np.float32)
_FLOAT32_OF: dict = {}  # validated float threshold -> its float32 value
_MAX_PIXELS = 2**31 - 1  # IRST_MAX_PIXELS: run indices and labels are int32

# A labeller: (float32 (H, W) logits, float32-representable threshold, None or zeroed int32 (H, W) labels,
# None or a TargetFilter that rejects something, threads >= 1) -> (ints, reals) read-only column blocks
# (records.py) of the kept targets.
Labeller = Callable[[np.ndarray, float, Optional[np.ndarray], Optional[TargetFilter], int], tuple]
# threads="auto": one row band per this many pixels (a thread is created per call, which costs tens of
# microseconds; benchmarks/postprocess.py measures where it pays), at most one per CPU this process may use, and
# one band alone after a call on the same thread that found fewer than AUTO_RUNS_FOR_BANDS foreground runs.
# Why the second rule: on a sparse map the scan is all the work and a second band costs more than it saves
# (AMD EPYC, 2 CPUs: sparse 1920x1080 221-255 us on 2 bands against 138-184 us on one; 640x512 with 50 targets
# 85 against 32 us), while maps with many runs gain from it. Two bands against one on that machine, per-round
# medians of 15 paired rounds: 50 % noise 0.94x at 256x256 (quartiles 0.92-1.43x), 0.84x at 384x384, 0.80x at
# 512x512, 0.79x at 640x512; the checkerboard 1.01x, 0.91x, 0.85x, 0.84x. Hence two bands from 2 x 2^17 pixels
# (512x256) up. A stream's frames look alike, so the previous frame is the guide; the first call on a thread
# follows the pixel rule alone.
AUTO_PIXELS_PER_THREAD = 1 << 17
AUTO_RUNS_FOR_BANDS = 1 << 16
_MAX_THREADS = 16  # IRST_MAX_THREADS


def _load_c_labeller() -> tuple:
    """(labeller, None), or (None, why the C extension cannot be used)."""
    try:
        from . import _labeller
    except ImportError as exc:
        # Python words a missing extension as "cannot import name ... partially initialized module (most likely
        # due to a circular import)", which misleads: say which it is.
        if not any((Path(__file__).parent / f"_labeller{suffix}").exists() for suffix in EXTENSION_SUFFIXES):
            return None, "the C extension edge_irst.postprocess._labeller is not in this installation"
        return None, f"the C extension edge_irst.postprocess._labeller does not load ({exc})"
    if tuple(map(tuple, _labeller.TARGET_FIELDS)) != TARGET_FIELDS or _labeller.RECORD_SIZE != BYTES_PER_TARGET:
        return None, "the C extension is stale (its target fields differ from records.py)"
    if not hasattr(_labeller, "last_run_count"):
        return None, "the C extension is stale (it predates its run count for threads='auto')"

    per_thread = threading.local()  # one workspace (reused run buffers) per thread: the C call releases the GIL

    def label_blocks(logits, threshold, labels, target_filter, threads):
        try:
            workspace = per_thread.workspace
        except AttributeError:  # this thread's first call
            workspace = per_thread.workspace = _labeller.new_workspace()
        bounds = None if target_filter is None else target_filter.c_bounds
        return blocks_from_bytes(_labeller.label(logits, threshold, labels, workspace, bounds, threads))

    def auto_bands(bands: int) -> int:
        """`bands` (the pixel rule of threads="auto"), or 1 after a sparse call on this thread."""
        workspace = getattr(per_thread, "workspace", None)
        if workspace is None:
            return bands
        runs = _labeller.last_run_count(workspace)
        return bands if runs < 0 or runs >= AUTO_RUNS_FOR_BANDS else 1

    label_blocks.compiler = _labeller.COMPILER
    label_blocks.scan = _labeller.SCAN
    label_blocks.auto_bands = auto_bands
    return label_blocks, None


def _opencv_labeller() -> Labeller:
    from .opencv_fallback import label_blocks  # imports cv2 only when the fallback is used

    return label_blocks


def _select() -> tuple:
    requested = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip().lower() or "auto"
    if requested not in _CHOICES:
        raise InputError(f"{ENVIRONMENT_VARIABLE}={requested!r} is not a postprocess implementation; "
                         f"expected one of {', '.join(_CHOICES)} (or unset it)")
    c_labeller, why_not = _load_c_labeller()
    available = {"c": c_labeller} if c_labeller else {}
    if requested == "opencv":
        return "opencv", "forced by " + ENVIRONMENT_VARIABLE, available
    if c_labeller:
        return "c", f"C extension built with {c_labeller.compiler}, {c_labeller.scan} scan", available
    fix = ("reinstall edge-irst from source with a C compiler and the Python headers present, e.g. pip install "
           "--force-reinstall . in a checkout (EDGE_IRST_REQUIRE_EXT=1 turns a failed build into an error)")
    if requested == "c":
        raise EdgeIrstError(f"{ENVIRONMENT_VARIABLE}=c but {why_not}; {fix}, or set {ENVIRONMENT_VARIABLE}=opencv")
    warnings.warn(f"edge_irst.postprocess: {why_not}; using the slower OpenCV fallback ({fix})", RuntimeWarning,
                  stacklevel=2)
    return "opencv", f"fallback: {why_not}", available


IMPLEMENTATION, _REASON, _AVAILABLE = _select()
_C_ACTIVE = _AVAILABLE["c"] if IMPLEMENTATION == "c" else None  # label_targets()'s default, looked up once


def available_implementations() -> tuple:
    """Names usable as label_targets(implementation=...): 'c' when the extension is built, and 'opencv'."""
    return (*_AVAILABLE, "opencv")


def implementation_info() -> dict:
    """{"implementation": active name, "detail": why / which compiler, "available": usable names, "scan": the
    instruction set of the C labeller's scan ("avx512", "avx2", "sse2", "neon", "portable"; chosen at run time on
    x86), or None when the C labeller is not the active one}."""
    scan = _AVAILABLE["c"].scan if IMPLEMENTATION == "c" else None
    return {"implementation": IMPLEMENTATION, "detail": _REASON, "available": list(available_implementations()),
            "scan": scan}


def _resolve(name: Optional[str]) -> Labeller:
    name = IMPLEMENTATION if name is None else name
    if name == "opencv":
        return _opencv_labeller()
    if name in _AVAILABLE:
        return _AVAILABLE[name]
    raise InputError(f"postprocess implementation {name!r} is not available here; available: "
                     f"{', '.join(available_implementations())}")


def checked_threshold(threshold) -> float:
    """The threshold as the float32 value the map is compared with (returned as a Python float).

    Comparing in float32 is what `logits > threshold` does in numpy for a float32 map; the weights of the weighted
    centroid use the same float32 value.
    """
    if type(threshold) is float:
        cached = _FLOAT32_OF.get(threshold)  # a stream passes the same few thresholds frame after frame
        if cached is not None:
            return cached
    elif isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
        raise InputError(f"threshold = {threshold!r}; expected a finite real number (a logit, e.g. 0.0)")
    value = float(np.float32(threshold)) if -_FLOAT32_MAX <= threshold <= _FLOAT32_MAX else math.nan
    if not math.isfinite(value):
        raise InputError(f"threshold = {threshold!r}; expected a finite logit within float32 range "
                         f"(|threshold| <= {_FLOAT32_MAX:.4g}), e.g. 0.0 (the paper's value)")
    if type(threshold) is float:
        if len(_FLOAT32_OF) > 256:
            _FLOAT32_OF.clear()
        _FLOAT32_OF[threshold] = value
    return value


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


_USABLE_CPUS = _usable_cpus()


def _checked_threads(threads, pixels: int) -> int:
    if isinstance(threads, str) and threads == "auto":
        bands = pixels // AUTO_PIXELS_PER_THREAD
        # Small maps first, and without min()/max(): at 256x256 this check cost 3 % of the whole labelling.
        return 1 if bands < 2 else min(_USABLE_CPUS, _MAX_THREADS, bands)
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, numbers.Integral) \
            or not 1 <= threads <= _MAX_THREADS:
        raise InputError(f"threads = {threads!r}; expected an integer 1..{_MAX_THREADS} or 'auto'")
    return int(threads)


def _checked_map(logits) -> np.ndarray:
    """The map as the labellers take it, or an InputError; label_targets() lets the pipeline's case through first."""
    if not isinstance(logits, np.ndarray):
        raise InputError(f"logits: expected a numpy float32 array of shape (H, W), received {type(logits).__name__}")
    if logits.ndim != 2:
        hint = " (for a backend's (N, 1, H, W) output pass out[i, 0])" if logits.ndim == 4 else ""
        raise InputError(f"logits: expected a 2-D map of shape (H, W), received shape {logits.shape}{hint}")
    if logits.dtype != _NATIVE_FLOAT32:
        raise InputError(f"logits: expected native float32, received {logits.dtype}; convert explicitly with "
                         f"logits.astype(np.float32) (no implicit conversion: it would copy every frame)")
    if logits.size == 0:
        raise InputError(f"logits: expected at least one pixel, received shape {logits.shape}")
    if logits.size > _MAX_PIXELS:
        raise InputError(f"logits: {logits.size} pixels, more than the {_MAX_PIXELS} supported; label in tiles")
    if not logits.flags.aligned or any(stride % 4 for stride in logits.strides):
        # Only byte-misaligned views (np.frombuffer at an odd offset) land here; the C code reads whole floats.
        # copy(), not ascontiguousarray(): a misaligned array can already be contiguous and would come back as is.
        logits = logits.copy()
    return logits


def label_targets(logits: np.ndarray, threshold: float = 0.0, return_labels: bool = False, *,
                  target_filter: Optional[Union[TargetFilter, str]] = None, implementation: Optional[str] = None,
                  frame_index: Optional[int] = None, timestamp: Optional[float] = None,
                  frame_shape: Optional[tuple] = None, threads: Union[int, str] = 1):
    """Eight-connected targets of `logits > threshold`, with their statistics, in one pass.

    logits: numpy float32 array of shape (H, W) (any H, W >= 1), any strides (views such as a[::2, ::3], a.T
        or a[::-1] are read in place, no copy). Other dtypes are rejected, not converted. NaN is never a target,
        +inf always is, -inf never.
    threshold: a pixel is a target pixel where logit > threshold, compared in float32 (default 0.0, the paper's).
    return_labels: also return the label image, int32 (H, W) row-major: 0 = background, k = the pixels of the
        target whose Detections.label is k (every target, kept by the filter or not).
    target_filter: None (keep every target), a TargetFilter or a preset name ('none', 'authors'); applied inside
        the labeller, with the same result as TargetFilter.__call__ on the unfiltered Detections.
    implementation: 'c' or 'opencv' to override the active IMPLEMENTATION (tests, benchmarks).
    frame_index, timestamp, frame_shape: metadata stored in the Detections (frame_shape defaults to (H, W)).
    threads: row bands the C labeller scans at once, each on a thread of its own (1, the default, = the calling
        thread only: in a pipeline the other cores run inference); 'auto' = one per AUTO_PIXELS_PER_THREAD
        pixels, at most one per usable CPU (so 1 below 262,144 pixels on 2 CPUs), and 1 after a call on the same
        thread that found fewer than AUTO_RUNS_FOR_BANDS foreground runs (a sparse frame). The result is the
        same, bit for bit, for any value. The OpenCV fallback ignores it (OpenCV uses cv2.setNumThreads()).

    Returns Detections in the grid of `logits` (x = column, y = row, pixel centres at integers), one row per
    target in the raster order of its first pixel (row, then column); with return_labels, (Detections, labels).
    """
    # A stream's frame (native float32 map, a float threshold seen before, a TargetFilter, one thread, the active
    # labeller) passes on inline type checks. The calls they spare took about 0.5 us of a sparse 256x256 map's 15
    # (AMD EPYC, 21 paired rounds against the checks as calls: 2-6 % faster, quartiles of the ratio 1.01-1.06).
    # numpy's aligned flag covers the strides too, and the C labeller reads any strides in place.
    if not (type(logits) is np.ndarray and logits.dtype is _NATIVE_FLOAT32 and logits.ndim == 2
            and logits.flags.aligned and 0 < logits.size <= _MAX_PIXELS):
        logits = _checked_map(logits)
    value = _FLOAT32_OF.get(threshold) if type(threshold) is float else None
    threshold = checked_threshold(threshold) if value is None else value
    if target_filter is not None:
        if type(target_filter) is not TargetFilter:
            target_filter = as_target_filter(target_filter)
        if target_filter.keeps_everything:
            target_filter = None
    labels = np.zeros(logits.shape, np.int32) if return_labels else None
    labeller = _C_ACTIVE if implementation is None and _C_ACTIVE is not None else _resolve(implementation)
    if type(threads) is int and threads == 1:
        bands = 1
    else:
        bands = _checked_threads(threads, logits.size)
        if bands > 1 and isinstance(threads, str) and hasattr(labeller, "auto_bands"):  # str: "auto" (checked)
            bands = labeller.auto_bands(bands)
    ints, reals = labeller(logits, threshold, labels, target_filter, bands)
    # The labellers build read-only blocks in Detections' layout (records.py, checked against the C extension at
    # import); from_blocks()'s per-call checks would cost a fifth of a sparse 256x256 labelling.
    if frame_index is None and timestamp is None and frame_shape is None:
        metadata = {"frame_index": None, "timestamp": None, "frame_shape": logits.shape}  # nothing to check
    else:
        metadata = _checked_metadata(frame_index, timestamp, logits.shape if frame_shape is None else frame_shape)
    detections = Detections._trusted(ints, reals, metadata)
    return (detections, labels) if return_labels else detections

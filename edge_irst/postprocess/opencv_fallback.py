"""The OpenCV fallback labeller, used where the C extension could not be built (or EDGE_IRST_POSTPROCESS=opencv).

cv2.connectedComponentsWithStats(connectivity=8) gives the components, their areas and boxes; numpy completes the
statistics. The records are bit-identical to the C labeller's: the same target order (OpenCV numbers components
in its own block-scan order, so they are renumbered by first raster pixel) and every double sum accumulated
pixel by pixel in raster order (np.bincount adds its weights sequentially, like the C loop).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from .records import INT_FIELDS, REAL_FIELDS


def label_blocks(logits: np.ndarray, threshold: float, labels: Optional[np.ndarray], target_filter,
                 threads: int) -> tuple:
    """Targets of `logits > threshold` as (ints, reals) column blocks (records.py; contract of labeller_core.h).

    logits: float32, shape (H, W), any strides (validated by the caller). threshold: a float32-representable
    finite float. labels: None, or a zero-filled C-contiguous int32 (H, W) array that receives the target labels.
    target_filter: None, or the TargetFilter whose kept targets are returned (the label image shows them all).
    threads: unused; OpenCV takes its thread count from cv2.setNumThreads().
    """
    threshold = np.float32(threshold)
    # `>` keeps NaN out of the foreground; ascontiguousarray because a transposed view yields a Fortran-ordered mask.
    mask = np.ascontiguousarray(logits > threshold)
    count, cv_labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8,
                                                                  ltype=cv2.CV_32S)
    targets = count - 1
    ints = np.zeros((len(INT_FIELDS), targets), np.int64)
    reals = np.zeros((len(REAL_FIELDS), targets), np.float64)
    if targets == 0:
        return _read_only(ints, reals)
    column = dict(zip(INT_FIELDS + REAL_FIELDS, [*ints, *reals]))  # name -> row view of a block

    flat = cv_labels.reshape(-1)
    pixels = np.flatnonzero(flat)  # foreground pixels in raster order
    cv_of_pixel = flat[pixels]
    cv_ids, first_pixel = np.unique(cv_of_pixel, return_index=True)
    cv_in_order = cv_ids[np.argsort(first_pixel, kind="stable")]  # OpenCV label of target 1, 2, ...
    renumber = np.empty(count, np.int64)
    renumber[cv_in_order] = np.arange(1, count)
    label = renumber[cv_of_pixel]
    if labels is not None:
        labels.reshape(-1)[pixels] = label

    ys, xs = np.divmod(pixels, logits.shape[1])
    values = logits[ys, xs].astype(np.float64)
    xs = xs.astype(np.float64)
    ys = ys.astype(np.float64)

    def per_target(weights: np.ndarray) -> np.ndarray:
        return np.bincount(label, weights=weights, minlength=count)[1:]

    # +inf logits carry an infinite weight: they are counted apart and the rest gets weight 0 (adding 0.0 leaves
    # the C sums that skip them unchanged).
    is_inf = values == np.inf
    weights = np.where(is_inf, 0.0, values - np.float64(threshold))
    inf_count = per_target(is_inf.astype(np.float64))
    has_inf = inf_count > 0
    sum_weight = per_target(weights)

    size = stats[cv_in_order, cv2.CC_STAT_AREA].astype(np.int64)
    left = stats[cv_in_order, cv2.CC_STAT_LEFT]
    top = stats[cv_in_order, cv2.CC_STAT_TOP]
    width = stats[cv_in_order, cv2.CC_STAT_WIDTH]
    height = stats[cv_in_order, cv2.CC_STAT_HEIGHT]

    peak = np.full(count, -np.inf)
    np.maximum.at(peak, label, values)
    at_peak = values == peak[label]
    _, first_at_peak = np.unique(label[at_peak], return_index=True)
    first = np.flatnonzero(at_peak)[first_at_peak]  # each target's first pixel at its maximum
    peak_pixel = pixels[first]
    # The peak is the first pixel at the maximum, value included: -0.0 and 0.0 compare equal, and np.maximum keeps
    # whichever came last, where the C labeller (a strict >) keeps the first.
    peak_value = values[first]

    column["label"][:] = np.arange(1, count)
    column["size"][:] = size
    column["x"][:] = per_target(xs) / size
    column["y"][:] = per_target(ys) / size
    for name, coordinate in (("weighted_x", xs), ("weighted_y", ys)):
        inf_mean = np.divide(per_target(coordinate * is_inf), inf_count, where=has_inf, out=np.zeros(targets))
        weighted = np.divide(per_target(weights * coordinate), sum_weight, where=~has_inf, out=np.zeros(targets))
        column[name][:] = np.where(has_inf, inf_mean, weighted)
    column["x_min"][:] = left
    column["y_min"][:] = top
    column["x_max"][:] = left + width - 1
    column["y_max"][:] = top + height - 1
    column["aspect_ratio"][:] = width / height
    column["peak_logit"][:] = peak_value
    column["peak_y"][:], column["peak_x"][:] = np.divmod(peak_pixel, logits.shape[1])
    column["mean_logit"][:] = per_target(values) / size
    if target_filter is not None:
        kept = target_filter.keep_values(column["size"], column["aspect_ratio"])
        ints, reals = ints.compress(kept, axis=1), reals.compress(kept, axis=1)
    return _read_only(ints, reals)


def _read_only(*blocks: np.ndarray) -> tuple:
    for block in blocks:
        block.setflags(write=False)  # Detections keeps them as its storage
    return blocks

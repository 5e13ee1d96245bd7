"""Pixel-level metrics: precision, recall, F1, IoU (dataset level), nIoU (mean per-image IoU), binned ROC / PR
curves with their AUCs and AP."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

from .base import (Metric, f1_score, format_grid, format_value, ratio, result_dict, step_average_precision,
                   trapezoid)
from .conventions import Conventions, as_thresholds, default_pixel_thresholds, make_conventions
from .inputs import Frame


class _PixelRecord(NamedTuple):
    tp: int
    predicted: int
    positive: int
    pixels: int
    positive_above: Optional[np.ndarray]  # (T,) target pixels above each curve threshold
    all_above: Optional[np.ndarray]  # (T,) all pixels above each curve threshold


@dataclass(frozen=True)
class PixelResult:
    """Dataset-level pixel figures. Curves are indexed by `thresholds` (probabilities, ascending); `roc_fpr` /
    `roc_tpr` and `pr_recall` / `pr_precision` are the points the AUCs integrate (end points per conventions)."""

    images: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float
    iou: float
    niou: float
    conventions: Conventions
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    roc_fpr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    roc_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    roc_auc: float = float("nan")
    pr_recall: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pr_precision: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pr_auc: float = float("nan")
    ap: float = float("nan")

    def table(self) -> str:
        return format_grid([["IoU", "nIoU", "P", "R", "F1", "AUC-ROC", "AUC-PR", "AP"],
                            [format_value(v) for v in (self.iou, self.niou, self.precision, self.recall, self.f1,
                                                       self.roc_auc, self.pr_auc, self.ap)]])

    def to_dict(self, with_conventions: bool = True) -> dict:
        return result_dict(self, with_conventions)


class PixelMetrics(Metric):
    """Pixel-level metrics over a dataset.

    compat: None, "stdeval" or "dnanet" (edge_irst.metrics.conventions); threshold: operating point as a
    probability (0.5: logit 0); thresholds: curve bins (probabilities or a count; default per compat mode);
    curves=False skips the ROC / PR curves; conventions: a Conventions object to share with other metrics
    (instead of compat / threshold); workers: see Metric.
    """

    name = "pixel"

    def __init__(self, *, compat: Optional[str] = None, threshold: Optional[float] = None, thresholds=None,
                 curves: bool = True, conventions: Optional[Conventions] = None, workers: Optional[int] = None):
        super().__init__(workers)
        self.conventions = conventions or make_conventions(compat, threshold=threshold)
        self.curves = curves
        self.thresholds = (as_thresholds(thresholds, "pixel curve thresholds") if thresholds is not None
                           else default_pixel_thresholds(self.conventions))
        self.reset()

    def reset(self) -> None:
        self._images = 0
        self._tp = self._predicted = self._positive = self._pixels = 0
        self._image_iou: list[float] = []
        self._positive_above = np.zeros(self.thresholds.size, dtype=np.int64)
        self._all_above = np.zeros(self.thresholds.size, dtype=np.int64)

    def _measure(self, frame: Frame) -> _PixelRecord:
        conv = self.conventions
        target_pixels = np.flatnonzero(frame.label)
        decision = frame.above(conv.threshold, conv.pixel_inclusive)
        tp = int(np.count_nonzero(decision.ravel()[target_pixels]))
        predicted = int(np.count_nonzero(decision))
        positive_above = all_above = None
        if self.curves:
            positive_above = frame.count_above(self.thresholds, conv.curve_inclusive, where=target_pixels)
            all_above = frame.count_above(self.thresholds, conv.curve_inclusive)
        return _PixelRecord(tp, predicted, int(target_pixels.size), int(frame.label.size), positive_above, all_above)

    def _accumulate(self, rec: _PixelRecord) -> None:
        self._images += 1
        self._tp += rec.tp
        self._predicted += rec.predicted
        self._positive += rec.positive
        self._pixels += rec.pixels
        self._image_iou.append(ratio(rec.tp, rec.positive + rec.predicted - rec.tp, self.conventions.zero_division))
        if self.curves:
            self._positive_above += rec.positive_above
            self._all_above += rec.all_above

    def get(self) -> PixelResult:
        zd = self.conventions.zero_division
        tp, fp, fn = self._tp, self._predicted - self._tp, self._positive - self._tp
        tn = self._pixels - tp - fp - fn
        precision, recall = ratio(tp, tp + fp, zd), ratio(tp, tp + fn, zd)
        base = dict(images=self._images, tp=tp, fp=fp, fn=fn, tn=tn, precision=precision, recall=recall,
                    f1=f1_score(precision, recall), iou=ratio(tp, tp + fp + fn, zd),
                    niou=float(np.mean(self._image_iou)) if self._image_iou else zd, conventions=self.conventions)
        if not self.curves:
            return PixelResult(**base)
        negatives = self._pixels - self._positive
        tp_t, fp_t = self._positive_above, self._all_above - self._positive_above
        tpr, fpr = ratio(tp_t, self._positive, zd), ratio(fp_t, negatives, zd)
        curve_precision = ratio(tp_t, tp_t + fp_t, zd)
        # thresholds ascend, so the curve runs from (1, 1)-ish to (0, 0)-ish; integrate in ascending fpr order
        roc_fpr, roc_tpr = fpr[::-1], tpr[::-1]
        if self.conventions.pixel_roc_end_points:
            roc_fpr = np.concatenate([[0.0], roc_fpr, [1.0]])
            roc_tpr = np.concatenate([[0.0], roc_tpr, [1.0]])
        # precision is undefined where nothing is predicted: such bins are left out of the PR polyline (the
        # appended (recall 0, precision 1) point closes it); their AP weight is 0 anyway, their recall being 0
        defined = (tp_t + fp_t) > 0
        pr_recall = np.append(tpr[defined], 0.0)
        pr_precision = np.append(curve_precision[defined], 1.0)
        return PixelResult(**base, thresholds=self.thresholds.copy(), roc_fpr=roc_fpr, roc_tpr=roc_tpr,
                           roc_auc=trapezoid(roc_tpr, roc_fpr), pr_recall=pr_recall, pr_precision=pr_precision,
                           pr_auc=abs(trapezoid(pr_precision, pr_recall)),
                           ap=float(step_average_precision(curve_precision, tpr)))

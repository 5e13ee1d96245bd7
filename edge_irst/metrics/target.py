"""Target-level metrics over centroid-distance thresholds: Pd / Fa, target precision / recall / F1, target-matched
nIoU at the operating point; target AP and the Pd-Fa ROC (with its AUC) over a confidence sweep.

Per image and per confidence threshold the prediction is labelled once (connected components, 8-connectivity
unless asked otherwise); ground truth once per image. Masks of one image at ascending thresholds are nested, so two thresholds leaving the same number
of foreground pixels leave the same mask: its components and matches are reused (a binary prediction costs one
labelling, not one per threshold).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from ..errors import InputError
from .base import Metric, f1_score, format_grid, ratio, result_dict, step_average_precision, trapezoid
from .components import Components, box_iou, find_components, pair_geometry
from .conventions import (DEFAULT_DISTANCES, REPORT_DISTANCE, Conventions, as_distances, as_thresholds,
                          default_confidence_thresholds, make_conventions)
from .inputs import Frame
from .matching import match_below


class _MaskCounts(NamedTuple):
    """One thresholded prediction of one image, matched at every distance threshold (arrays are (D,))."""

    predicted: int  # predicted components
    matched: np.ndarray  # matched pairs = detected targets
    false_alarm_pixels: np.ndarray
    matched_iou: np.ndarray  # sum of the matched pairs' mask IoU


class _TargetRecord(NamedTuple):
    targets: int
    pixels: int
    operating: _MaskCounts
    sweep: tuple  # one _MaskCounts per confidence threshold (empty without curves)


@dataclass(frozen=True)
class TargetResult:
    """Target-level figures. Arrays over `distances` (D,) or (confidence thresholds C, D)."""

    images: int
    targets: int  # AT: ground-truth targets
    pixels: int  # NP: all pixels
    predicted: int  # predicted components at the operating point
    distances: np.ndarray
    detected: np.ndarray  # TD (D,)
    false_alarm_pixels: np.ndarray  # FD (D,)
    pd: np.ndarray
    fa: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    niou: np.ndarray  # target-matched nIoU
    confidence_thresholds: np.ndarray  # (C,) probabilities, ascending; empty without curves
    sweep_predicted: np.ndarray  # (C,)
    sweep_detected: np.ndarray  # (C, D)
    sweep_false_alarm_pixels: np.ndarray  # (C, D)
    sweep_pd: np.ndarray
    sweep_fa: np.ndarray
    sweep_precision: np.ndarray
    ap: np.ndarray  # (D,)
    pd_fa_auc: np.ndarray  # (D,)
    conventions: Conventions

    def index(self, distance: float) -> int:
        hits = np.flatnonzero(np.isclose(self.distances, float(distance)))
        if not hits.size:
            raise InputError(f"distance {distance:g} px was not evaluated; evaluated: "
                             f"{', '.join(f'{d:g}' for d in self.distances)}")
        return int(hits[0])

    def at(self, distance: float = REPORT_DISTANCE) -> dict:
        """Every figure at one distance threshold, as a flat dict."""
        k = self.index(distance)
        row = dict(distance=float(self.distances[k]), targets=self.targets, detected=int(self.detected[k]),
                   predicted=self.predicted, false_alarm_pixels=int(self.false_alarm_pixels[k]), pixels=self.pixels,
                   pd=float(self.pd[k]), fa=float(self.fa[k]), precision=float(self.precision[k]),
                   recall=float(self.recall[k]), f1=float(self.f1[k]), niou=float(self.niou[k]))
        if self.ap.size:
            row.update(ap=float(self.ap[k]), pd_fa_auc=float(self.pd_fa_auc[k]))
        return row

    def pd_fa_curve(self, distance: float = REPORT_DISTANCE) -> tuple[np.ndarray, np.ndarray]:
        """(fa, pd) points of the Pd-Fa ROC at one distance, as integrated: start point, then sorted by Fa."""
        return _pd_fa_points(self.sweep_fa[:, self.index(distance)], self.sweep_pd[:, self.index(distance)],
                             self.conventions.pd_fa_roc_start)

    def table(self) -> str:
        """One row per distance threshold."""
        sweep = ["AP", "PdFa-AUC"] if self.ap.size else []
        rows = [["d(px)", "TD", "FD", "Pd", "Fa", "P", "R", "F1", "nIoU"] + sweep]
        for k, distance in enumerate(self.distances):
            row = [f"{distance:g}", str(self.detected[k]), str(self.false_alarm_pixels[k]), f"{self.pd[k]:.5f}",
                   f"{self.fa[k]:.5e}", f"{self.precision[k]:.5f}", f"{self.recall[k]:.5f}", f"{self.f1[k]:.5f}",
                   f"{self.niou[k]:.4f}"]
            rows.append(row + ([f"{self.ap[k]:.4f}", f"{self.pd_fa_auc[k]:.4g}"] if sweep else []))
        return format_grid(rows)

    def to_dict(self, with_conventions: bool = True) -> dict:
        return result_dict(self, with_conventions)


def _pd_fa_points(fa: np.ndarray, pd: np.ndarray, start: tuple) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(fa, kind="stable")
    return np.concatenate([[start[0]], fa[order]]), np.concatenate([[start[1]], pd[order]])


class TargetMetrics(Metric):
    """Target-level metrics over a dataset.

    compat: None, "stdeval" or "dnanet"; matching: "hungarian" (default) or "greedy"; gate: "none", "mask" or
    "box" (a pair also needs IoU > 0); connectivity: 8 (default) or 4; distances: centroid-distance thresholds
    in px (default 1..10, strict <); threshold: operating point as a probability; confidence_thresholds: the
    AP / Pd-Fa ROC sweep (probabilities or a count; default per compat mode); curves=False skips the sweep (one
    labelling per image: the fast path for training validation); conventions: a Conventions object to share
    (instead of compat / matching / gate / threshold / connectivity); workers: see Metric.
    """

    name = "target"

    def __init__(self, *, compat: Optional[str] = None, matching: Optional[str] = None, gate: Optional[str] = None,
                 distances=DEFAULT_DISTANCES, threshold: Optional[float] = None, confidence_thresholds=None,
                 connectivity: Optional[int] = None, curves: bool = True, conventions: Optional[Conventions] = None,
                 workers: Optional[int] = None):
        super().__init__(workers)
        self.conventions = conventions or make_conventions(compat, matching=matching, gate=gate,
                                                           threshold=threshold, connectivity=connectivity)
        self.distances = as_distances(distances)
        self.curves = curves
        self.confidence_thresholds = (
            as_thresholds(confidence_thresholds, "confidence thresholds") if confidence_thresholds is not None
            else default_confidence_thresholds(self.conventions)) if curves else np.zeros(0)
        self.reset()

    def reset(self) -> None:
        n_d, n_c = self.distances.size, self.confidence_thresholds.size
        self._images = self._targets = self._pixels = self._predicted = 0
        self._detected = np.zeros(n_d, dtype=np.int64)
        self._fd = np.zeros(n_d, dtype=np.int64)
        self._iou = np.zeros(n_d)
        self._sweep_predicted = np.zeros(n_c, dtype=np.int64)
        self._sweep_detected = np.zeros((n_c, n_d), dtype=np.int64)
        self._sweep_fd = np.zeros((n_c, n_d), dtype=np.int64)

    # ---- per image ------------------------------------------------------------------------------------------------
    def _measure(self, frame: Frame) -> _TargetRecord:
        conv = self.conventions
        gt = find_components(frame.label, conv.connectivity)
        gt_pixels = np.flatnonzero(frame.label)
        by_pixel_count: dict[int, _MaskCounts] = {}

        def counts(threshold: float) -> _MaskCounts:
            mask = frame.above(threshold, conv.target_inclusive)
            n = int(np.count_nonzero(mask))
            if n not in by_pixel_count:
                by_pixel_count[n] = self._match_mask(gt, gt_pixels, mask, n)
            return by_pixel_count[n]

        operating = counts(conv.threshold)
        sweep = tuple(counts(t) for t in self.confidence_thresholds)
        return _TargetRecord(gt.count, int(frame.label.size), operating, sweep)

    def _match_mask(self, gt: Components, gt_pixels: np.ndarray, mask: np.ndarray, mask_pixels: int) -> _MaskCounts:
        conv = self.conventions
        n_d = self.distances.size
        pred = find_components(mask, conv.connectivity)
        if gt.count == 0 or pred.count == 0:
            zeros = np.zeros(n_d, dtype=np.int64)
            return _MaskCounts(pred.count, zeros, np.full(n_d, mask_pixels, dtype=np.int64), np.zeros(n_d))
        geometry = pair_geometry(gt, pred, gt_pixels, conv.centroid_dtype)
        overlap_ok = True
        if conv.gate == "mask":
            overlap_ok = geometry.intersection > 0
        elif conv.gate == "box":
            overlap_ok = box_iou(gt.boxes, pred.boxes) > 0
        matched = np.zeros(n_d, dtype=np.int64)
        fd = np.zeros(n_d, dtype=np.int64)
        iou = np.zeros(n_d)
        pairs = match_below(geometry.distance, self.distances, conv.matching, overlap_ok)
        for k, (gi, pj) in enumerate(pairs):
            matched[k] = gi.size
            iou[k] = float(np.sum(geometry.mask_iou[gi, pj]))
            if conv.fa_rule == "pixels":
                fd[k] = mask_pixels - int(pred.areas[pj].sum())
            else:  # DNANet's defect, reproduced on request: unmatched areas equal to a matched area vanish
                fd[k] = int(pred.areas[~np.isin(pred.areas, pred.areas[pj])].sum())
        return _MaskCounts(pred.count, matched, fd, iou)

    def _accumulate(self, rec: _TargetRecord) -> None:
        self._images += 1
        self._targets += rec.targets
        self._pixels += rec.pixels
        self._predicted += rec.operating.predicted
        self._detected += rec.operating.matched
        self._fd += rec.operating.false_alarm_pixels
        self._iou += rec.operating.matched_iou
        for c, counts in enumerate(rec.sweep):
            self._sweep_predicted[c] += counts.predicted
            self._sweep_detected[c] += counts.matched
            self._sweep_fd[c] += counts.false_alarm_pixels

    # ---- results --------------------------------------------------------------------------------------------------
    def get(self) -> TargetResult:
        conv = self.conventions
        zd = conv.zero_division
        pd = ratio(self._detected, self._targets, zd)
        precision = ratio(self._detected, self._predicted, zd)
        sweep_pd = ratio(self._sweep_detected, self._targets, zd)
        sweep_fa = ratio(self._sweep_fd, self._pixels, zd)
        sweep_precision = ratio(self._sweep_detected, self._sweep_predicted[:, None], zd)
        if self.confidence_thresholds.size:
            ap = step_average_precision(sweep_precision.T, sweep_pd.T)
            auc = np.zeros(self.distances.size)
            for k in range(self.distances.size):
                fa_points, pd_points = _pd_fa_points(sweep_fa[:, k], sweep_pd[:, k], conv.pd_fa_roc_start)
                auc[k] = trapezoid(pd_points, fa_points)
        else:
            ap = auc = np.zeros(0)
        return TargetResult(
            images=self._images, targets=self._targets, pixels=self._pixels, predicted=self._predicted,
            distances=self.distances.copy(), detected=self._detected.copy(), false_alarm_pixels=self._fd.copy(),
            pd=pd, fa=ratio(self._fd, self._pixels, zd), precision=precision, recall=pd,
            f1=f1_score(precision, pd), niou=ratio(self._iou, self._targets, zd),
            confidence_thresholds=self.confidence_thresholds.copy(), sweep_predicted=self._sweep_predicted.copy(),
            sweep_detected=self._sweep_detected.copy(), sweep_false_alarm_pixels=self._sweep_fd.copy(),
            sweep_pd=sweep_pd, sweep_fa=sweep_fa, sweep_precision=sweep_precision, ap=ap, pd_fa_auc=auc,
            conventions=conv)

"""COCO-style box mAP for targets: boxes from the components of labels and predictions, or given boxes.

Single class, COCO's evaluation (pycocotools' evaluateImg / accumulate, reimplemented): IoU thresholds
0.50:0.05:0.95, detections ranked by score and cut to `max_detections` per image, each detection in score order
takes the unmatched ground truth of highest IoU >= t, 101-point interpolated precision, mAR at max_detections.
COCO's small/medium/large split is not reported: nearly every infrared small target is "small" (< 32^2 px).
A component's score is its peak probability.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..errors import InputError
from .base import Metric, jsonable
from .components import box_iou, find_components
from .conventions import component_conventions, make_conventions
from .inputs import Frame

COCO_IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


class _ImageBoxes(NamedTuple):
    gt: np.ndarray  # (n, 4) x0, y0, x1, y1
    pred: np.ndarray  # (m, 4)
    scores: np.ndarray  # (m,)


@dataclass(frozen=True)
class BoxAPResult:
    images: int
    targets: int
    detections: int
    iou_thresholds: np.ndarray
    ap_per_iou: np.ndarray  # (T,), -1 where no ground truth
    recall_per_iou: np.ndarray  # (T,)
    map: float  # mean AP over iou_thresholds (COCO's AP)
    map_50: float
    map_75: float
    mar: float  # mean recall at max_detections over iou_thresholds (COCO's AR@max_detections)
    max_detections: int
    conventions: dict  # how components were found and scored (conventions.component_conventions)

    def table(self) -> str:
        return (f"box mAP (COCO, single class, max {self.max_detections} dets): mAP@.50:.95 {self.map:.4f}  "
                f"mAP@.50 {self.map_50:.4f}  mAP@.75 {self.map_75:.4f}  mAR {self.mar:.4f}  "
                f"({self.detections} detections, {self.targets} targets; {self.conventions['threshold']}, "
                f"{self.conventions['components']})")

    def to_dict(self) -> dict:
        return {k: jsonable(v) for k, v in self.__dict__.items()}


class BoxAP(Metric):
    """COCO box mAP. update(labels, preds) boxes the components (8-connected unless `connectivity` or `compat`
    says otherwise, prediction thresholded at the operating point with the comparison of `compat`, score = peak
    probability); update_boxes() takes boxes directly."""

    name = "box_map"

    def __init__(self, *, threshold: Optional[float] = None, compat: Optional[str] = None,
                 connectivity: Optional[int] = None, iou_thresholds=COCO_IOU_THRESHOLDS, max_detections: int = 100,
                 workers: Optional[int] = None):
        super().__init__(workers)
        self.conventions = make_conventions(compat, threshold=threshold, connectivity=connectivity)
        self.iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64).ravel()
        if self.iou_thresholds.size == 0 or self.iou_thresholds.min() <= 0 or self.iou_thresholds.max() > 1:
            raise InputError(f"iou_thresholds must lie in (0, 1], got {iou_thresholds!r}")
        if int(max_detections) < 1:
            raise InputError(f"max_detections must be >= 1, got {max_detections}")
        self.max_detections = int(max_detections)
        self.reset()

    def reset(self) -> None:
        self._images = self._targets = 0
        self._scores: list[np.ndarray] = []
        self._matched: list[np.ndarray] = []  # per image: bool (T, kept detections)

    def update_boxes(self, gt_boxes: Sequence, pred_boxes: Sequence, scores: Sequence) -> None:
        """Per image: ground-truth boxes (n, 4), predicted boxes (m, 4) and their scores (m,); boxes are
        (x0, y0, x1, y1) in pixel-edge coordinates (x1 - x0 = width)."""
        if not len(gt_boxes) == len(pred_boxes) == len(scores):
            raise InputError(f"update_boxes needs one entry per image in each list, got {len(gt_boxes)} ground "
                             f"truth, {len(pred_boxes)} prediction and {len(scores)} score entries")
        for gt, pred, score in zip(gt_boxes, pred_boxes, scores):
            gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
            pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
            score = np.asarray(score, dtype=np.float64).ravel()
            if score.size != pred.shape[0]:
                raise InputError(f"{pred.shape[0]} predicted boxes but {score.size} scores")
            self._accumulate(_ImageBoxes(gt, pred, score))

    def _measure(self, frame: Frame) -> _ImageBoxes:
        conv = self.conventions
        gt = find_components(frame.label, conv.connectivity)
        pred = find_components(frame.above(conv.threshold, conv.target_inclusive), conv.connectivity)
        fg = np.flatnonzero(pred.labels)
        peaks = np.zeros(pred.count + 1)
        np.maximum.at(peaks, pred.labels.ravel()[fg], frame.probabilities(fg))
        return _ImageBoxes(gt.boxes.astype(np.float64), pred.boxes.astype(np.float64), peaks[1:])

    def _accumulate(self, rec: _ImageBoxes) -> None:
        self._images += 1
        self._targets += rec.gt.shape[0]
        order = np.argsort(-rec.scores, kind="mergesort")[: self.max_detections]
        ious = box_iou(rec.pred[order], rec.gt)
        matched = np.zeros((self.iou_thresholds.size, order.size), dtype=bool)
        for t, threshold in enumerate(self.iou_thresholds):
            taken = np.zeros(rec.gt.shape[0], dtype=bool)
            for d in range(order.size):
                best, best_gt = min(threshold, 1.0 - 1e-10), -1
                for g in range(rec.gt.shape[0]):  # COCO's rule: the last of equal best IoUs wins
                    if not taken[g] and ious[d, g] >= best:
                        best, best_gt = ious[d, g], g
                if best_gt >= 0:
                    taken[best_gt] = True
                    matched[t, d] = True
        self._scores.append(rec.scores[order])
        self._matched.append(matched)

    def get(self) -> BoxAPResult:
        n_t = self.iou_thresholds.size
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        matched = np.concatenate(self._matched, axis=1) if self._matched else np.zeros((n_t, 0), dtype=bool)
        order = np.argsort(-scores, kind="mergesort")
        ap = np.full(n_t, -1.0)
        recall = np.full(n_t, -1.0)
        if self._targets:
            for t in range(n_t):
                tp = np.cumsum(matched[t, order])
                fp = np.cumsum(~matched[t, order])
                rc = tp / self._targets
                pr = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
                pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
                idx = np.searchsorted(rc, _RECALL_POINTS, side="left")
                ap[t] = float(np.mean(np.where(idx < pr.size, pr[np.minimum(idx, max(pr.size - 1, 0))], 0.0))
                              if pr.size else 0.0)
                recall[t] = float(rc[-1]) if rc.size else 0.0
        valid = ap >= 0

        def at(iou: float) -> float:
            hit = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
            return float(ap[hit[0]]) if hit.size and ap[hit[0]] >= 0 else -1.0

        return BoxAPResult(self._images, self._targets, int(scores.size), self.iou_thresholds.copy(), ap, recall,
                           float(ap[valid].mean()) if valid.any() else -1.0, at(0.5), at(0.75),
                           float(recall[valid].mean()) if valid.any() else -1.0, self.max_detections,
                           component_conventions(self.conventions))

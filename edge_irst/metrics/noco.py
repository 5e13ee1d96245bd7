"""mNoCoAP: average precision of peak-point detections scored against a normalised-contrast ("NoCo") map of the
ground truth (Dai et al., OSCAR, IEEE TGRS 2023), averaged over NoCo thresholds 0.1 .. 0.9.

NoCo map, per ground-truth box (x0, y0, x1, y1), height h, width w: on the box grown by h rows and w columns on
each side (clipped to the image), a Gaussian of the normalised distance to the box centre (a 3h x 3w grid over
[-1.5, 1.5]^2, mu 0, sigma 1) times the contrast (I - min I over the grown box) / (max I over the box - that min
+ 0.01), min-max normalised (+0.001) over the grown box; a later target overwrites an earlier one's area.

Detections: the components of the prediction at the operating point, each reduced to its peak point with the
peak probability as score; the peak point is the (rounded) centroid of the component's highest-probability
pixels, so a flat (binary) prediction peaks at its centre rather than at its first pixel. Per image in score order, a
detection is a true positive when the NoCo map at its peak exceeds the NoCo threshold and the peak lies inside a
ground-truth box not yet taken (the first such box in label order); otherwise a false positive. AP is the area
under the precision envelope (VOC "area" mode) over all detections of the dataset ranked by score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from ..errors import InputError
from .base import Metric, jsonable
from .components import Components, find_components
from .conventions import component_conventions, make_conventions
from .inputs import Frame, frames_from

NOCO_THRESHOLDS = np.round(np.linspace(0.1, 0.9, 9), 2)


class _NoCoRecord(NamedTuple):
    targets: int
    scores: np.ndarray  # (m,)
    true_positive: np.ndarray  # bool (T, m)


@dataclass(frozen=True)
class NoCoAPResult:
    images: int
    targets: int
    detections: int
    noco_thresholds: np.ndarray
    ap: np.ndarray  # (T,)
    mnocoap: float
    conventions: dict  # how components were found and scored (conventions.component_conventions)

    def table(self) -> str:
        return (f"mNoCoAP {self.mnocoap:.4f} (NoCo thresholds {self.noco_thresholds[0]:g}..{self.noco_thresholds[-1]:g}"
                f", {self.detections} peak detections, {self.targets} targets; {self.conventions['threshold']}, "
                f"{self.conventions['components']})")

    def to_dict(self) -> dict:
        return {k: jsonable(v) for k, v in self.__dict__.items()}


def noco_map(image: np.ndarray, gt: Components, mu: float = 0.0, sigma: float = 1.0) -> np.ndarray:
    """float64 HxW NoCo map of a grey float64 HxW image and its ground-truth components."""
    height, width = image.shape
    out = np.zeros((height, width))
    for x0, y0, x1, y1 in gt.boxes:
        h, w = int(y1 - y0), int(x1 - x0)
        gy, gx = np.meshgrid(np.linspace(-1.5, 1.5, 3 * h), np.linspace(-1.5, 1.5, 3 * w), indexing="ij")
        gauss = np.exp(-((np.hypot(gx, gy) - mu) ** 2) / (2.0 * sigma ** 2))
        top, bottom = max(0, y0 - h), min(height, y1 + h)
        left, right = max(0, x0 - w), min(width, x1 + w)
        gauss = gauss[top - (y0 - h): 3 * h - ((y1 + h) - bottom), left - (x0 - w): 3 * w - ((x1 + w) - right)]
        region = image[top:bottom, left:right]
        background_min = region.min()
        contrast = (region - background_min) / (image[y0:y1, x0:x1].max() - background_min + 0.01)
        noco = gauss * contrast
        out[top:bottom, left:right] = (noco - noco.min()) / (noco.max() - noco.min() + 0.001)
    return out


def _voc_area_ap(true_positive: np.ndarray, targets: int) -> float:
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    recall = np.concatenate([[0.0], tp / max(targets, 1), [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


class NoCoAP(Metric):
    """mNoCoAP. update(labels, preds, images): images are the frames (HxW grey or HxWx3 BGR), needed for the
    contrast term. threshold: operating point (probability) that defines the detected components."""

    name = "mnocoap"

    def __init__(self, *, threshold: Optional[float] = None, compat: Optional[str] = None,
                 connectivity: Optional[int] = None, noco_thresholds=NOCO_THRESHOLDS, workers: Optional[int] = None):
        super().__init__(workers)
        self.conventions = make_conventions(compat, threshold=threshold, connectivity=connectivity)
        self.noco_thresholds = np.asarray(noco_thresholds, dtype=np.float64).ravel()
        if self.noco_thresholds.size == 0:
            raise InputError("noco_thresholds is empty")
        self.reset()

    def update(self, labels, preds, images=None, *, layout=None, logits: bool = False) -> None:
        if images is None:
            raise InputError("NoCoAP needs the input images: update(labels, preds, images)")
        self.add_frames(frames_from(labels, preds, layout=layout, logits=logits, images=images))

    def reset(self) -> None:
        self._records: list[_NoCoRecord] = []

    def _measure(self, frame: Frame) -> _NoCoRecord:
        if frame.image is None:
            raise InputError("NoCoAP needs each frame's image (update(labels, preds, images); in evaluate(): "
                             "with_images=True)")
        conv = self.conventions
        gt = find_components(frame.label, conv.connectivity)
        pred = find_components(frame.above(conv.threshold, conv.target_inclusive), conv.connectivity)
        fg = np.flatnonzero(pred.labels)
        ids, probs = pred.labels.ravel()[fg] - 1, frame.probabilities(fg)
        scores = np.full(pred.count, -np.inf)
        np.maximum.at(scores, ids, probs)
        plateau = probs == scores[ids]  # the component's highest-probability pixels
        pixel_rows, pixel_cols = np.divmod(fg[plateau], frame.shape[1])
        counts = np.bincount(ids[plateau], minlength=pred.count)
        rows = np.floor(np.bincount(ids[plateau], pixel_rows, pred.count) / counts + 0.5).astype(np.int64)
        cols = np.floor(np.bincount(ids[plateau], pixel_cols, pred.count) / counts + 0.5).astype(np.int64)
        values = noco_map(frame.image, gt)[rows, cols]
        inside = ((gt.boxes[None, :, 0] <= cols[:, None]) & (cols[:, None] < gt.boxes[None, :, 2])
                  & (gt.boxes[None, :, 1] <= rows[:, None]) & (rows[:, None] < gt.boxes[None, :, 3]))
        rank = np.argsort(-scores, kind="mergesort")
        true_positive = np.zeros((self.noco_thresholds.size, scores.size), dtype=bool)
        for t, threshold in enumerate(self.noco_thresholds):
            taken = np.zeros(gt.count, dtype=bool)
            for d in rank:
                free = np.flatnonzero(inside[d] & ~taken)
                if values[d] > threshold and free.size:
                    taken[free[0]] = True
                    true_positive[t, d] = True
        return _NoCoRecord(gt.count, scores, true_positive)

    def _accumulate(self, record: _NoCoRecord) -> None:
        self._records.append(record)

    def get(self) -> NoCoAPResult:
        targets = sum(r.targets for r in self._records)
        scores = np.concatenate([r.scores for r in self._records]) if self._records else np.zeros(0)
        tp = (np.concatenate([r.true_positive for r in self._records], axis=1) if self._records
              else np.zeros((self.noco_thresholds.size, 0), dtype=bool))
        order = np.argsort(-scores, kind="mergesort")
        ap = np.array([_voc_area_ap(tp[t, order], targets) if targets else 0.0
                       for t in range(self.noco_thresholds.size)])
        return NoCoAPResult(len(self._records), targets, int(scores.size), self.noco_thresholds.copy(), ap,
                            float(ap.mean()), component_conventions(self.conventions))

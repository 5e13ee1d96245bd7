"""What every metric shares: update/get/reset over images, per-image work on a thread pool, safe ratios, curves.

Per-image work (`_measure`) is a pure function of one Frame, run on a shared thread pool: OpenCV's labelling and
numpy's large-array operations release the GIL. Records are accumulated in input order (`_accumulate`), so
results do not depend on thread scheduling, down to float summation order.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from .inputs import Frame, frames_from

_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="edge-irst-metrics")
        return _POOL


class Metric:
    """Base of the metric classes: `update(labels, preds)` accumulates, `get()` returns results, `reset()` clears.

    workers: 1 measures images one after another on the calling thread; None (default) uses a shared pool of
    min(8, CPU count) threads when a batch holds more than one image.
    """

    name = "metric"

    def __init__(self, workers: Optional[int] = None):
        self.workers = default_workers() if workers is None else max(1, int(workers))

    def update(self, labels, preds, *, layout=None, logits: bool = False) -> None:
        """Accumulate a batch. labels / preds: arrays, tensors, paths or lists of them (edge_irst.metrics.inputs);
        layout: "HW", "HWC", "CHW", "BHW", "BHWC", "BCHW", a (labels, preds) pair of them, or None to guess where
        unambiguous; logits: the prediction maps are logits (thresholded at logit(threshold), no sigmoid)."""
        self.add_frames(frames_from(labels, preds, layout=layout, logits=logits))

    def add_frames(self, frames: Sequence[Frame]) -> None:
        """Accumulate frames already built by `edge_irst.metrics.inputs.make_frame` (the evaluation loop's path)."""
        if self.workers > 1 and len(frames) > 1:
            records = list(_pool().map(self._measure, frames))
        else:
            records = [self._measure(frame) for frame in frames]
        for record in records:
            self._accumulate(record)

    def _measure(self, frame: Frame):
        raise NotImplementedError

    def _accumulate(self, record) -> None:
        raise NotImplementedError

    def get(self):
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


def ratio(num, den, zero_division: float = 0.0):
    """num / den elementwise (float64), with `zero_division` where den == 0 (never uninitialised memory)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(zero_division))
    np.divide(num, den, out=out, where=den != 0)
    return out if out.ndim else float(out)


def f1_score(precision, recall):
    p, r = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    return ratio(2.0 * p * r, p + r)


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under the polyline through (x, y), in the given point order (x monotone)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0)) if x.size > 1 else 0.0


def step_average_precision(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """Binned AP along the last axis: thresholds ascending, (recall 0, precision 1) appended, then
    AP = sum_k (recall_k - recall_k+1) * precision_k (torchmetrics' binned AP, used by STD-EvalKit)."""
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    lead = precision.shape[:-1]
    precision = np.concatenate([precision, np.ones(lead + (1,))], axis=-1)
    recall = np.concatenate([recall, np.zeros(lead + (1,))], axis=-1)
    return np.sum((recall[..., :-1] - recall[..., 1:]) * precision[..., :-1], axis=-1)  # not negated: no -0.0


def format_grid(rows: list) -> str:
    """Rows of cells (the first row a header) -> right-aligned text columns."""
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).rjust(w) for cell, w in zip(row, widths)) for row in rows)


def format_value(value, spec: str = ".5f") -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def result_dict(result, with_conventions: bool = True) -> dict:
    """A result dataclass -> JSON types; its `conventions` as their own dict (or left out)."""
    doc = {k: jsonable(v) for k, v in result.__dict__.items() if k != "conventions"}
    if with_conventions:
        doc["conventions"] = result.conventions.to_dict()
    return doc


def jsonable(value):
    """Result values -> JSON types (arrays to lists, numpy scalars to Python, non-finite floats to strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if np.isfinite(value) else str(value)
    return value

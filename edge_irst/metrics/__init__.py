"""Infrared small-target metrics with declared conventions.

One API for every metric: `m.update(labels, preds)` accumulates a batch, `m.get()` returns a result (a frozen
dataclass with `to_dict()`; the suites also print as a table), `m.reset()` clears.

    from edge_irst.metrics import IrstdMetrics
    m = IrstdMetrics()                                  # pixel + target metrics, Hungarian matching, d = 1..10
    m.update(masks, logits, logits=True, layout="BHW")  # numpy / torch / paths / lists; layouts explicit
    print(m.get())                                      # IoU, nIoU, Pd, Fa @3px, F1, AUC + the conventions used

Metrics: PixelMetrics (P/R/F1/IoU/nIoU, ROC/PR/AP), TargetMetrics (Pd/Fa, target P/R/F1, target AP, Pd-Fa ROC,
target-matched nIoU over distance thresholds), IrstdMetrics (both in one pass), BoxAP (COCO box mAP), NoCoAP
(mNoCoAP). Compatibility: compat="stdeval" reproduces STD-EvalKit, compat="dnanet" the (defective) DNANet Pd/Fa;
see edge_irst.metrics.conventions. Dataset loop: evaluate(), evaluate_items(), prediction_folder().

Needs numpy and OpenCV only (connected components: cv2.connectedComponentsWithStats, 8-connectivity); plots need
matplotlib (edge_irst.metrics.plots, imported on use).
"""
from __future__ import annotations

from .boxes import BoxAP, BoxAPResult
from .conventions import COMPAT_MODES, MATCHING_RULES, OVERLAP_GATES, Conventions, make_conventions
from .evaluate import EvalItem, EvaluationReport, dataset_items, evaluate, evaluate_items, prediction_folder
from .inputs import LAYOUTS, Frame, frames_from, make_frame
from .irstd import IrstdMetrics, IrstdResult
from .noco import NoCoAP, NoCoAPResult
from .pixel import PixelMetrics, PixelResult
from .target import TargetMetrics, TargetResult

__all__ = [
    "BoxAP", "BoxAPResult", "COMPAT_MODES", "Conventions", "EvalItem", "EvaluationReport", "Frame", "IrstdMetrics",
    "IrstdResult", "LAYOUTS", "MATCHING_RULES", "NoCoAP", "NoCoAPResult", "OVERLAP_GATES", "PixelMetrics",
    "PixelResult", "TargetMetrics", "TargetResult", "dataset_items", "evaluate", "evaluate_items", "frames_from",
    "make_conventions", "make_frame", "prediction_folder",
]

"""The conventions a metric figure follows, declared with every result.

IRSTD codebases differ silently in how they threshold, match and count (>= vs >, greedy vs optimal matching, how
false-alarm pixels are counted, which point a Pd-Fa ROC starts from). A `Conventions` object fixes all of them for
one metric run and travels in its result (`result.conventions`, the JSON output and the printed table), so a
reader always knows which convention a number follows.

Compatibility modes (`compat=`):
- "none" (default): probability > threshold (logit > logit(threshold)) everywhere, Hungarian matching (most
  matches, then least total centroid distance), float64 centroids, 0/0 -> 0, Pd-Fa ROC starting at (Fa 0, Pd 0),
  pixel ROC with its (0, 0) and (1, 1) end points.
- "stdeval": STD-EvalKit (formerly BinarySOSMetrics) as published: pixel metrics count `prob > thr`, target-level
  metrics and all curves `prob >= thr`, greedy first-match in label order, float32 centroids, confidence and pixel
  curve thresholds linspace(0, 1, 10), a (Fa 0, Pd 1) point prepended to the Pd-Fa ROC, no end points added to
  the pixel ROC. Reproduces that toolkit's figures (tests/test_metrics_conformance.py). Its 0/0 cells hold
  uninitialised memory there; here they are 0.
- "dnanet": the Pd/Fa of the DNANet / early BasicIRSTD code, DEFECTIVE on purpose so published tables can be
  compared: greedy first-match, and the false-alarm pixel count drops every unmatched component whose AREA equals
  the area of a matched one (on the STD-EvalKit test data it reports FD 129 instead of 138). Everything else as
  in "none". Never use it to report new results.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError, UnknownNameError

COMPAT_MODES = ("none", "stdeval", "dnanet")
MATCHING_RULES = ("hungarian", "greedy")
OVERLAP_GATES = ("none", "mask", "box")
CONNECTIVITIES = (4, 8)
DEFAULT_DISTANCES = tuple(float(d) for d in range(1, 11))
REPORT_DISTANCE = 3.0


@dataclass(frozen=True)
class Conventions:
    """Every choice that changes a figure. Comparisons are written as the operator applied to `score OP t`."""

    compat: str = "none"
    threshold: float = 0.5  # operating point, as a probability (on logits: logit > log(t / (1 - t)))
    pixel_comparison: str = ">"  # pixel P/R/F1/IoU/nIoU
    target_comparison: str = ">"  # components for every target-level figure
    curve_comparison: str = ">"  # pixel ROC / PR bins
    matching: str = "hungarian"
    gate: str = "none"  # a pair also needs mask or box IoU > 0
    connectivity: int = 8
    centroid_dtype: str = "float64"
    fa_rule: str = "pixels"  # "pixels" or "dnanet-area-dedup"
    pd_fa_roc_start: tuple = (0.0, 0.0)  # (Fa, Pd) point put before the sorted Pd-Fa curve
    pixel_roc_end_points: bool = True
    zero_division: float = 0.0

    @property
    def target_inclusive(self) -> bool:
        return self.target_comparison == ">="

    @property
    def pixel_inclusive(self) -> bool:
        return self.pixel_comparison == ">="

    @property
    def curve_inclusive(self) -> bool:
        return self.curve_comparison == ">="

    def describe(self) -> dict:
        """One human-readable line per convention (printed under tables, written to JSON)."""
        t = self.threshold
        logit_t = float(np.log(t / (1.0 - t))) if 0.0 < t < 1.0 else (float("-inf") if t <= 0 else float("inf"))
        if self.fa_rule == "pixels":
            fa = "Fa = false-alarm pixels (pixels of unmatched predicted components) / all pixels, dataset sums"
        else:
            fa = ("Fa = DNANet's DEFECTIVE count: areas of unmatched components, except any whose area equals a "
                  "matched component's area, / all pixels")
        if self.matching == "hungarian":
            matching = "hungarian: most matched pairs, then least total centroid distance (optimal)"
        else:
            matching = ("greedy: each ground-truth target in label order takes the first untaken prediction in "
                        "label order (STD-EvalKit / DNANet first-match)")
        start_fa, start_pd = self.pd_fa_roc_start
        return {
            "compat": self.compat,
            "threshold": (f"pixel: probability {self.pixel_comparison} {t:g}; target: probability "
                          f"{self.target_comparison} {t:g}; on logits the same point is logit "
                          f"{self.target_comparison} {logit_t:g} (no sigmoid rounding); integer maps are levels /255 "
                          f"(16-bit /65535) or 0/1 masks as declared, one reading per prediction folder; "
                          f"undeclared, a map whose maximum is <= 1 is a mask"),
            "labels": "any non-zero label pixel is target",
            "components": f"{self.connectivity}-connected, numbered in raster order of their first pixel",
            "centroid": f"unweighted mean (row, col) of a component's pixels, {self.centroid_dtype}",
            "distance": "Euclidean centroid distance strictly below each distance threshold d (px)",
            "gate": ("none" if self.gate == "none"
                     else f"a pair also needs {self.gate} IoU > 0"),
            "matching": matching,
            "pd": "Pd = matched ground-truth targets / ground-truth targets, dataset sums",
            "fa": fa,
            "target_precision": "target precision = matched / predicted components, recall = Pd",
            "target_niou": "target nIoU = sum of matched pairs' mask IoU / ground-truth targets",
            "pixel_niou": "pixel nIoU = mean over images of per-image IoU (an image with empty union scores 0)",
            "curves": (f"pixel ROC/PR bins count probability {self.curve_comparison} t, target-level sweeps "
                       f"probability {self.target_comparison} t; AP = sum over ascending thresholds of "
                       f"(recall_k - recall_k+1) * precision_k, with (recall 0, precision 1) appended; pixel "
                       f"PR points where nothing is predicted (precision undefined) are left out of the PR curve"),
            "pd_fa_roc": (f"Pd-Fa points sorted by Fa, ({start_fa:g}, {start_pd:g}) put first, trapezoid AUC"
                          + ("; (0, 1) is STD-EvalKit's start point and dominates the AUC"
                             if start_pd == 1.0 else "")),
            "pixel_roc": ("binned (fpr, tpr), trapezoid AUC" + (" with (0, 0) and (1, 1) end points"
                                                                 if self.pixel_roc_end_points else
                                                                 ", no end points added (torchmetrics binned)")),
            "zero_division": f"0/0 ratios are {self.zero_division:g}",
        }

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pd_fa_roc_start"] = list(self.pd_fa_roc_start)
        d["description"] = self.describe()
        return d


_PRESETS = {
    "none": Conventions(),
    "stdeval": Conventions(compat="stdeval", target_comparison=">=", curve_comparison=">=", matching="greedy",
                           centroid_dtype="float32", pd_fa_roc_start=(0.0, 1.0), pixel_roc_end_points=False),
    "dnanet": Conventions(compat="dnanet", matching="greedy", fa_rule="dnanet-area-dedup"),
}


def component_conventions(conv: Conventions) -> dict:
    """The conventions of the metrics that score predicted components (box mAP, mNoCoAP): how they are found."""
    return {"compat": conv.compat,
            "threshold": f"components of probability {conv.target_comparison} {conv.threshold:g}",
            "components": f"{conv.connectivity}-connected (labels and predictions alike)",
            "score": "a predicted component's peak probability"}


def make_conventions(compat: Optional[str] = None, *, matching: Optional[str] = None, gate: Optional[str] = None,
                     threshold: Optional[float] = None, connectivity: Optional[int] = None) -> Conventions:
    """The preset of `compat` ("none" when None), with the options a compatibility mode leaves open applied.

    A compatibility mode fixes its matching rule and connectivity; asking for others is an error rather than a
    silently different figure under the mode's name. connectivity: 8 (default) or 4 (scipy.ndimage.label's
    default, which some published evaluations used without saying).
    """
    mode = "none" if compat is None else str(compat)
    if mode not in _PRESETS:
        raise UnknownNameError("compat mode", mode, COMPAT_MODES)
    conv = _PRESETS[mode]
    changes = {}
    if matching is not None:
        if matching not in MATCHING_RULES:
            raise UnknownNameError("matching rule", matching, MATCHING_RULES)
        if mode != "none" and matching != conv.matching:
            raise InputError(f"compat={mode!r} fixes matching={conv.matching!r}, got matching={matching!r}: drop "
                             f"matching= or use compat=None")
        changes["matching"] = matching
    if connectivity is not None:
        if connectivity not in CONNECTIVITIES:
            raise InputError(f"connectivity must be 4 or 8, got {connectivity!r}")
        if mode != "none" and connectivity != conv.connectivity:
            raise InputError(f"compat={mode!r} fixes connectivity={conv.connectivity}, got {connectivity}: drop "
                             f"connectivity= or use compat=None")
        changes["connectivity"] = int(connectivity)
    if gate is not None:
        if gate not in OVERLAP_GATES:
            raise UnknownNameError("overlap gate", gate, OVERLAP_GATES)
        changes["gate"] = gate
    if threshold is not None:
        threshold = float(threshold)
        if not 0.0 < threshold < 1.0:
            raise InputError(f"threshold is a probability strictly between 0 and 1, got {threshold}: for a logit "
                             f"threshold L pass 1 / (1 + exp(-L))")
        changes["threshold"] = threshold
    return dataclasses.replace(conv, **changes)


def default_confidence_thresholds(conv: Conventions) -> np.ndarray:
    """Thresholds (probabilities, ascending) of the target-level AP and Pd-Fa ROC sweeps."""
    if conv.compat == "stdeval":
        return np.linspace(0.0, 1.0, 10)
    return np.round(np.linspace(0.1, 0.9, 9), 10)


def default_pixel_thresholds(conv: Conventions) -> np.ndarray:
    """Bins (probabilities, ascending) of the pixel ROC / PR curves."""
    if conv.compat == "stdeval":
        return np.linspace(0.0, 1.0, 10)
    return np.linspace(0.0, 1.0, 101)


def as_thresholds(values, what: str) -> np.ndarray:
    """A 1-D float64 array of probabilities in [0, 1], ascending; an int n means linspace(0, 1, n)."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        if values < 2:
            raise InputError(f"{what}: an integer count of thresholds must be >= 2, got {values}")
        return np.linspace(0.0, 1.0, int(values))
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise InputError(f"{what} must be probabilities in [0, 1], got {values!r}")
    if np.any(np.diff(arr) <= 0):
        raise InputError(f"{what} must be strictly ascending, got {values!r}")
    return arr


def as_distances(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)) or arr.min() <= 0:
        raise InputError(f"distance thresholds must be positive pixel distances, got {values!r}")
    if np.any(np.diff(arr) <= 0):
        raise InputError(f"distance thresholds must be strictly ascending, got {values!r}")
    return arr

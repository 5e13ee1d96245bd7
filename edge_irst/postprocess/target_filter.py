"""The target filter (the paper's eq. 4).

A target is kept only if size_min < size < size_max and ratio_min < ratio < ratio_max, where size is its pixel
count and ratio its box width / height (Detections.size / .aspect_ratio, in the labelled grid). The authors'
real-time code uses strict bounds; their GUI uses inclusive ones: `inclusive` chooses.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Optional, Union

import numpy as np

from ..detections import Detections
from ..errors import InputError, UnknownNameError


@dataclass(frozen=True)
class TargetFilter:
    """Bounds on target size (pixels) and aspect ratio (w / h); None = unbounded on that side.

    inclusive=False keeps size_min < size < size_max (the authors' real-time code); inclusive=True keeps
    size_min <= size <= size_max (their GUI). The same rule applies to the ratio bounds.
    The default TargetFilter() keeps everything (the "none" preset).
    """

    size_min: Optional[float] = None
    size_max: Optional[float] = None
    ratio_min: Optional[float] = None
    ratio_max: Optional[float] = None
    inclusive: bool = False

    def __post_init__(self):
        for name in ("size_min", "size_max", "ratio_min", "ratio_max"):
            value = getattr(self, name)
            _check_bound(name, value, positive=name.startswith("ratio"))
            if value is not None:
                # Plain Python numbers from here on: a numpy scalar would not go into a JSON record, and a
                # Fraction compares exactly in numpy but as its float in the C labeller, which would then keep
                # other targets than __call__ does.
                object.__setattr__(self, name, int(value) if isinstance(value, numbers.Integral) else float(value))
        for low, high in (("size_min", "size_max"), ("ratio_min", "ratio_max")):
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is not None and high_value is not None and low_value > high_value:
                raise InputError(f"TargetFilter: {low} = {low_value!r} > {high} = {high_value!r}; "
                                 f"expected {low} <= {high}")
        if not isinstance(self.inclusive, (bool, np.bool_)):
            raise InputError(f"TargetFilter.inclusive = {self.inclusive!r}; expected True (<=) or False (<)")
        object.__setattr__(self, "inclusive", bool(self.inclusive))
        # (column, comparison, bound) per bound that is set, built once: keep() runs on every frame.
        above = np.greater_equal if self.inclusive else np.greater
        below = np.less_equal if self.inclusive else np.less
        checks = tuple((column, compare, bound) for column, compare, bound in (
            ("size", above, self.size_min), ("size", below, self.size_max),
            ("aspect_ratio", above, self.ratio_min), ("aspect_ratio", below, self.ratio_max)) if bound is not None)
        object.__setattr__(self, "_checks", checks)
        # c_bounds: the same bounds as the C labeller takes them (irst_filter in labeller_core.h): (size_min,
        # size_max, ratio_min, ratio_max, inclusive), open sides as infinities.
        object.__setattr__(self, "c_bounds", (
            -math.inf if self.size_min is None else float(self.size_min),
            math.inf if self.size_max is None else float(self.size_max),
            -math.inf if self.ratio_min is None else float(self.ratio_min),
            math.inf if self.ratio_max is None else float(self.ratio_max), bool(self.inclusive)))

    @classmethod
    def preset(cls, name: str) -> "TargetFilter":
        """A named filter: 'none' (keeps everything) or 'authors' (area 5..100, ratio 0.2..5, exclusive)."""
        if name not in FILTER_PRESETS:
            raise UnknownNameError("target filter preset", name, FILTER_PRESETS)
        return FILTER_PRESETS[name]

    def to_dict(self) -> dict:
        """The bounds (None = open side) and inclusive, as plain values (JSON records, summaries)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        """One line for logs and summaries: 'size_min 5, size_max 100 (strict)', or 'none'."""
        bounds = [f"{name} {value:g}" for name, value in self.to_dict().items()
                  if name != "inclusive" and value is not None]
        return ", ".join(bounds) + (" (inclusive)" if self.inclusive else " (strict)") if bounds else "none"

    @property
    def keeps_everything(self) -> bool:
        """True when no bound is set (the "none" preset): filtering is then skipped."""
        return not self._checks

    def keep(self, detections: Detections) -> np.ndarray:
        """bool (n,): True for the rows of `detections` this filter keeps."""
        return self.keep_values(detections.size, detections.aspect_ratio)

    def keep_values(self, size: np.ndarray, aspect_ratio: np.ndarray) -> np.ndarray:
        """bool (n,) from the columns themselves: size int64 (n,) pixels, aspect_ratio float64 (n,) w / h."""
        if not self._checks:
            return np.ones(len(size), bool)
        values = {"size": size, "aspect_ratio": aspect_ratio}
        (column, compare, bound), *others = self._checks
        kept = compare(values[column], bound)
        for column, compare, bound in others:
            np.logical_and(kept, compare(values[column], bound), out=kept)
        return kept

    def __call__(self, detections: Detections) -> Detections:
        """The kept rows (the same object when the filter keeps everything)."""
        return detections if self.keeps_everything else detections[self.keep(detections)]


def _check_bound(name: str, value, positive: bool):
    """A bound is None or a finite real: > 0 for a ratio, >= 0 for a size."""
    if value is None:
        return
    if (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
            and (value > 0 if positive else value >= 0)):
        return
    what = "> 0 (box width / height)" if positive else ">= 0 (pixels)"
    raise InputError(f"TargetFilter.{name} = {value!r}; expected None (no bound) or a finite number {what}")


FILTER_PRESETS = {
    "none": TargetFilter(),
    "authors": TargetFilter(size_min=5, size_max=100, ratio_min=0.2, ratio_max=5.0, inclusive=False),
}
FILTER_FIELDS = tuple(f.name for f in fields(TargetFilter))


def as_target_filter(value: Union[TargetFilter, str]) -> TargetFilter:
    """A TargetFilter, or the preset of that name."""
    if isinstance(value, str):
        return TargetFilter.preset(value)
    if not isinstance(value, TargetFilter):
        raise InputError(f"target_filter = {value!r}; expected a TargetFilter or a preset name "
                         f"({', '.join(FILTER_PRESETS)})")
    return value

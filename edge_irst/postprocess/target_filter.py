"""The target filter (the paper's eq. 4), the postprocess settings, and a thread-safe live holder for them.

A target is kept only if size_min < size < size_max and ratio_min < ratio < ratio_max, where size is its pixel
count and ratio its box width / height (Detections.size / .aspect_ratio, in the labelled grid). The authors'
real-time code uses strict bounds; their GUI uses inclusive ones: `inclusive` chooses.
"""
from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Optional, Union

import numpy as np

from ..detections import Detections
from ..errors import InputError, UnknownNameError
from .labeller import checked_threshold, label_targets


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
            _check_bound(name, getattr(self, name), positive=name.startswith("ratio"))
        for low, high in (("size_min", "size_max"), ("ratio_min", "ratio_max")):
            if getattr(self, low) is not None and getattr(self, high) is not None \
                    and getattr(self, low) > getattr(self, high):
                raise InputError(f"TargetFilter: {low} = {getattr(self, low)!r} > {high} = {getattr(self, high)!r}; "
                                 f"expected {low} <= {high}")
        if not isinstance(self.inclusive, (bool, np.bool_)):
            raise InputError(f"TargetFilter.inclusive = {self.inclusive!r}; expected True (<=) or False (<)")
        # (column, comparison, bound) per bound that is set, built once: keep() runs on every frame.
        above = np.greater_equal if self.inclusive else np.greater
        below = np.less_equal if self.inclusive else np.less
        checks = tuple((column, compare, bound) for column, compare, bound in (
            ("size", above, self.size_min), ("size", below, self.size_max),
            ("aspect_ratio", above, self.ratio_min), ("aspect_ratio", below, self.ratio_max)) if bound is not None)
        object.__setattr__(self, "_checks", checks)

    @classmethod
    def preset(cls, name: str) -> "TargetFilter":
        """A named filter: 'none' (keeps everything) or 'authors' (area 5..100, ratio 0.2..5, exclusive)."""
        if name not in FILTER_PRESETS:
            raise UnknownNameError("target filter preset", name, FILTER_PRESETS)
        return FILTER_PRESETS[name]

    @property
    def keeps_everything(self) -> bool:
        return not self._checks

    def keep(self, detections: Detections) -> np.ndarray:
        """bool (n,): True for the rows of `detections` this filter keeps."""
        if not self._checks:
            return np.ones(len(detections), bool)
        (column, compare, bound), *others = self._checks
        kept = compare(getattr(detections, column), bound)
        for column, compare, bound in others:
            np.logical_and(kept, compare(getattr(detections, column), bound), out=kept)
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
_FILTER_FIELDS = tuple(f.name for f in fields(TargetFilter))


def _as_filter(value: Union[TargetFilter, str]) -> TargetFilter:
    if isinstance(value, str):
        return TargetFilter.preset(value)
    if not isinstance(value, TargetFilter):
        raise InputError(f"target_filter = {value!r}; expected a TargetFilter or a preset name "
                         f"({', '.join(FILTER_PRESETS)})")
    return value


@dataclass(frozen=True)
class PostprocessSettings:
    """Everything the postprocessor needs per frame: the logit threshold and the target filter.

    threshold: pixels with logit > threshold are target pixels (float32 comparison; default 0.0, the paper's).
    target_filter: a TargetFilter or a preset name ('none', the default, or 'authors').
    """

    threshold: float = 0.0
    target_filter: TargetFilter = field(default_factory=TargetFilter)

    def __post_init__(self):
        object.__setattr__(self, "threshold", checked_threshold(self.threshold))
        object.__setattr__(self, "target_filter", _as_filter(self.target_filter))

    def apply(self, logits: np.ndarray, return_labels: bool = False, **frame_metadata):
        """label_targets(logits, self.threshold, ...) then the filter; same arguments and results.

        With return_labels the label image still holds the rejected targets too: Detections.label says which
        value of the image each kept row is.
        """
        result = label_targets(logits, self.threshold, return_labels, **frame_metadata)
        if return_labels:
            detections, labels = result
            return self.target_filter(detections), labels
        return self.target_filter(result)


class LiveSettings:
    """Thread-safe holder of the PostprocessSettings of a running stream.

    Any thread may call update(threshold=..., size_min=..., inclusive=..., target_filter="authors"); the stream
    calls snapshot() once per frame, so every frame is processed with one consistent set of values and the next
    frame after an update uses the new ones. An invalid update raises and changes nothing.
    """

    UPDATABLE = ("threshold", "target_filter", *_FILTER_FIELDS)

    def __init__(self, settings: Optional[PostprocessSettings] = None):
        self._lock = threading.Lock()
        self._settings = settings if settings is not None else PostprocessSettings()
        if not isinstance(self._settings, PostprocessSettings):
            raise InputError(f"LiveSettings: expected PostprocessSettings, received {type(settings).__name__}")

    def snapshot(self) -> PostprocessSettings:
        """The current settings (immutable: safe to use for a whole frame while others update)."""
        with self._lock:
            return self._settings

    def update(self, **changes) -> PostprocessSettings:
        """Applies the changes atomically and returns the new settings.

        Keys: threshold, target_filter (a TargetFilter or preset name, applied before the single bounds),
        size_min, size_max, ratio_min, ratio_max, inclusive.
        """
        unknown = sorted(set(changes) - set(self.UPDATABLE))
        if unknown:
            raise InputError(f"LiveSettings.update: unknown setting(s) {', '.join(unknown)}; "
                             f"expected some of {', '.join(self.UPDATABLE)}")
        with self._lock:
            current = self._settings
            target_filter = _as_filter(changes.get("target_filter", current.target_filter))
            bounds = {name: changes[name] for name in _FILTER_FIELDS if name in changes}
            if bounds:
                target_filter = replace(target_filter, **bounds)
            self._settings = replace(current, threshold=changes.get("threshold", current.threshold),
                                     target_filter=target_filter)
            return self._settings

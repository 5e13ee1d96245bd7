"""The postprocess settings of a stream (threshold + target filter) and a thread-safe live holder for them."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from ..errors import InputError
from .labeller import checked_threshold, label_targets
from .target_filter import FILTER_FIELDS, TargetFilter, as_target_filter


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
        object.__setattr__(self, "target_filter", as_target_filter(self.target_filter))

    def apply(self, logits: np.ndarray, return_labels: bool = False, **frame_metadata):
        """label_targets(logits, self.threshold, return_labels, target_filter=self.target_filter, ...).

        With return_labels the label image still holds the rejected targets too: Detections.label says which
        value of the image each kept row is.
        """
        return label_targets(logits, self.threshold, return_labels, target_filter=self.target_filter,
                             **frame_metadata)


class LiveSettings:
    """Thread-safe holder of the PostprocessSettings of a running stream.

    Any thread may call update(threshold=..., size_min=..., inclusive=..., target_filter="authors"); the stream
    calls snapshot() once per frame, so every frame is processed with one consistent set of values and the next
    frame after an update uses the new ones. An invalid update raises and changes nothing.
    """

    UPDATABLE = ("threshold", "target_filter", *FILTER_FIELDS)

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
            target_filter = as_target_filter(changes.get("target_filter", current.target_filter))
            bounds = {name: changes[name] for name in FILTER_FIELDS if name in changes}
            if bounds:
                target_filter = replace(target_filter, **bounds)
            self._settings = replace(current, threshold=changes.get("threshold", current.threshold),
                                     target_filter=target_filter)
            return self._settings

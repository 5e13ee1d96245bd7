"""Postprocessing of logit maps: eight-connected labelling with per-target statistics, and the target filter.

    from edge_irst.postprocess import label_targets, TargetFilter, LiveSettings
    detections = label_targets(logits)                        # float32 (H, W) -> Detections
    kept = TargetFilter.preset("authors")(detections)         # the paper's eq. 4 ...
    kept = label_targets(logits, target_filter="authors")     # ... or applied inside the labeller (faster)

The labelling runs in a C extension (edge_irst/postprocess/_labeller.c, built at install) or, where it could
not be built or EDGE_IRST_POSTPROCESS=opencv, in an OpenCV fallback with identical results. IMPLEMENTATION
says which one is active ("c" or "opencv"); implementation_info() says why.
"""
from .labeller import (ENVIRONMENT_VARIABLE, IMPLEMENTATION, available_implementations, checked_threshold,
                       implementation_info, label_targets)
from .settings import LiveSettings, PostprocessSettings
from .target_filter import FILTER_FIELDS, FILTER_PRESETS, TargetFilter

__all__ = [
    "ENVIRONMENT_VARIABLE", "FILTER_FIELDS", "FILTER_PRESETS", "IMPLEMENTATION", "LiveSettings", "PostprocessSettings",
    "TargetFilter", "available_implementations", "checked_threshold", "implementation_info", "label_targets",
]

"""The per-target record both labellers produce: a numpy structured dtype, one field per Detections column.

The C extension declares the same fields (IRST_TARGET_FIELDS in labeller_core.h) and exports them as
TARGET_FIELDS; edge_irst.postprocess refuses an extension whose list differs (a stale build) and falls back.
"""
from __future__ import annotations

import numpy as np

# (name, dtype) in the C struct's order. Box fields and peak positions are integer pixel indices stored as float64
# because Detections keeps them as float64 (they become fractional once mapped to source-frame pixels).
TARGET_FIELDS = (
    ("label", "i8"), ("size", "i8"),
    ("x", "f8"), ("y", "f8"), ("weighted_x", "f8"), ("weighted_y", "f8"),
    ("x_min", "f8"), ("y_min", "f8"), ("x_max", "f8"), ("y_max", "f8"), ("aspect_ratio", "f8"),
    ("peak_logit", "f8"), ("peak_x", "f8"), ("peak_y", "f8"), ("mean_logit", "f8"),
)
TARGET_RECORD = np.dtype([(name, "=" + kind) for name, kind in TARGET_FIELDS])

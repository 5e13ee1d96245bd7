"""Drawing detections on frames, for the video / image-folder / window sinks.

Boxes are drawn one pixel OUTSIDE each target (a small target stays visible under its box) and never smaller than
`min_box` px, with the target's row index above and a cross at its centroid.
"""
from __future__ import annotations

import cv2
import numpy as np

from .detections import Detections
from .errors import InputError
from .preprocess import RawMapping

BOX_COLOUR = (0, 255, 0)      # BGR
MARK_COLOUR = (0, 0, 255)
TEXT_COLOUR = (0, 255, 255)


def to_display(image: np.ndarray, raw: RawMapping = RawMapping()) -> np.ndarray:
    """A new uint8 HxWx3 BGR copy of a frame for drawing: grey and BGRA converted, uint16 raw mapped by `raw`.
    HxWx1 is taken as HxW, as the detector takes it."""
    shape = image.shape
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype == np.uint16 and image.ndim == 2:
        image = raw.apply(image).astype(np.uint8)
    if image.dtype != np.uint8:
        raise InputError(f"cannot display a {image.dtype} frame of shape {shape}: expected uint8 grey/BGR/BGRA "
                         f"or uint16 HxW / HxWx1 raw")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def draw_detections(canvas: np.ndarray, detections: Detections, min_box: int = 9) -> np.ndarray:
    """Draws `detections` (source-frame pixel coordinates) on the uint8 HxWx3 BGR `canvas` in place; returns it."""
    h, w = canvas.shape[:2]
    scale = max(0.35, min(h, w) / 700.0)
    half = min_box / 2.0
    for i in range(len(detections)):
        cx, cy = float(detections.x[i]), float(detections.y[i])
        x0 = int(np.floor(min(detections.x_min[i] - 1, cx - half)))
        y0 = int(np.floor(min(detections.y_min[i] - 1, cy - half)))
        x1 = int(np.ceil(max(detections.x_max[i] + 1, cx + half)))
        y1 = int(np.ceil(max(detections.y_max[i] + 1, cy + half)))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), BOX_COLOUR, 1, cv2.LINE_AA)
        cv2.drawMarker(canvas, (int(round(cx)), int(round(cy))), MARK_COLOUR, cv2.MARKER_CROSS, 5, 1)
        cv2.putText(canvas, str(i), (x0, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, 1,
                    cv2.LINE_AA)
    return canvas


def annotate(image: np.ndarray, detections: Detections, raw: RawMapping = RawMapping(), caption: str = "",
             min_box: int = 9) -> np.ndarray:
    """A new uint8 HxWx3 BGR image: the frame (to_display), its detections and an optional caption at top left."""
    canvas = draw_detections(to_display(image, raw), detections, min_box)
    if caption:
        scale = max(0.4, min(canvas.shape[:2]) / 600.0)
        cv2.putText(canvas, caption, (4, int(14 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, 1,
                    cv2.LINE_AA)
    return canvas


__all__ = ["annotate", "draw_detections", "to_display"]

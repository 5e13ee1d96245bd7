"""The labellers' output layout: two column blocks, one row per field, one column per target.

    ints:  int64   (len(INT_FIELDS), n)   label, size
    reals: float64 (len(REAL_FIELDS), n)  x, y, weighted_x, ... (Detections' float columns)

Both labellers return this, which is Detections' own storage: Detections.from_blocks() takes the rows as its
columns without copying. The C extension declares the same fields in the same order
(IRST_TARGET_FIELDS in labeller_core.h) and exports them as TARGET_FIELDS; edge_irst.postprocess refuses an
extension whose list differs (a stale build) and falls back.
"""
from __future__ import annotations

import numpy as np

from ..detections import BLOCK_INT_COLUMNS as INT_FIELDS
from ..detections import BLOCK_REAL_COLUMNS as REAL_FIELDS
# (name, numpy dtype string) in the C struct's order, as the extension exports it.
TARGET_FIELDS = tuple((name, "i8") for name in INT_FIELDS) + tuple((name, "f8") for name in REAL_FIELDS)
BYTES_PER_TARGET = 8 * len(TARGET_FIELDS)


_INT64, _FLOAT64 = np.dtype(np.int64), np.dtype(np.float64)
_INT_ROWS, _REAL_ROWS = len(INT_FIELDS), len(REAL_FIELDS)


def blocks_from_bytes(buffer: bytes) -> tuple:
    """(ints, reals) read-only views of the C extension's output: the int block, then the real block.

    Built with the ndarray constructor straight over the buffer (two calls instead of frombuffer + reshape +
    slicing + view: half the cost, which matters on a sparse frame, where the whole labelling takes microseconds).
    The views are read-only because bytes are immutable.
    """
    count = len(buffer) // BYTES_PER_TARGET
    return (np.ndarray((_INT_ROWS, count), _INT64, buffer),
            np.ndarray((_REAL_ROWS, count), _FLOAT64, buffer, _INT64.itemsize * _INT_ROWS * count))

"""Detections: the targets found in one frame, as a frozen dataclass of numpy columns (one row per target).

Coordinate convention (every coordinate column): x = column, y = row, in pixels, with pixel CENTRES at integer
coordinates; (0, 0) is the centre of the top-left pixel. Straight out of the labeller, coordinates are in the grid
of the labelled map (the model's output); `scaled()` maps them to source-frame pixels.

Box convention: x_min, y_min, x_max, y_max are INCLUSIVE pixel-centre coordinates: in the labelled grid the target's
pixels span columns x_min..x_max and rows y_min..y_max, so the box is x_max - x_min + 1 pixels wide (the paper's
width). The box therefore covers the area [x_min - 0.5, x_max + 0.5] x [y_min - 0.5, y_max + 0.5].

Adapters to other libraries (drawing, supervision, COCO) live outside this class.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .errors import InputError

_FLOAT = np.dtype(np.float64)
_INT = np.dtype(np.int64)

# Column name -> dtype, in the order rows and tables show them.
COLUMNS: dict = {
    "x": _FLOAT, "y": _FLOAT,
    "weighted_x": _FLOAT, "weighted_y": _FLOAT,
    "x_min": _FLOAT, "y_min": _FLOAT, "x_max": _FLOAT, "y_max": _FLOAT,
    "size": _INT, "aspect_ratio": _FLOAT,
    "peak_logit": _FLOAT, "peak_x": _FLOAT, "peak_y": _FLOAT, "mean_logit": _FLOAT,
    "label": _INT,
}
# Storage: every column is a row of one of two read-only blocks, int64 (2, n) and float64 (13, n), so indexing,
# filtering and scaling cost one numpy operation per block instead of one per column (measured here: a boolean
# mask over 15 separate columns took about three times as long as over the two blocks).
# The labellers produce the blocks directly (edge_irst/postprocess/records.py).
BLOCK_INT_COLUMNS = ("label", "size")
BLOCK_REAL_COLUMNS = ("x", "y", "weighted_x", "weighted_y", "x_min", "y_min", "x_max", "y_max", "aspect_ratio",
                      "peak_logit", "peak_x", "peak_y", "mean_logit")
_REAL_ROW = {name: i for i, name in enumerate(BLOCK_REAL_COLUMNS)}
_COLUMN_ROWS = {**{name: (0, i) for i, name in enumerate(BLOCK_INT_COLUMNS)}, **{name: (1, i) for name, i in
                                                                                  _REAL_ROW.items()}}
# Rows that are positions (points) in the frame, mapped by scaled() as pixel centres.
_POINT_X_ROWS = [_REAL_ROW[name] for name in ("x", "weighted_x", "peak_x")]
_POINT_Y_ROWS = [_REAL_ROW[name] for name in ("y", "weighted_y", "peak_y")]


@dataclass(frozen=True, eq=False, repr=False)
class Detections:
    """Targets of one frame, one row per target, every column a read-only 1-D numpy array of length n.

    x, y: float64, centroid = unweighted mean of the target's pixel coordinates.
    weighted_x, weighted_y: float64, centroid weighted by (logit - threshold); a target holding +inf logits is
        weighted by its +inf pixels only (their plain mean).
    x_min, y_min, x_max, y_max: float64, the inclusive box (module docstring); integer-valued in the labelled grid.
    size: int64, pixel count, in the labelled grid (never rescaled).
    aspect_ratio: float64, (x_max - x_min + 1) / (y_max - y_min + 1) in the labelled grid (never rescaled).
    peak_logit: float64, largest logit; peak_x, peak_y: float64, its position (first in raster order on ties).
    mean_logit: float64, mean logit over the target's pixels (+inf if one is +inf).
    label: int64, the target's value in the label image of the labelling that produced it (rows keep it through
        indexing and filtering, so the pixels of a kept target can still be found; after a filter it has gaps).
    frame_index: the frame's index in its stream, or None. timestamp: seconds (the source's clock), or None.
    frame_shape: (height, width[, channels]) of the source frame the coordinates refer to, or None.

    Rows straight from the labeller are in the raster order of each target's first pixel (row, then column).
    Indexing with an int, a slice, a boolean mask of length n or an integer array returns a new Detections:
    `d[d.size > 4]`, `d[0]` (one row), `d[np.argsort(-d.peak_logit)]`.
    """

    x: np.ndarray
    y: np.ndarray
    weighted_x: np.ndarray
    weighted_y: np.ndarray
    x_min: np.ndarray
    y_min: np.ndarray
    x_max: np.ndarray
    y_max: np.ndarray
    size: np.ndarray
    aspect_ratio: np.ndarray
    peak_logit: np.ndarray
    peak_x: np.ndarray
    peak_y: np.ndarray
    mean_logit: np.ndarray
    label: np.ndarray
    frame_index: Optional[int] = None
    timestamp: Optional[float] = None
    frame_shape: Optional[tuple] = None

    def __post_init__(self):
        length = None
        columns = {}
        for name, dtype in COLUMNS.items():
            column = _checked_column(name, getattr(self, name), dtype)
            if length is None:
                length = len(column)
            elif len(column) != length:
                raise InputError(f"Detections.{name}: expected shape ({length},) like Detections.x, "
                                 f"received shape {column.shape}; every column needs one value per target")
            columns[name] = column
        for name in COLUMNS:  # from now on every column is a row view of a block (see __getattr__)
            del self.__dict__[name]
        self.__dict__["_ints"] = _read_only(np.stack([columns[name] for name in BLOCK_INT_COLUMNS]))
        self.__dict__["_reals"] = _read_only(np.stack([columns[name] for name in BLOCK_REAL_COLUMNS]))
        self.__dict__.update(_checked_metadata(self.frame_index, self.timestamp, self.frame_shape))

    def __getattr__(self, name: str):
        """A column on first access: the row view of its block, then cached (called only when `name` is not in
        the instance's __dict__). Building all fifteen views per Detections cost about half as much as the C
        labelling of a sparse 256x256 map, and most consumers read a few columns only."""
        location = _COLUMN_ROWS.get(name)
        blocks = self.__dict__.get("_ints"), self.__dict__.get("_reals")
        if location is None or blocks[0] is None:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")
        column = blocks[location[0]][location[1]]
        self.__dict__[name] = column
        return column

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def empty(cls, frame_index: Optional[int] = None, timestamp: Optional[float] = None,
              frame_shape: Optional[tuple] = None) -> "Detections":
        """No targets (every column of length 0), with the given frame metadata."""
        return cls.from_blocks(np.empty((len(BLOCK_INT_COLUMNS), 0), _INT),
                               np.empty((len(BLOCK_REAL_COLUMNS), 0), _FLOAT),
                               frame_index=frame_index, timestamp=timestamp, frame_shape=frame_shape)

    @classmethod
    def from_blocks(cls, ints: np.ndarray, reals: np.ndarray, frame_index: Optional[int] = None,
                    timestamp: Optional[float] = None, frame_shape: Optional[tuple] = None) -> "Detections":
        """From the labellers' layout, without copying: ints int64 (2, n) = rows BLOCK_INT_COLUMNS, reals float64
        (13, n) = rows BLOCK_REAL_COLUMNS. The blocks become read-only (views, if they were writable)."""
        for name, block, dtype, rows in (("ints", ints, _INT, BLOCK_INT_COLUMNS),
                                         ("reals", reals, _FLOAT, BLOCK_REAL_COLUMNS)):
            if not (isinstance(block, np.ndarray) and block.dtype == dtype and block.ndim == 2
                    and block.shape[0] == len(rows)):
                raise InputError(f"Detections.from_blocks: {name} must be {dtype} of shape ({len(rows)}, n) "
                                 f"(rows {', '.join(rows)}), received {getattr(block, 'dtype', type(block))} of "
                                 f"shape {getattr(block, 'shape', None)}")
        if ints.shape[1] != reals.shape[1]:
            raise InputError(f"Detections.from_blocks: ints has {ints.shape[1]} targets, reals {reals.shape[1]}; "
                             f"expected the same number of columns")
        return cls._trusted(_read_only_view(ints), _read_only_view(reals),
                            _checked_metadata(frame_index, timestamp, frame_shape))

    @classmethod
    def _trusted(cls, ints: np.ndarray, reals: np.ndarray, metadata: dict) -> "Detections":
        """Construction without validation, for read-only blocks of the right dtypes and shapes that this module
        produced or from_blocks() checked, and metadata already checked."""
        detections = object.__new__(cls)
        detections.__dict__.update(metadata, _ints=ints, _reals=reals)
        return detections

    @classmethod
    def concatenate(cls, parts: Iterable["Detections"]) -> "Detections":
        """Rows of several Detections of the SAME frame (e.g. tiles already mapped by scaled()), in order.

        All parts must carry the same frame metadata; an empty list gives `Detections.empty()`.
        """
        parts = list(parts)
        if not parts:
            return cls.empty()
        first = parts[0]
        for i, part in enumerate(parts):
            if not isinstance(part, Detections):
                raise InputError(f"concatenate: part {i} is a {type(part).__name__}, expected Detections")
            if part._metadata() != first._metadata():
                raise InputError(f"concatenate: part {i} has frame metadata {part._metadata()}, part 0 has "
                                 f"{first._metadata()}; only detections of one frame can be concatenated")
        return cls._trusted(_read_only(np.concatenate([part._ints for part in parts], axis=1)),
                            _read_only(np.concatenate([part._reals for part in parts], axis=1)),
                            first._metadata())

    def __reduce__(self):
        """Pickles the two blocks and the metadata only: the cached column views would come back as copies of their
        own, and every array writable, so the restored object is rebuilt read-only through from_blocks()."""
        return _from_pickle, (self._ints, self._reals, self._metadata())

    # -- sequence behaviour ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._ints.shape[1]

    def __getitem__(self, key) -> "Detections":
        count = len(self)
        if type(key) is np.ndarray and key.dtype == np.bool_ and key.shape == (count,):
            pass  # the filter's case first: d[d.size > 4]
        elif isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            index = int(key)
            if not -count <= index < count:
                raise IndexError(f"target index {index} is out of range for {count} targets")
            key = slice(index % count, index % count + 1)
        elif not isinstance(key, slice):
            key = np.asarray(key)
            if key.dtype == np.bool_:
                if key.shape != (count,):
                    raise IndexError(f"boolean mask: expected shape ({count},) (one flag per target), "
                                     f"received shape {key.shape}")
            elif key.ndim == 1 and (key.dtype.kind in "iu" or key.size == 0):
                key = key.astype(np.intp)
            else:
                raise InputError(f"Detections index: expected an int, a slice, a boolean mask of shape ({count},) "
                                 f"or a 1-D integer array, received {key.dtype} of shape {key.shape}")
        if isinstance(key, slice):  # read-only views
            return self._trusted(self._ints[:, key], self._reals[:, key], self._metadata())
        # New arrays of ours. compress() takes half the time of boolean fancy indexing on these small blocks.
        pick = np.ndarray.compress if key.dtype == np.bool_ else np.ndarray.take
        return self._trusted(_read_only(pick(self._ints, key, axis=1)), _read_only(pick(self._reals, key, axis=1)),
                             self._metadata())

    # -- geometry ----------------------------------------------------------------------------------------------
    def scaled(self, sx: float, sy: float, ox: float = 0.0, oy: float = 0.0,
               frame_shape: Optional[tuple] = None) -> "Detections":
        """Maps positions from the labelled grid to source-frame pixels; sizes and ratios stay as they are.

        A grid pixel covers sx x sy source pixels, and the grid's top-left corner sits at source pixel-edge
        (ox, oy) (the tile's origin; 0 for a whole frame). Points (centroids, peak) map as pixel centres:
        x' = (x + 0.5) * sx - 0.5 + ox, which is cv2.resize's pixel-area geometry and reduces to x + ox when
        sx = 1 (native tiles). The inclusive box maps to the source pixels it covers:
        x_min' = x_min * sx + ox, x_max' = (x_max + 1) * sx - 1 + ox (fractional when sx is not an integer).
        The box keeps its meaning, covering [x_min' - 0.5, x_max' + 0.5], so where a target spans less than one
        source pixel (sx < 1, a frame smaller than the grid) x_max' < x_min': its width x_max' - x_min' + 1 is
        below 1. Drawing code should take the covered edges, not the two values as corners.
        frame_shape: the source frame's shape, stored as the new metadata (default: unchanged).
        size and aspect_ratio remain in labelled-grid pixels (the target filter's units).
        """
        for name, value in (("sx", sx), ("sy", sy)):
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise InputError(f"scaled: {name} = {value!r}; expected a finite scale > 0 (source pixels per "
                                 f"grid pixel, e.g. 640 / 256)")
        for name, value in (("ox", ox), ("oy", oy)):
            if not (isinstance(value, numbers.Real) and math.isfinite(value)):
                raise InputError(f"scaled: {name} = {value!r}; expected a finite offset in source pixels")
        reals = self._reals.copy()
        for points, scale, offset in ((_POINT_X_ROWS, sx, ox), (_POINT_Y_ROWS, sy, oy)):
            reals[points] = (reals[points] + 0.5) * scale - 0.5 + offset
        for low, high, scale, offset in (("x_min", "x_max", sx, ox), ("y_min", "y_max", sy, oy)):
            reals[_REAL_ROW[low]] = reals[_REAL_ROW[low]] * scale + offset
            reals[_REAL_ROW[high]] = (reals[_REAL_ROW[high]] + 1.0) * scale - 1.0 + offset
        metadata = self._metadata()
        if frame_shape is not None:
            metadata = _checked_metadata(self.frame_index, self.timestamp, frame_shape)
        return self._trusted(self._ints, _read_only(reals), metadata)

    # -- output ------------------------------------------------------------------------------------------------
    def to_rows(self) -> list:
        """One plain dict per target (Python ints/floats), frame_index and timestamp first, then COLUMNS."""
        columns = [getattr(self, name).tolist() for name in COLUMNS]
        head = {"frame_index": self.frame_index, "timestamp": self.timestamp}
        return [{**head, **dict(zip(COLUMNS, values))} for values in zip(*columns)]

    def to_json(self, indent: Optional[int] = None) -> str:
        """Strict JSON: {"frame_index", "timestamp", "frame_shape", "targets": [{column: value}, ...]}.

        Non-finite values (a +inf peak logit) become null, since JSON has no infinity.
        """
        columns = [getattr(self, name).tolist() for name in COLUMNS]
        targets = [{name: _finite_or_none(value) for name, value in zip(COLUMNS, values)} for values in zip(*columns)]
        document = {**self._metadata(), "frame_shape": list(self.frame_shape) if self.frame_shape else None,
                    "targets": targets}
        return json.dumps(document, indent=indent, allow_nan=False)

    def table(self, max_rows: int = 20) -> str:
        """A fixed-width text table of the first max_rows targets (centroid, box, size, ratio, logits)."""
        header = f"{'label':>6} {'x':>9} {'y':>9} {'box (x_min,y_min,x_max,y_max)':>31} {'size':>6} {'ratio':>6} " \
                 f"{'peak':>8} {'mean':>8}"
        lines = [repr(self), header]
        for i in range(min(len(self), max_rows)):
            box = f"{self.x_min[i]:g},{self.y_min[i]:g},{self.x_max[i]:g},{self.y_max[i]:g}"
            lines.append(f"{self.label[i]:>6} {self.x[i]:>9.2f} {self.y[i]:>9.2f} {box:>31} {self.size[i]:>6} "
                         f"{self.aspect_ratio[i]:>6.2f} {self.peak_logit[i]:>8.3g} {self.mean_logit[i]:>8.3g}")
        if len(self) > max_rows:
            lines.append(f"... {len(self) - max_rows} more")
        return "\n".join(lines)

    def __repr__(self) -> str:
        meta = ", ".join(f"{k}={v!r}" for k, v in self._metadata().items() if v is not None)
        return f"Detections({len(self)} targets{', ' + meta if meta else ''})"

    __str__ = table

    def _metadata(self) -> dict:
        return {"frame_index": self.frame_index, "timestamp": self.timestamp, "frame_shape": self.frame_shape}


def _from_pickle(ints: np.ndarray, reals: np.ndarray, metadata: dict) -> Detections:
    return Detections.from_blocks(_read_only(ints), _read_only(reals), **metadata)


def _checked_column(name: str, value, dtype: np.dtype) -> np.ndarray:
    """value as a 1-D array of dtype (stacked into a block by the caller, so never kept as given)."""
    if not (type(value) is np.ndarray and value.dtype == dtype):
        array = np.asarray(value)
        if not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise InputError(f"Detections.{name}: expected dtype {dtype} (or one that casts to it losslessly in "
                             f"kind), received {array.dtype}")
        value = array.astype(dtype)
    if value.ndim != 1:
        raise InputError(f"Detections.{name}: expected a 1-D array of shape (n,), received shape {value.shape}")
    return value


def _read_only(block: np.ndarray) -> np.ndarray:
    block.setflags(write=False)  # only on new arrays of ours: nobody else's flags
    return block


def _read_only_view(block: np.ndarray) -> np.ndarray:
    """A read-only view of someone else's array, leaving the flags of theirs alone."""
    if block.flags.writeable:
        block = block.view()
        block.flags.writeable = False
    return block


def _checked_metadata(frame_index, timestamp, frame_shape) -> dict:
    """The frame metadata, validated and normalised (ints, float, tuple of ints)."""
    # A stream's frame (an int index, a float time, an ndarray's shape) passes on type checks alone: the general
    # checks (ABC isinstance, numpy scalars) cost a sparse frame's labelling 2 us more.
    if frame_index is not None and not (type(frame_index) is int and frame_index >= 0):
        if isinstance(frame_index, (bool, np.bool_)) or not isinstance(frame_index, (int, np.integer)) \
                or frame_index < 0:
            raise InputError(f"Detections.frame_index = {frame_index!r}; expected None or an int >= 0")
        frame_index = int(frame_index)
    if timestamp is not None and not (type(timestamp) is float and math.isfinite(timestamp)):
        if isinstance(timestamp, (bool, np.bool_)) or not isinstance(timestamp, numbers.Real) \
                or not math.isfinite(timestamp):
            raise InputError(f"Detections.timestamp = {timestamp!r}; expected None or a finite number of seconds")
        timestamp = float(timestamp)
    if frame_shape is not None:
        frame_shape = _checked_frame_shape(frame_shape)
    return {"frame_index": frame_index, "timestamp": timestamp, "frame_shape": frame_shape}


def _checked_frame_shape(value) -> tuple:
    if type(value) is tuple and 2 <= len(value) <= 3:  # the common case: an ndarray's .shape
        for v in value:  # a loop, not all(<generator>): half the cost
            if type(v) is not int or v <= 0:
                break
        else:
            return value
    try:
        shape = tuple(int(v) for v in value)
        valid = len(shape) in (2, 3) and all(v > 0 for v in shape) and all(
            isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InputError(f"Detections.frame_shape = {value!r}; expected None or (height, width[, channels]) "
                         f"positive ints, e.g. frame.shape")
    return shape


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


__all__ = ["BLOCK_INT_COLUMNS", "BLOCK_REAL_COLUMNS", "COLUMNS", "Detections"]

"""Frame -> input tensor, per the artifact's contract.

Accepted frames (numpy, HxW or HxWxC, row-major image coordinates):
- uint8 grey (HxW or HxWx1), uint8 BGR (HxWx3, OpenCV's order), uint8 BGRA (alpha dropped);
- uint16 single-channel raw IR (14- or 16-bit, as thermal cores deliver): mapped to the 8-bit range by a
  `RawMapping` (default: percentile stretch from 0.5 % to 99.99 %, or higher where that would leave more
  than 7 pixels above it), never by a silent bit shift.
Anything else raises InputError naming the dtype/shape and what is accepted.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from .contract import ModelContract
from .errors import InputError, ModelFileError

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}
# RawMapping's default top: the 99.99th percentile, but never more than HOT_PIXELS of a frame's brightest pixels
# (hot pixels) above it, whatever the frame's size.
DEFAULT_TOP_PERCENTILE = 99.99
HOT_PIXELS = 7


@dataclass(frozen=True)
class RawMapping:
    """How a >8-bit single-channel frame becomes 0..255 intensities.

    mode "percentile": the `low`..`high` percentiles of the frame map to 0..255 (robust to dead/hot pixels); `high`
    None (the default) is the 99.99th percentile or, higher, the value all but the HOT_PIXELS brightest pixels lie
    at or below (the higher one from 70,000 pixels on); mode "fixed": the raw values `low`..`high` map to 0..255
    (stable across frames; use the core's known range); values outside are clipped.

    Why a pixel count at the top and not a percentile: small targets cover a few pixels, and the top must lie above
    them whatever the frame. A 99.5 % top clipped them at 256x256 (with the authors' checkpoint, 39 of 64 synthetic
    targets and 18 of 108 SIRST test targets lost as 14-bit raw); 99.99 % worked there (6.6 pixels above it), but
    at 1920x1080 it leaves 207 pixels above, more than six targets cover together: the top fell into the
    background, which was then stretched over 0..255, and 3 of 6 synthetic targets were lost (tile policy, fp32
    ONNX; with this default all 6 were found; tests/test_preprocess.py holds the stretch to it).
    """

    mode: str = "percentile"
    low: float = 0.5
    high: Optional[float] = None

    def __post_init__(self):
        if self.mode not in ("percentile", "fixed"):
            raise InputError(f"RawMapping.mode must be 'percentile' or 'fixed', got {self.mode!r}")
        bounds = (self.low,) if self.high is None and self.mode == "percentile" else (self.low, self.high)
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                   and math.isfinite(v) for v in bounds):
            raise InputError(f"RawMapping low={self.low!r}, high={self.high!r}: expected finite numbers")
        top = 100.0 if self.high is None else self.high
        if self.mode == "percentile" and not 0.0 <= self.low < top <= 100.0:
            raise InputError(f"RawMapping percentiles low={self.low!r}, high={self.high!r}: expected 0 <= low < high "
                             f"<= 100 (high None: all but the {HOT_PIXELS} brightest pixels)")
        if self.mode == "fixed" and not self.low < self.high:
            raise InputError(f"RawMapping fixed range low={self.low!r}, high={self.high!r}: expected low < high (the "
                             f"raw values that become 0 and 255)")

    def describe(self) -> dict:
        """mode, low, high, and for the default top what it is (summaries, JSON records)."""
        described = {"mode": self.mode, "low": self.low, "high": self.high}
        if self.mode == "percentile" and self.high is None:
            described["top"] = (f"the {DEFAULT_TOP_PERCENTILE}th percentile, or higher where that leaves more than "
                                f"{HOT_PIXELS} pixels above it")
        return described

    def apply(self, frame: np.ndarray) -> np.ndarray:
        if self.mode == "percentile":
            top = self.high
            if top is None:  # past 99.99 %, the (n - 1 - HOT_PIXELS)-th smallest value (linear interpolation
                last = frame.size - 1  # lands on it exactly): 99.99 % up to 70,000 pixels, as before
                top = max(DEFAULT_TOP_PERCENTILE, 100.0 * (last - HOT_PIXELS) / last) if last > 0 else 100.0
            lo, hi = np.percentile(frame, (self.low, top))
        else:
            lo, hi = self.low, self.high
        span = max(float(hi) - float(lo), 1e-6)
        out = (frame.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / span)
        return np.clip(out, 0.0, 255.0, out=out)


def _checked(frame: np.ndarray, raw: RawMapping) -> np.ndarray:
    """The frame validated: HxW grey or HxWx3 BGR, uint8 (or float32 0..255 from a raw mapping), alpha dropped."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)) or 0 in frame.shape:
        raise InputError(f"frame shape {frame.shape} not supported: expected HxW, HxWx1, HxWx3 (BGR) or HxWx4 (BGRA)")
    if frame.dtype == np.uint16:
        if frame.ndim != 2:
            raise InputError(f"16-bit frames must be single-channel raw IR (HxW), got shape {frame.shape}")
        frame = raw.apply(frame)
    elif frame.dtype != np.uint8:
        raise InputError(f"frame dtype {frame.dtype} not supported: expected uint8 (grey/BGR) or uint16 (raw IR)")
    return frame[:, :, :3] if frame.ndim == 3 and frame.shape[2] == 4 else frame


def to_channels(frame: np.ndarray, contract: ModelContract, raw: RawMapping = RawMapping()) -> np.ndarray:
    """HxWxC (C = contract.channels) in the contract's channel order, uint8 or float32 in 0..255."""
    frame = _checked(frame, raw)
    if contract.channels == 1:
        return frame[:, :, None] if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[:, :, None]
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if contract.channel_order == "RGB" else frame


def preprocess(
    frame: np.ndarray,
    contract: ModelContract,
    size: Optional[tuple[int, int]] = None,
    raw: RawMapping = RawMapping(),
) -> np.ndarray:
    """One frame -> float32 tensor [1, C, H, W] (NCHW), resized to `size` (H, W) or the contract's input size.

    With size None and a dynamic contract the frame keeps its own size (the caller pads to the stride).
    The same tensor, bit for bit, as `normalize(resized to_channels(frame))`, reached without the interleaved
    copies: a grey frame is resized and converted to float once for all three channels of an RGB model, and a
    BGR frame's planes are taken in the contract's order instead of swapped (0.04 ms instead of 0.16-0.22 ms for
    a grey 256x256 frame, timed in a loop on the AMD EPYC). Resizing before the grey -> RGB copy or the BGR -> RGB swap
    gives the same pixels, as both only copy or reorder channels; BGR -> grey is still converted first.
    """
    img = _checked(frame, raw)
    if contract.channels == 1 and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    target = size or contract.input_size
    if target is not None and img.shape[:2] != tuple(target):
        interp = _INTERPOLATION.get(contract.resize_interpolation, cv2.INTER_LINEAR)
        img = cv2.resize(img, (int(target[1]), int(target[0])), interpolation=interp)
    if img.ndim == 2:
        planes = [img] * contract.channels
    else:
        planes = list(cv2.split(img))  # B, G, R
        if contract.channel_order == "RGB":
            planes.reverse()
    return _normalize_planes(planes, contract)[None]


def normalize(img: np.ndarray, contract: ModelContract) -> np.ndarray:
    """HxWxC image in 0..255 (contract channel order) -> float32 CxHxW, (pixel * scale - mean) / std."""
    return _normalize_planes([img[:, :, c] for c in range(img.shape[2])], contract)


def _normalize_planes(planes: list[np.ndarray], contract: ModelContract) -> np.ndarray:
    """C planes (HxW, 0..255, in the contract's channel order) -> float32 CxHxW, (pixel * scale - mean) / std.

    The single place the normalisation is written: the runtime and training both reach it, so a trained model
    and its deployed artifacts see identical tensors. Computed as float32(pixel) * (scale / std) + (-mean / std),
    over all channels at once. One array passed for every channel (a grey frame for an RGB model) is converted to
    float32 once.
    """
    multiplier, offset = _affine(float(contract.scale), tuple(contract.mean), tuple(contract.std), len(planes))
    if all(plane is planes[0] for plane in planes):
        tensor = np.multiply(planes[0].astype(np.float32), multiplier)  # (H, W) x (C, 1, 1) -> (C, H, W)
    else:
        # A cast into place, then the products in place: numpy's casting multiply on a uint8 plane is 2-5x
        # slower than a plain cast followed by a float32 multiply (numpy 2.4).
        tensor = np.empty((len(planes), *planes[0].shape), np.float32)
        for c, plane in enumerate(planes):
            np.copyto(tensor[c], plane, casting="unsafe")
        tensor *= multiplier
    tensor += offset
    return tensor


@functools.lru_cache(maxsize=32)
def _affine(scale: float, mean: tuple, std: tuple, channels: int) -> tuple:
    """(scale / std, -mean / std) as read-only float32 [C, 1, 1] arrays, computed once per contract: built per
    frame, with the per-channel arithmetic, they made up about a quarter of a grey 256x256 frame's preprocessing
    (54 us against 39 us now, in a loop on the AMD EPYC).

    Refused unless every 0..255 intensity gives a finite value: that makes every tensor of preprocess() finite,
    which Backend.run_preprocessed() relies on (pixels are integers, and a raw frame's mapping is clipped).
    """
    std32 = np.asarray(std, np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        multiplier, offset = np.asarray(scale, np.float32) / std32, -np.asarray(mean, np.float32) / std32
        extreme = np.abs(multiplier) * np.float32(255.0) + np.abs(offset)
    if not np.isfinite(extreme).all():
        raise ModelFileError(f"model contract: scale={scale!r}, mean={mean!r}, std={std!r} do not give a finite "
                             f"tensor for 0..255 pixels (tensor = (pixel * scale - mean) / std); fix the contract")
    factors = []
    for values in (multiplier, offset):
        column = np.array(np.broadcast_to(values, channels)).reshape(channels, 1, 1)
        column.flags.writeable = False
        factors.append(column)
    return tuple(factors)


def read_image(path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image file as stored (8-bit grey/BGR, or 16-bit raw); InputError if missing, unreadable (no
    permission, an I/O error) or undecodable."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8) if _exists(path) else None
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if data is None:
        raise InputError(f"image not found: {path}")
    if data.size == 0:  # cv2.imdecode asserts on an empty buffer instead of returning None
        raise InputError(f"cannot decode image {path}: the file is empty (0 bytes)")
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as exc:
        raise InputError(f"cannot decode image {path} ({data.size} bytes): OpenCV refused it: "
                         f"{str(exc).strip().splitlines()[-1]}") from exc
    if img is None:
        raise InputError(f"cannot decode image {path} ({data.size} bytes): corrupt or unsupported format")
    return img


def _exists(path) -> bool:
    from pathlib import Path

    return Path(path).is_file()

"""Deterministic synthetic infrared frames: a dark, noisy, slowly varying background with a few small bright
Gaussian targets.

Used where no real frames are at hand: the exporter's default verification/calibration set on a machine without
the research data (`synthetic_frames`), the embedded default input of `edge-irst run` and the tests
(`SyntheticScene`: targets that move from frame to frame, with known ground truth). Same seed, same frames, on
every machine (numpy's PCG64 generator).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from statistics import NormalDist

import cv2
import numpy as np

from .errors import InputError

_MARGIN = 6  # px kept between a target centre and the frame edge
# Standard normal noise from random bytes: the N(0, 1) quantiles at (k + 0.5) / 256, looked up by a uniform byte.
# Quantised to 256 levels and bounded at +-2.9 sigma (std 0.9975), and 5x cheaper than Generator.standard_normal
# (0.1 ms instead of 0.56 ms per 256x256 frame here), which kept the synthetic "camera" from costing more than
# the pipeline it feeds (benchmarks/pipeline.py).
_GAUSSIAN_BYTES = np.asarray([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)


@dataclass(frozen=True)
class SyntheticFrame:
    """image: uint8 [H, W] grey frame (uint16 [H, W] raw for a SyntheticScene with bits > 8).
    mask: bool [H, W], True where a target is brighter than half its peak.
    centers: float32 [K, 2] target centres as (x, y) in pixel coordinates (column, row; origin = centre of the
    top-left pixel).
    sigmas: float32 [K] Gaussian sigma of each target (px). sizes: int64 [K] pixel count of each target's
    half-maximum area (its part of `mask`). Both empty arrays where the producer did not record them.
    index: the frame's index in its scene (0 for single frames)."""

    image: np.ndarray
    mask: np.ndarray
    centers: np.ndarray
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    index: int = 0


def _clutter(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 [H, W]: a dark level plus low-frequency clutter (blurred noise, like cloud or terrain)."""
    level = rng.uniform(25.0, 70.0)
    clutter = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigmaX=max(h, w) / 24.0)
    clutter *= rng.uniform(8.0, 20.0) / max(float(np.abs(clutter).max()), 1e-6)
    return level + clutter


def add_target(image: np.ndarray, mask: np.ndarray, cx: float, cy: float, sigma: float, amplitude: float) -> int:
    """Adds amplitude * Gaussian(sigma) centred at (cx, cy) to the float32 [H, W] `image` in place, marks its
    half-maximum area in the bool [H, W] `mask`, and returns that area in pixels.

    Drawn in a window of +-6 sigma around the centre (beyond it the blob is < 2e-8 of its peak, far below one
    grey level), so a 1280x1024 frame costs no more per target than a 256x256 one."""
    h, w = image.shape
    radius = int(math.ceil(6.0 * sigma)) + 1
    x0, x1 = max(int(cx) - radius, 0), min(int(cx) + radius + 1, w)
    y0, y1 = max(int(cy) - radius, 0), min(int(cy) + radius + 1, h)
    scale = np.float32(-0.5 / (sigma * sigma))
    # Separable: exp(a(x^2 + y^2)) = exp(a x^2) exp(a y^2), two 1-D exps and an outer product instead of an
    # mgrid and a 2-D exp (Python overhead dominates windows this small).
    blob = np.outer(np.exp(scale * (np.arange(y0, y1, dtype=np.float32) - np.float32(cy)) ** 2),
                    np.exp(scale * (np.arange(x0, x1, dtype=np.float32) - np.float32(cx)) ** 2))
    image[y0:y1, x0:x1] += np.float32(amplitude) * blob
    half = blob > 0.5
    mask[y0:y1, x0:x1] |= half
    return int(half.sum())


class _TargetStamps:
    """add_target() for a fixed set of targets (sigma, amplitude) drawn at new centres in every frame: the
    Gaussians of all of them in a few array operations, then two in-place updates per target (instead of a dozen
    small numpy calls per target). Same float32 arithmetic on the same window of each target, so the same pixels
    bit for bit (tests/test_preprocess.py holds SyntheticScene to add_target)."""

    def __init__(self, sigmas: np.ndarray, amplitudes: np.ndarray):
        self.radius = [int(math.ceil(6.0 * s)) + 1 for s in sigmas]
        # add_target's scalar expressions, target by target (an array expression could round differently).
        self.scale = np.asarray([np.float32(-0.5 / (s * s)) for s in sigmas], np.float32)[:, None, None]
        self.amplitude = np.asarray([np.float32(a) for a in amplitudes], np.float32)[:, None, None]
        self.reach = max(self.radius, default=0)  # one window size for all, cut to each target's own
        self.offsets = np.arange(-self.reach, self.reach + 1, dtype=np.int64)

    def add(self, image: np.ndarray, mask: np.ndarray, centers: np.ndarray) -> list[int]:
        """Adds the targets at their float32 (x, y) `centers` ([K, 2], inside the frame) to `image` and `mask` in
        place; returns their half-maximum areas (px), as add_target does."""
        if not len(centers):
            return []
        h, w = image.shape
        pixel = centers.astype(np.int64)  # int(c): truncation, = floor for these non-negative centres
        # [K, 2, window]: the 1-D Gaussians along x and along y of every target, in one pass.
        along = np.exp(self.scale * ((pixel[:, :, None] + self.offsets).astype(np.float32)
                                     - centers[:, :, None]) ** 2)
        blobs = along[:, 1, :, None] * along[:, 0, None, :]  # blobs[k] = np.outer(gy[k], gx[k])
        halves = blobs > 0.5
        blobs *= self.amplitude
        sizes = []
        for k, ((x, y), radius) in enumerate(zip(pixel.tolist(), self.radius)):
            x0, x1 = max(x - radius, 0), min(x + radius + 1, w)
            y0, y1 = max(y - radius, 0), min(y + radius + 1, h)
            left, top = x - self.reach, y - self.reach  # blobs[k, 0, 0] is pixel (left, top)
            rows, cols = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
            image[y0:y1, x0:x1] += blobs[k, rows, cols]
            half = halves[k, rows, cols]
            mask[y0:y1, x0:x1] |= half
            sizes.append(int(np.count_nonzero(half)))
        return sizes


# Half-maximum radius of a Gaussian target per unit sigma: exp(-d^2 / (2 sigma^2)) > 0.5 <=> d < sigma * this.
_HALF_MAX_RADIUS = math.sqrt(2.0 * math.log(2.0))
# Least distance between the half-maximum discs of two targets: pixels of the two masks then lie more than
# sqrt(2) apart, so at least one pixel apart in every direction and never 8-connected (the 0.09 above sqrt(2)
# absorbs float32 rounding at a disc's edge).
_TARGET_GAP = 1.5
_PLACEMENT_TRIES = 100  # redraws of one target's centre before its frame is declared too crowded


def _separate(rng: np.random.Generator, centers: np.ndarray, sigmas: list, h: int, w: int) -> None:
    """Redraws, in place, each centre whose half-maximum disc comes within _TARGET_GAP of an earlier target's, so
    that every target is its own 8-connected component of the mask. Frames without such a pair keep their draws."""
    radii = [_HALF_MAX_RADIUS * s for s in sigmas]
    for k in range(1, len(centers)):
        for _ in range(_PLACEMENT_TRIES):
            distances = np.hypot(*(centers[:k] - centers[k]).T)
            if np.all(distances >= np.asarray(radii[:k]) + radii[k] + _TARGET_GAP):
                break
            centers[k] = rng.uniform(_MARGIN, w - _MARGIN), rng.uniform(_MARGIN, h - _MARGIN)
        else:
            raise InputError(f"synthetic_frame: {len(centers)} targets do not fit apart in a {h}x{w} frame "
                             f"(HxW); use fewer targets or a larger size")


def synthetic_frame(rng: np.random.Generator, size: tuple[int, int] = (256, 256),
                    targets: int = 3) -> SyntheticFrame:
    """One frame of `size` (H, W) with `targets` point-like targets (Gaussian sigma 0.6 .. 1.8 px), placed so that
    no two touch: each is one 8-connected component of the mask."""
    h, w = size
    image = _clutter(rng, h, w) + rng.normal(0.0, 2.5, (h, w)).astype(np.float32)  # + sensor noise
    mask = np.zeros((h, w), bool)
    centers = np.stack([rng.uniform(_MARGIN, w - _MARGIN, targets), rng.uniform(_MARGIN, h - _MARGIN, targets)],
                       axis=1).astype(np.float32) if targets else np.zeros((0, 2), np.float32)
    sigmas, amplitudes = [], []
    for _ in range(len(centers)):  # drawn in this order (sigma, amplitude per target) since the first release
        sigmas.append(rng.uniform(0.6, 1.8))
        amplitudes.append(rng.uniform(70.0, 160.0))
    _separate(rng, centers, sigmas, h, w)
    sizes = [add_target(image, mask, cx, cy, sigma, amplitude)
             for (cx, cy), sigma, amplitude in zip(centers, sigmas, amplitudes)]
    return SyntheticFrame(np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, centers,
                          np.asarray(sigmas, np.float32), np.asarray(sizes, np.int64))


def synthetic_frames(count: int, size: tuple[int, int] = (256, 256), seed: int = 0,
                     targets: tuple[int, int] = (1, 4)) -> list[SyntheticFrame]:
    """`count` frames of `size` (H, W), each with between targets[0] and targets[1] targets (inclusive)."""
    rng = np.random.default_rng(seed)
    return [synthetic_frame(rng, size, int(rng.integers(targets[0], targets[1] + 1))) for _ in range(count)]


class SyntheticScene:
    """A video of a static cluttered background with `targets` small Gaussian targets moving in straight lines,
    each bouncing inside its own cell of a grid over the frame (so targets never merge), and fresh sensor noise
    (Gaussian, quantised to 256 levels) in every frame.

    size: (H, W). sigma, amplitude: ranges the per-target Gaussian sigma (px) and peak brightness (grey levels
    above the background) are drawn from; speed: range of target speeds in px/frame. noise: sensor noise sigma in
    grey levels. bits: 8 gives uint8 frames; 9..16 gives uint16 raw frames as a thermal core delivers them,
    raw = raw_offset + grey * raw_gain (see `raw_range`), so a scene with bits=14 and one with bits=8 and the same
    seed hold the same picture. Any frame can be rendered on its own (`frame(i)`): its noise comes from
    (seed, i), its target positions from closed-form motion.

    The defaults give targets the authors' LW-IRSTNet checkpoint detects: contrast 90..160 grey levels over a
    noise of 2.5 (SNR > 35), sigma 0.8..1.8 px (half-maximum areas of about 2..14 px). Measured with that
    checkpoint (ncnn, 256x256, 30 seeds x 14 frames): recall 1.0 for sigma 0.7..2.2 at contrast >= 70, while
    contrast 50..70 loses 2..16 % of the targets, so the default range keeps a margin above that.
    """

    def __init__(self, size: tuple[int, int] = (256, 256), targets: int = 3, seed: int = 0,
                 sigma: tuple[float, float] = (0.8, 1.8), amplitude: tuple[float, float] = (90.0, 160.0),
                 speed: tuple[float, float] = (0.3, 1.5), noise: float = 2.5, bits: int = 8):
        h, w = (int(v) for v in size)
        if h < 4 * _MARGIN or w < 4 * _MARGIN:
            raise InputError(f"SyntheticScene size {h}x{w} (HxW) is too small: expected at least "
                             f"{4 * _MARGIN}x{4 * _MARGIN}")
        if not 8 <= int(bits) <= 16:
            raise InputError(f"SyntheticScene bits={bits!r}: expected 8 (uint8 frames) or 9..16 (uint16 raw)")
        cells = _grid_cells(h, w, int(targets))
        if targets < 0 or len(cells) < targets:
            raise InputError(f"SyntheticScene: {targets} targets do not fit a {h}x{w} frame (each needs a cell of "
                             f"at least {4 * _MARGIN}x{4 * _MARGIN} px); use fewer targets or a larger size")
        self.size, self.seed, self.noise, self.bits = (h, w), int(seed), float(noise), int(bits)
        self._noise_levels = _GAUSSIAN_BYTES * np.float32(self.noise)  # byte -> noise in grey levels
        # The noise bytes of frame i are the 64-bit draws [i * n, (i + 1) * n) of one PCG64 stream per scene (n =
        # _draws_per_frame): frames in order just continue the stream, any other index jumps there (advance() is a
        # few multiplications). Why not a generator per frame: default_rng([seed, i]) took 145 us a frame right
        # after an inference (15 us timed alone), half the in-line pipeline's overhead budget on TFLite int8 at 2
        # threads; continuing the stream costs nothing and a jump about 19 us there.
        self._draws_per_frame = -(-h * w // 8)  # random_bytes() takes ceil(H * W / 8) draws
        self._noise_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, 1])))
        self._noise_start = self._noise_rng.bit_generator.state
        self._next_noise_frame = 0
        self._noise_lock = threading.Lock()  # a stream's reader thread and the caller may both render frames
        rng = np.random.default_rng([self.seed, 0])
        self._background = _clutter(rng, h, w)
        chosen = rng.permutation(len(cells))[:targets]
        own_cells = np.asarray([cells[i] for i in sorted(chosen)], np.float64).reshape(-1, 4)  # x0, y0, x1, y1
        lo, hi = own_cells[:, :2] + _MARGIN, own_cells[:, 2:] - _MARGIN
        start = rng.uniform(lo, hi) if targets else np.zeros((0, 2))
        angle = rng.uniform(0.0, 2.0 * math.pi, targets)
        self._velocity = rng.uniform(*speed, targets)[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        # centers()'s frame-independent terms, computed once (the same operations in the same order as inline).
        self._low, self._span = lo, hi - lo
        self._period, self._start_offset = 2.0 * self._span, start - lo
        self.sigmas = rng.uniform(*sigma, targets).astype(np.float32)
        self.amplitudes = rng.uniform(*amplitude, targets).astype(np.float32)
        self._stamps = _TargetStamps(self.sigmas, self.amplitudes)
        self.raw_offset = 0.0 if self.bits == 8 else float(2 ** (self.bits - 4))
        self.raw_gain = 1.0 if self.bits == 8 else (2 ** self.bits - 1 - 2 * self.raw_offset) / 255.0

    @property
    def raw_range(self) -> tuple[float, float]:
        """(raw value of grey 0, raw value of grey 255): RawMapping("fixed", *raw_range) undoes the raw encoding."""
        return self.raw_offset, self.raw_offset + 255.0 * self.raw_gain

    def centers(self, index: int) -> np.ndarray:
        """float32 [K, 2] target centres (x, y) in frame `index`: straight motion reflected at the cell walls."""
        travel = np.mod(self._start_offset + self._velocity * index, self._period)
        return (self._low + np.where(travel > self._span, self._period - travel, travel)).astype(np.float32)

    def _noise_bytes(self, index: int) -> np.ndarray:
        """uint8 [H, W]: frame `index`'s random bytes (see _draws_per_frame in __init__)."""
        with self._noise_lock:
            bits = self._noise_rng.bit_generator
            if index != self._next_noise_frame:
                bits.state = self._noise_start
                bits.advance(index * self._draws_per_frame)
            self._next_noise_frame = index + 1
            return random_bytes(self._noise_rng, self.size)

    def frame(self, index: int) -> SyntheticFrame:
        """Frame `index` (>= 0): image uint8 [H, W] (bits 8) or uint16 [H, W] (raw), with its ground truth."""
        if index < 0:
            raise InputError(f"SyntheticScene.frame({index!r}): frame indices start at 0")
        h, w = self.size
        # Sensor noise: random bytes looked up in the noise levels (cv2.LUT: 4x faster than numpy's take here).
        image = cv2.LUT(self._noise_bytes(int(index)), self._noise_levels)
        image += self._background
        mask = np.zeros((h, w), bool)
        centers = self.centers(index)
        sizes = self._stamps.add(image, mask, centers)
        if self.bits == 8:
            # Negatives to 0, then rounded half to even and saturated at 255: the pixels of
            # np.rint(np.clip(image, 0, 255)).astype(np.uint8) in two passes over the frame instead of three.
            cv2.threshold(image, 0.0, 0.0, cv2.THRESH_TOZERO, dst=image)
            pixels = cv2.convertScaleAbs(image)
        else:
            np.clip(image, 0, 255, out=image)
            image *= np.float32(self.raw_gain)
            image += np.float32(self.raw_offset)
            pixels = np.rint(image, out=image).astype(np.uint16)
        return SyntheticFrame(pixels, mask, centers, self.sigmas, np.asarray(sizes, np.int64), int(index))


def random_bytes(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """uint8 array of `shape` from the generator's raw 64-bit draws, each split into 8 bytes, least significant
    first: from a fresh PCG64 generator the same bytes as `rng.integers(0, 256, shape, dtype=np.uint8)` (numpy
    fills full-range bytes the same way; tests/test_preprocess.py checks it), in a third of the time (0.02 ms
    instead of 0.06 ms at 256x256)."""
    count = math.prod(shape)
    draws = np.asarray(rng.bit_generator.random_raw(-(-count // 8)), "<u8")
    return draws.view(np.uint8)[:count].reshape(shape)


@dataclass(frozen=True)
class TruthMatch:
    """Detections matched one-to-one to ground-truth centres. found / missed: truth centres with / without a
    detection within the radius; false: detections matched to none; errors: float64 [found] distances (px)."""

    found: int
    missed: int
    false: int
    errors: np.ndarray


def match_truth(x: np.ndarray, y: np.ndarray, centers: np.ndarray, radius: float = 1.5) -> TruthMatch:
    """Greedy closest-first one-to-one matching of detected centroids (x, y: float [N], pixels) to truth `centers`
    (float [K, 2] as (x, y)), pairs farther apart than `radius` px left unmatched."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    centers = np.asarray(centers, np.float64).reshape(-1, 2)
    distance = np.hypot(centers[:, :1] - x[None, :], centers[:, 1:] - y[None, :])  # [K, N]
    errors = []
    while distance.size and distance.min() <= radius:
        k, n = np.unravel_index(np.argmin(distance), distance.shape)
        errors.append(distance[k, n])
        distance[k, :] = np.inf
        distance[:, n] = np.inf
    return TruthMatch(len(errors), len(centers) - len(errors), len(x) - len(errors), np.asarray(errors, np.float64))


def _grid_cells(h: int, w: int, count: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) cells of the coarsest grid over an HxW frame with at least `count` cells, each at least
    4 * _MARGIN px on a side; [] when that is impossible."""
    if count <= 0:
        return []
    cols = max(1, round(math.sqrt(count * w / h)))
    rows = math.ceil(count / cols)
    while cols * rows < count:
        rows += 1
    if w // cols < 4 * _MARGIN or h // rows < 4 * _MARGIN:
        return []
    xs = np.linspace(0, w, cols + 1).astype(int)
    ys = np.linspace(0, h, rows + 1).astype(int)
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


__all__ = ["SyntheticFrame", "SyntheticScene", "TruthMatch", "match_truth", "random_bytes", "synthetic_frame",
           "synthetic_frames"]

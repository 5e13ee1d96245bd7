"""Detector: frames in, targets out, in source-frame pixel coordinates.

    from edge_irst.pipeline import Detector
    with Detector("LW_IRST.onnx", threshold=0.0, filter="authors", policy="tile") as detector:
        detections = detector.detect(frame)                 # one frame -> Detections
        for result in detector.stream("synthetic"):         # a source -> FrameResult per frame
            print(result.index, len(result.detections), result.timings.inference)
        detector.update(threshold=2.0)                      # any thread; the next frame uses it

Stages per frame: decode (the source) -> preprocess (per the artifact's contract and the frame-size policy) ->
inference (the backend) -> postprocess (merge the logit map, label `logit > threshold`, filter, map coordinates
back to the frame).

Frame-size policies:
- "resize": the authors' behaviour. The whole frame is squeezed to the artifact's input size (bilinear), the map
  is labelled in the model grid and coordinates are mapped back (Detections.scaled); size and aspect ratio stay in
  model-grid pixels, the units of the authors' filter. Cheap, but targets of a few pixels vanish when a large
  frame is squeezed (1280x1024 -> 256x256 is 5x).
- "native": the frame at its own resolution through an artifact with dynamic height/width, padded at the bottom
  and right to a multiple of the contract's stride (8) by REPLICATING the edge pixels. Padding with the
  normalised mean (a zero tensor) would put a mid-grey band (ImageNet mean ~ grey 116) against a typically dark
  IR background: a step edge the network was never trained on, right where targets near the border are;
  replicating adds no new structure. The padded part of the logit map is cut off again.
- "tile": input-size tiles (the artifact's fixed size, e.g. 256x256) laid over the frame at native resolution with
  at least `tile_overlap` px (default 32) shared between neighbours, all tiles of a frame in one backend call. The
  tile logit maps are stitched into one frame-sized map, each pixel taken from the tile in which it lies farthest
  from the tile's edges (the cut runs through the middle of each overlap), and that map is labelled ONCE: a
  target straddling a seam is one connected component, so duplicates cannot arise. Frames smaller than a tile are
  edge-padded like "native".

Threads: `stream()` reads and preprocesses file-like sources (images, video, synthetic) in a reader thread that
feeds a bounded queue (`prefetch` items), so decoding overlaps inference and a slow consumer blocks the reader
instead of growing memory. The reader only pays where it has a core of its own: by default (prefetch None) it
runs when the process may use more CPUs than the runtime's inference threads, and otherwise frames are read in
line. Measured on 2 shared, busy cores (benchmarks/pipeline.py, ncnn, 1 thread): the thread that runs inference
spent 4 % more CPU per frame than inference alone with the reader on, 16 % with everything in line, but a reader
competing for a core that is not free slowed inference itself down (GIL hand-overs and core sharing) by more than
it saved. Live sources (camera, stream) already decode in their grabber thread; their newest
frame is taken when the detector is ready for it and preprocessed in line, because a preprocessed frame waiting
in a queue would make every result one inference older. The backend is called from the thread that iterates
`stream()` / calls `detect()` only: use one Detector per thread.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .backends import backend_class, list_backends, load_backend, resolve_artifact
from .detections import Detections
from .errors import InputError, ModelFileError
from .postprocess import LiveSettings, PostprocessSettings, TargetFilter, implementation_info
from .preprocess import RawMapping, preprocess
from .sources import Frame, Reconnect, Source, open_source

log = logging.getLogger("edge_irst.pipeline")

POLICIES = ("resize", "native", "tile")

# The backend a model runs on when none is named: per device, fastest first; the first installed one that can read
# the model wins. CPU order measured on the authors' artifacts at 256x256 (x86-64, 2 shared cores, 1 thread,
# median of 20 runs, `python benchmarks/pipeline.py --compare-backends`): ncnn 7.2 ms, MNN 8.3 ms, OpenCV DNN
# 15-19 ms, TFLite/XNNPACK 14-18 ms, onnxruntime 19-36 ms; torch is the reference, not a runtime to deploy.
BACKEND_PREFERENCE: dict[str, tuple[str, ...]] = {
    "cpu": ("ncnn", "mnn", "opencv", "tflite", "onnxruntime", "torch"),
    "cuda": ("onnxruntime", "opencv", "torch"),
    "vulkan": ("ncnn", "mnn"),
    "opencl": ("mnn", "opencv"),
}

# Stage names of StageTimings, in pipeline order.
STAGES = ("decode", "preprocess", "inference", "postprocess")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the logical count where the OS has no such call)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def preferred_backend(model: Union[str, Path], device: str = "cpu", artifact_precision: Optional[str] = None) -> str:
    """The backend to run `model` (an artifact file or an exporter's model folder) on `device` when none is named:
    the first installed entry of BACKEND_PREFERENCE[device] that can read it (registry order for a device the
    table does not list). Raises ModelFileError (from resolve_artifact) when no installed backend can."""
    path = Path(model)
    order = BACKEND_PREFERENCE.get(str(device or "cpu").lower(), tuple(list_backends()))
    for name in (n for n in order if backend_class(n).installed()):
        if path.is_dir():
            try:
                resolve_artifact(path, name, artifact_precision)
            except ModelFileError:
                continue
            return name
        if path.suffix.lower() in backend_class(name).suffixes:
            return name
    return resolve_artifact(path, None, artifact_precision)[1]  # the registry's answer, or its explanation


# ---- results -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageTimings:
    """Milliseconds spent on one frame per stage, and capture-to-result latency.

    decode: reading/decoding (the source). preprocess: frame -> tensor(s). inference: the backend call(s).
    postprocess: stitching, labelling, filtering, coordinate mapping. latency: from the moment the source had the
    frame (Frame.capture_time) to the result, including any time it waited in a queue or for the detector.
    """

    decode: float
    preprocess: float
    inference: float
    postprocess: float
    latency: float


@dataclass(frozen=True, eq=False)
class FrameResult:
    """What `Detector.stream()` yields per frame.

    index, timestamp: the frame's (Frame.index / Frame.timestamp). detections: its targets in source-frame pixels.
    timings: StageTimings (ms). dropped / skipped: the source's counts so far (frames a live source replaced before
    they were taken / corrupt frames passed over). frame: the source Frame (image, name, ground truth of synthetic
    frames). settings: the threshold and filter this frame was postprocessed with.
    """

    index: int
    timestamp: Optional[float]
    detections: Detections
    timings: StageTimings
    dropped: int
    skipped: int
    frame: Frame
    settings: PostprocessSettings


class StreamStats:
    """Running totals of a stream: frames, targets, end-to-end FPS, per-stage medians, latency percentiles.

    FPS is end to end: frames / wall time from `start()` to the last `add()`, so it includes decoding,
    preprocessing, inference, postprocessing and whatever the caller does per frame (sinks). Medians cover the last
    `window` frames (bounded memory on endless streams).
    """

    def __init__(self, window: int = 10_000):
        self.frames = 0
        self.targets = 0
        self.dropped = 0
        self.skipped = 0
        self._samples = {name: deque(maxlen=window) for name in (*STAGES, "latency")}
        self._start = self._last = time.perf_counter()

    def start(self) -> None:
        self._start = self._last = time.perf_counter()

    def add(self, result: FrameResult) -> None:
        self.frames += 1
        self.targets += len(result.detections)
        self.dropped, self.skipped = result.dropped, result.skipped
        for name in self._samples:
            self._samples[name].append(getattr(result.timings, name))
        self._last = time.perf_counter()

    def finish(self, source: Source) -> None:
        """Takes the source's final dropped / skipped counts: frames it passed over after the last result are in no
        result's counts."""
        self.dropped, self.skipped = source.dropped, source.skipped

    @property
    def wall_s(self) -> float:
        return self._last - self._start

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.frames and self.wall_s > 0 else 0.0

    def median_ms(self, stage: str) -> Optional[float]:
        samples = self._samples[stage]
        return statistics.median(samples) if samples else None

    def percentile_ms(self, stage: str, q: float) -> Optional[float]:
        samples = self._samples[stage]
        return float(np.percentile(np.fromiter(samples, float), q)) if samples else None

    def summary(self) -> dict:
        def rounded(value):
            return None if value is None else round(value, 3)

        return {
            "frames": self.frames, "targets": self.targets, "skipped": self.skipped, "dropped": self.dropped,
            "wall_s": round(self.wall_s, 3), "fps": round(self.fps, 2),
            "fps_includes": "decode + preprocess + inference + postprocess + output, end to end",
            "median_ms": {stage: rounded(self.median_ms(stage)) for stage in STAGES},
            "latency_ms": {"median": rounded(self.median_ms("latency")),
                           "p95": rounded(self.percentile_ms("latency", 95))},
        }


# ---- frame-size policies -------------------------------------------------------------------------------------
def _pad_to(tensor: np.ndarray, height: int, width: int) -> np.ndarray:
    """[1, C, h, w] -> [1, C, height, width], the last row/column replicated into the added bottom/right band."""
    h, w = tensor.shape[2:]
    if (h, w) == (height, width):
        return tensor
    return np.pad(tensor, ((0, 0), (0, 0), (0, height - h), (0, width - w)), mode="edge")


def _tile_layout(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, own_from, own_to) of each tile along one axis of `length` px.

    Tiles are `tile` px long, spread evenly from 0 to length - tile so neighbours share at least `overlap` px; the
    pixels own_from..own_to - 1 are taken from this tile: those nearer to its middle than to the neighbour's. A
    length <= tile gives one tile at 0 (the frame is padded up to the tile).
    """
    if length <= tile:
        return [(0, 0, length)]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    starts = [int(round(v)) for v in np.linspace(0, length - tile, count)]
    # Pixel x is deeper in tile i than in tile i+1 when (s_i + tile - 1) - x >= x - s_{i+1}.
    cuts = [0] + [(s0 + tile - 1 + s1) // 2 + 1 for s0, s1 in zip(starts, starts[1:])] + [length]
    return [(start, cuts[i], cuts[i + 1]) for i, start in enumerate(starts)]


class _Resize:
    """The whole frame squeezed to the model grid; coordinates scaled back."""

    name = "resize"

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def prepare(self, image: np.ndarray, contract, raw: RawMapping) -> np.ndarray:
        return preprocess(image, contract, self.size, raw)

    def merge(self, logits: np.ndarray, frame_shape: tuple) -> tuple[np.ndarray, float, float]:
        grid = logits[0, 0]
        return grid, frame_shape[1] / grid.shape[1], frame_shape[0] / grid.shape[0]

    def describe(self) -> dict:
        return {"policy": self.name, "model_input": list(self.size)}


class _Native:
    """The frame at its own resolution, edge-padded to the stride (module docstring)."""

    name = "native"

    def __init__(self, stride: int):
        self.stride = stride

    def prepare(self, image: np.ndarray, contract, raw: RawMapping) -> np.ndarray:
        h, w = image.shape[:2]
        tensor = preprocess(image, contract, (h, w), raw)
        return _pad_to(tensor, -(-h // self.stride) * self.stride, -(-w // self.stride) * self.stride)

    def merge(self, logits: np.ndarray, frame_shape: tuple) -> tuple[np.ndarray, float, float]:
        return logits[0, 0, :frame_shape[0], :frame_shape[1]], 1.0, 1.0

    def describe(self) -> dict:
        return {"policy": self.name, "pad": f"edge-replicate to a multiple of {self.stride}"}


class _Tile:
    """Overlapping model-size tiles at native resolution, stitched, labelled once (module docstring)."""

    name = "tile"

    def __init__(self, size: tuple[int, int], overlap: int):
        self.size, self.overlap = size, overlap

    def _layout(self, frame_shape: tuple):
        return (_tile_layout(frame_shape[0], self.size[0], self.overlap),
                _tile_layout(frame_shape[1], self.size[1], self.overlap))

    def prepare(self, image: np.ndarray, contract, raw: RawMapping) -> np.ndarray:
        h, w = image.shape[:2]
        th, tw = self.size
        tensor = _pad_to(preprocess(image, contract, (h, w), raw), max(h, th), max(w, tw))[0]
        rows, cols = self._layout(image.shape)
        return np.stack([tensor[:, y:y + th, x:x + tw] for y, _, _ in rows for x, _, _ in cols])

    def merge(self, logits: np.ndarray, frame_shape: tuple) -> tuple[np.ndarray, float, float]:
        rows, cols = self._layout(frame_shape)
        stitched = np.empty(frame_shape[:2], np.float32)
        tiles = iter(logits[:, 0])
        for y, y_from, y_to in rows:
            for x, x_from, x_to in cols:
                stitched[y_from:y_to, x_from:x_to] = next(tiles)[y_from - y:y_to - y, x_from - x:x_to - x]
        return stitched, 1.0, 1.0

    def describe(self) -> dict:
        return {"policy": self.name, "tile": list(self.size), "overlap": self.overlap,
                "merge": "stitched logit map (each pixel from the tile where it is deepest), labelled once"}


# ---- the detector --------------------------------------------------------------------------------------------
class Detector:
    """A model on a backend with a threshold, a target filter and a frame-size policy.

    model: an artifact file (.onnx, .param, .mnn, .tflite, .pt/.pkl) or an exporter's model folder; None = the
        bundled model (edge_irst.assets.default_model()).
    backend: a registry name; None = the fastest installed one that reads the model (BACKEND_PREFERENCE).
    threads, device, delegate, fallback, artifact_precision: passed to load_backend (threads None = physical
        cores, "auto" = the count measured fastest for this model at load time; fallback "cpu" runs on the CPU
        when the device is missing).
    threshold: a pixel is target where logit > threshold; None = the artifact contract's (0.0 for LW-IRSTNet).
    filter: a TargetFilter or a preset name ("none", "authors").
    policy: "resize", "native" or "tile" (module docstring). tile_size: (H, W) of tiles for a dynamic-size
        artifact (default: its contract's input size, else 256x256); a fixed-size artifact's tiles are its size.
        tile_overlap: minimum px shared by neighbouring tiles (0 <= overlap < tile).
    raw: RawMapping for 14/16-bit single-channel frames (default: percentile stretch per frame).
    prefetch: frames the reader thread of stream() may queue ahead of inference (>= 1); 0 = no reader thread,
        file-like sources are read and preprocessed in line like live ones; None (default) = 2 when the process
        may use more CPUs than the runtime's inference threads (a core is free for the reader), else 0.
    warmup: runs on a zero input right after loading, so the first frame's latency is not an outlier.
    """

    def __init__(self, model: Union[str, Path, None] = None, backend: Optional[str] = None, *,
                 threads: Union[int, str, None] = None, device: Optional[str] = None,
                 delegate: Optional[str] = None, fallback: Optional[str] = None,
                 artifact_precision: Optional[str] = None,
                 threshold: Optional[float] = None, filter: Union[TargetFilter, str] = "none",
                 policy: str = "resize", raw: RawMapping = RawMapping(),
                 tile_size: Optional[tuple[int, int]] = None, tile_overlap: int = 32, prefetch: Optional[int] = None,
                 warmup: int = 1):
        if policy not in POLICIES:
            raise InputError(f"policy {policy!r} is not a frame-size policy; expected one of {', '.join(POLICIES)}")
        if not isinstance(raw, RawMapping):
            raise InputError(f"raw = {raw!r}; expected a RawMapping (e.g. RawMapping('fixed', 0, 16383))")
        if prefetch is not None and not (isinstance(prefetch, int) and prefetch >= 0):
            raise InputError(f"prefetch = {prefetch!r}; expected an int >= 0 (frames queued ahead of inference; 0 "
                             f"= no reader thread)")
        if model is None:
            from .assets import default_model

            model = default_model()
        self.model = Path(model)
        name = backend or preferred_backend(self.model, device or "cpu", artifact_precision)
        self.backend = load_backend(self.model, name, threads=threads, device=device, delegate=delegate,
                                    fallback=fallback, artifact_precision=artifact_precision, warmup=warmup)
        try:
            self.contract = self.backend.contract
            self._policy = self._make_policy(policy, tile_size, tile_overlap)
            threshold = self.contract.threshold if threshold is None else threshold
            self.settings = LiveSettings(PostprocessSettings(threshold, filter))
        except BaseException:
            self.backend.close()
            raise
        self.raw = raw
        self.prefetch = self._default_prefetch() if prefetch is None else prefetch

    def _make_policy(self, policy: str, tile_size, overlap: int):
        fixed = self.backend.inputs[0].hw
        is_fixed = bool(fixed[0] and fixed[1])
        artifact = f"{self.backend.path.name} ({self.backend.name})"
        if policy == "resize":
            return _Resize(self.backend.input_size())
        if policy == "native":
            if is_fixed:
                raise InputError(
                    f"policy 'native' runs frames at their own size, but {artifact} takes {fixed[0]}x{fixed[1]} "
                    f"(HxW) inputs only. Export the model with dynamic height/width (edge-irst export --dynamic), "
                    f"or use policy 'tile' ({fixed[0]}x{fixed[1]} tiles at native resolution) or 'resize' (the "
                    f"frame squeezed to {fixed[0]}x{fixed[1]})")
            return _Native(self.contract.stride)
        size = tuple(int(v) for v in (fixed if is_fixed else tile_size or self.backend.input_size()))
        if tile_size is not None and is_fixed and tuple(tile_size) != size:
            raise InputError(f"tile_size {tuple(tile_size)} differs from {artifact}'s fixed input {size} (HxW); "
                             f"leave tile_size unset or export an artifact of that size")
        stride = self.contract.stride
        if len(size) != 2 or min(size) < stride or (not is_fixed and (size[0] % stride or size[1] % stride)):
            raise InputError(f"tile_size {size}: expected (H, W), multiples of the model stride {stride}")
        if not (isinstance(overlap, int) and 0 <= overlap < min(size)):
            raise InputError(f"tile_overlap = {overlap!r}; expected an int with 0 <= overlap < {min(size)} (the "
                             f"tile side), e.g. 32")
        return _Tile(size, overlap)

    def _default_prefetch(self) -> int:
        """2 (a reader thread) when the process may run on more CPUs than the runtime's inference threads."""
        threads = self.backend.options_in_effect().get("threads")
        if not (isinstance(threads, int) and threads > 0):
            threads = self.backend.options.resolved_threads()
        return 2 if usable_cpus() > threads else 0

    # ---- live settings -----------------------------------------------------------------------------------------
    def update(self, **changes) -> PostprocessSettings:
        """Change threshold / filter (LiveSettings.update keys) from any thread; the next frame uses them."""
        return self.settings.update(**changes)

    @property
    def policy(self) -> str:
        return self._policy.name

    # ---- one frame ---------------------------------------------------------------------------------------------
    def _prepare(self, frame: Frame) -> np.ndarray:
        try:
            return self._policy.prepare(frame.image, self.contract, self.raw)
        except InputError as exc:
            raise InputError(f"{frame.name}, frame {frame.index}: {exc}") from exc

    def _postprocess(self, logits: np.ndarray, frame_shape: tuple, settings: PostprocessSettings,
                     frame_index: Optional[int], timestamp: Optional[float]) -> Detections:
        grid, sx, sy = self._policy.merge(logits, frame_shape)
        if sx == 1.0 and sy == 1.0:
            return settings.apply(grid, frame_index=frame_index, timestamp=timestamp, frame_shape=frame_shape)
        return settings.apply(grid, frame_index=frame_index, timestamp=timestamp).scaled(sx, sy,
                                                                                          frame_shape=frame_shape)

    def detect(self, image: np.ndarray, frame_index: Optional[int] = None,
               timestamp: Optional[float] = None) -> Detections:
        """Targets in one frame: uint8 HxW (grey) / HxWx3 (BGR) / HxWx4 (BGRA) or uint16 HxW (raw IR, per `raw`).

        Returns Detections in source-frame pixels (x = column, y = row, pixel centres at integers; inclusive
        boxes), frame_shape = image.shape. size / aspect_ratio are in the labelled grid: model-grid pixels under
        "resize", frame pixels under "native" and "tile".
        """
        batch = self._prepare(Frame(frame_index or 0, image, timestamp, 0.0, 0.0, "frame"))
        return self._postprocess(self.backend.run_preprocessed(batch), image.shape, self.settings.snapshot(),
                                 frame_index, timestamp)

    def grid_logits(self, image: np.ndarray) -> tuple:
        """(float32 logit map on the grid the model ran on, sx, sy): for "resize" the model's input grid (frame
        pixels = (grid + 0.5) * s - 0.5), for "native" / "tile" the frame's own grid (sx = sy = 1).

        This is what `edge-irst eval` scores: the authors' protocol evaluates the resize policy at 256x256 with
        the label brought to that grid, rather than on an upsampled map.
        """
        batch = self._prepare(Frame(0, image, None, 0.0, 0.0, "frame"))
        return self._policy.merge(self.backend.run_preprocessed(batch), image.shape)

    def logits(self, image: np.ndarray) -> np.ndarray:
        """float32 (H, W) logit map at the frame's resolution (same frames as detect()).

        "resize": the model-grid map upsampled bilinearly with cv2.resize, whose pixel-centre geometry is the one
        Detections.scaled() uses; "native" / "tile": the map computed at the frame's resolution (no resampling).
        """
        import cv2

        grid, sx, sy = self.grid_logits(image)
        if sx == 1.0 and sy == 1.0:
            return np.ascontiguousarray(grid, np.float32)
        return cv2.resize(grid, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)

    # ---- streams -----------------------------------------------------------------------------------------------
    def stream(self, source, max_frames: Optional[int] = None,
               reconnect: Reconnect = Reconnect()) -> Iterator[FrameResult]:
        """FrameResult per frame of `source` (a Source or anything open_source takes: a path, glob, camera
        index, URL, "synthetic:...", an iterable of numpy frames), at most `max_frames` (None = all).

        A source opened here is closed when the generator finishes or is closed; a Source passed in stays the
        caller's to close. Close the generator (contextlib.closing, or exhaust it) to stop the reader thread. The
        reader never reads past `max_frames`, so a Source passed in again goes on with the next frame; one closed
        early without max_frames has lost the frames the reader had queued.

        A frame in a form preprocessing cannot take (InputError: dtype, shape) ends the stream with that error,
        except in sources whose frames are files of their own (Source.skip_unsupported: images), where it is
        logged, counted in `skipped` and passed over. Other errors (the model, the backend) always end it.
        """
        if max_frames is not None and not (isinstance(max_frames, int) and max_frames >= 0):
            raise InputError(f"max_frames = {max_frames!r}; expected None (all frames) or an int >= 0")
        opened = open_source(source, reconnect)
        prepared = (self._inline(opened) if opened.live or not self.prefetch
                    else self._prefetched(opened, max_frames))
        try:
            count = 0
            while max_frames is None or count < max_frames:
                item = next(prepared, None)
                if item is None:
                    return
                frame, batch, preprocess_ms = item
                settings = self.settings.snapshot()
                start = time.perf_counter()
                logits = self.backend.run_preprocessed(batch)
                inferred = time.perf_counter()
                detections = self._postprocess(logits, frame.image.shape, settings, frame.index, frame.timestamp)
                done = time.perf_counter()
                timings = StageTimings(frame.decode_ms, preprocess_ms, (inferred - start) * 1e3,
                                       (done - inferred) * 1e3, (done - frame.capture_time) * 1e3)
                yield FrameResult(frame.index, frame.timestamp, detections, timings, opened.dropped,
                                  opened.skipped, frame, settings)
                count += 1
        finally:
            prepared.close()
            if opened is not source:
                opened.close()

    def _inline(self, source: Source) -> Iterator[tuple]:
        """(frame, batch, preprocess ms) per frame, read and preprocessed in the calling thread (live sources,
        prefetch 0)."""
        frames = iter(source)
        try:
            yield from self._prepared(source, frames)
        finally:
            frames.close()

    def _prepared(self, source: Source, frames: Iterator[Frame]) -> Iterator[tuple]:
        """(frame, batch, preprocess ms) per frame of `frames`; a frame preprocessing refuses is skipped where
        `source.skip_unsupported` (stream()'s docstring), else its InputError is raised."""
        for frame in frames:
            start = time.perf_counter()
            try:
                batch = self._prepare(frame)
            except InputError as exc:
                if not source.skip_unsupported:
                    raise
                source.skipped += 1
                log.warning("skipping %s", exc)  # the message starts with the frame's name and index
                continue
            yield frame, batch, (time.perf_counter() - start) * 1e3

    def _prefetched(self, source: Source, limit: Optional[int] = None) -> Iterator[tuple]:
        """(frame, batch, preprocess ms) per frame, read and preprocessed by a reader thread into a queue of
        `prefetch` items: decoding overlaps inference; a slow consumer blocks the reader (bounded memory). The
        reader stops after `limit` items (None = all): frames it read beyond what was taken would be lost."""
        items: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        frames = iter(source)

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for item in itertools.islice(self._prepared(source, frames), limit):
                    if not put(item):
                        return
                put(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
                put(exc)

        reader = threading.Thread(target=read, name=f"edge-irst reader {source.name}", daemon=True)
        reader.start()
        try:
            while True:
                item = items.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            reader.join()  # a file read never blocks for long; the source is closed only after the reader left it
            frames.close()

    # ---- reporting / lifetime ------------------------------------------------------------------------------------
    def describe(self) -> dict:
        """Model, backend and the options it applied, contract, policy, postprocess settings and implementation."""
        settings = self.settings.snapshot()
        return {
            "model": str(self.model), "artifact": str(self.backend.path), "backend": self.backend.name,
            "options_in_effect": self.backend.options_in_effect(),
            "input": self.backend.inputs[0].to_dict(),
            "contract": {"channel_order": self.contract.channel_order, "input_size": self.contract.input_size,
                         "stride": self.contract.stride, "provenance": self.contract.provenance},
            **self._policy.describe(),
            "threshold": settings.threshold,
            "filter": settings.target_filter.to_dict(),
            "raw_mapping": self.raw.describe(),
            "reader_thread": {"prefetch": self.prefetch, "usable_cpus": usable_cpus(),
                              "used_for": "files, folders, video, synthetic" if self.prefetch else "none (in line)"},
            "postprocess": implementation_info(),
        }

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Detector({self.backend.path.name!r} on {self.backend.name}, policy={self.policy!r})"


__all__ = ["BACKEND_PREFERENCE", "POLICIES", "STAGES", "Detector", "FrameResult", "StageTimings", "StreamStats",
           "preferred_backend", "usable_cpus"]

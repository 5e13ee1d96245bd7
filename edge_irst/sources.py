"""Frame sources: everything `edge-irst run --source` and `Detector.stream()` read frames from.

    with open_source("synthetic:640x512,targets=5,frames=300,seed=0") as source:
        for frame in source:              # Frame: index, image (numpy), timestamp, capture_time, decode_ms, ...
            ...

Specs `open_source` understands:
- an image file; a folder of images (non-recursive, natural order); a glob (`frames/*.png`, `**` recursive);
- a video file (OpenCV's FFmpeg backend; a grey video of 9..16 bits, e.g. FFV1 gray16le, as uint16 raw frames);
- a camera: an index (`0`) or a V4L2 device path (`/dev/video0`);
- a stream URL: rtsp://, rtsps://, rtmp://, http(s):// (e.g. MJPEG), udp://, tcp://, srt://;
- `synthetic[:WxH][,targets=N][,frames=N][,seed=N][,bits=N][,fps=F]`: moving Gaussian point targets with known
  ground truth (edge_irst.synthetic.SyntheticScene); WxH is width x height as cameras quote it (default
  256x256), frames=0 is endless, bits=14 gives uint16 raw frames;
- any iterable of numpy frames (`IterableSource`).

Files (images, videos, synthetic) deliver every frame in order, never dropping one; a corrupt image or video
frame is logged, counted in `skipped` and passed over, and so is an image in a form the pipeline cannot take
(Detector.stream). Live sources (camera, stream) deliver the LATEST frame: a grabber thread reads continuously
and keeps only the newest frame, counting the ones nobody took in `dropped`, so a slow consumer sees fresh
frames instead of a growing backlog (camera and RTSP buffers otherwise make results seconds late). A frame of a
live source that cannot be decoded is logged, counted in `skipped` and passed over, the source staying open
(LiveSource.MAX_FAILED_READS). A live source that stops delivering is reopened with exponential back-off
(`Reconnect`), the gap (from its last frame) is logged and counted; when the retries run out, iteration ends
with a SourceError.
"""
from __future__ import annotations

import glob
import logging
import math
import re
import threading
import time
from collections.abc import Iterable as _IterableABC
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import cv2
import numpy as np

from .errors import InputError, SourceError
from .preprocess import read_image
from .synthetic import SyntheticFrame, SyntheticScene

log = logging.getLogger("edge_irst.sources")

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".pgm", ".ppm", ".pnm", ".webp")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv", ".flv", ".ts",
                  ".mts", ".mjpeg", ".mjpg", ".y4m", ".h264", ".h265", ".hevc")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame.

    index: position in the source (files: the image's place in the list or the video frame number; live: the
        capture sequence number, so a gap between consecutive indices is a dropped frame).
    image: the frame as decoded: uint8 HxW (grey), uint8 HxWx3 (BGR), uint8 HxWx4 (BGRA) or uint16 HxW (raw IR);
        row-major, (0, 0) = top-left pixel. Never modified by the pipeline.
    timestamp: seconds on the source's clock: a video's presentation time, index / fps for synthetic frames,
        Unix time of capture for live sources; None where the source has no clock (images).
    capture_time: time.perf_counter() when the frame was read (the origin of capture-to-result latency).
    decode_ms: time spent reading and decoding it (ms).
    name: where it came from (a file path, "camera 0", a URL).
    truth: the ground truth of a synthetic frame, else None.
    """

    index: int
    image: np.ndarray
    timestamp: Optional[float]
    capture_time: float
    decode_ms: float
    name: str
    truth: Optional[SyntheticFrame] = None


class Source:
    """Base of every source: iterate it for Frames; close() it (or use `with`) to release files and threads.

    name: what it reads. live: True when frames are dropped rather than queued (camera, stream). fps: nominal frame
    rate where known, else None. length: number of frames where known, else None. skipped: corrupt frames/images
    passed over. dropped: frames captured but replaced by a newer one before anybody took them (live only).
    reconnects / gaps_s: reopenings of a live source that brought frames again, and the outage each one ended
    (s, from the last frame before it to the first after it).
    skip_unsupported: True where every frame is a file of its own (images): one the pipeline cannot take (e.g. a
    16-bit colour PNG) is reported, counted in `skipped` and passed over like a corrupt one. Elsewhere all frames
    share the source's format, so the first unsupported one is an error rather than a skip per frame.
    """

    kind = "source"
    live = False
    skip_unsupported = False

    def __init__(self, name: str):
        self.name = name
        self.fps: Optional[float] = None
        self.length: Optional[int] = None
        self.skipped = 0
        self.dropped = 0
        self.reconnects = 0
        self.gaps_s: list[float] = []

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds. Idempotent."""

    def stop(self) -> None:
        """Ends the iteration before its next frame; callable from any thread (a control `quit`). Only a live
        source can keep its reader waiting (a reconnection's back-off, a stalled stream), so only it has anything
        to do: other sources hand their next frame at once, and the reader stops there by itself."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stats(self) -> dict:
        return {"source": self.name, "kind": self.kind, "live": self.live, "skipped": self.skipped,
                "dropped": self.dropped, "reconnects": self.reconnects,
                "longest_gap_s": round(max(self.gaps_s), 3) if self.gaps_s else 0.0}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---- files ---------------------------------------------------------------------------------------------------
class ImageFilesSource(Source):
    """Image files in the given order; an unreadable one is logged, counted in `skipped`, and passed over."""

    kind = "images"
    skip_unsupported = True

    def __init__(self, paths: Iterable[Union[str, Path]], name: str):
        super().__init__(name)
        self.paths = [Path(p) for p in paths]
        self.length = len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            start = time.perf_counter()
            try:
                image = read_image(path)
            except InputError as exc:
                self.skipped += 1
                log.warning("skipping %s: %s", path, exc)
                continue
            done = time.perf_counter()
            yield Frame(index, image, None, done, (done - start) * 1e3, str(path))


# FFmpeg's codec tag of a grey pixel format deeper than 8 bits, as CAP_PROP_CODEC_PIXEL_FORMAT reports it: the
# bytes 'Y', '1', 0, bits (gray16le, the Y16 of thermal cores: "Y1\0\x10"; gray12le: "Y1\0\x0c").
_DEEP_GREY_TAG, _DEEP_GREY_BITS = 0x003159, range(9, 17)


def _open_video(path: Path) -> tuple:
    """(capture, bits): an 8-bit video decoded to BGR as OpenCV does by default (bits 8), or a grey video of 9..16
    bits opened without that conversion, so that frames come as uint16 (H, W) with their raw values (bits = the
    format's depth). OpenCV's default would squeeze such a video to 8-bit BGR and lose what RawMapping is for."""
    capture = cv2.VideoCapture(str(path))
    tag = int(capture.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT)) if capture.isOpened() else 0
    if tag & 0xFFFFFF != _DEEP_GREY_TAG or tag >> 24 not in _DEEP_GREY_BITS:
        return capture, 8
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # its warning that conversion is off: meant
    try:
        raw = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_CONVERT_RGB, 0])
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not raw.isOpened():  # keep what opened, as 8-bit BGR
        raw.release()
        return capture, 8
    capture.release()
    return raw, tag >> 24


class VideoFileSource(Source):
    """A video file read in order through OpenCV (FFmpeg). A frame that cannot be decoded (corrupt) is reported,
    counted in `skipped` and passed over; a file that ends before the frame count its header announces (truncated)
    is reported with a warning and the missing frames are counted in `skipped`. Frame.index is the frame's number
    in the file, also when the source is iterated again after an earlier iteration stopped early (it goes on from
    where that one stopped). One exception: a frame FFmpeg passes over without a failed read (an AVI chunk whose
    header is damaged) shifts the index and the timestamp of every later frame by one; only the header's frame
    count reveals it, at the end, as a missing frame.

    Frames are BGR uint8 (H, W, 3), except from a grey video of more than 8 bits (FFV1 or raw gray16le, as
    thermal recordings are stored): uint16 (H, W) with the recorded values, mapped to the model's range by the
    pipeline's RawMapping (`--raw-range`) like 16-bit images. `bits` says which (8, or the format's depth)."""

    kind = "video"
    # Consecutive failed reads after which the file is taken to have ended: a corrupt frame fails one read and
    # the next read returns the frame after it, but past the end of a truncated file every read fails (in about
    # a microsecond), and OpenCV tells neither case apart. With no frame count in the header, 25.
    MAX_FAILED_READS = 25
    # With a frame count, the reads go on to the count, so that a longer corrupt stretch loses no frame after it;
    # at most this many in a row (about a second of reads past the end, should the header's count be wrong).
    MAX_FAILED_READS_COUNTED = 1 << 20

    def __init__(self, path: Union[str, Path]):
        super().__init__(str(path))
        self._capture, self.bits = _open_video(Path(path))
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"cannot open video {path}: OpenCV ({cv2.__version__}, FFmpeg backend) cannot read "
                              f"it; check that it is a complete video file ({', '.join(VIDEO_SUFFIXES[:6])}, ...)")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = fps if fps and math.isfinite(fps) and fps > 0 else None
        self.length = count if count > 0 else None
        self._position = 0  # number of the next frame in the file: frames delivered + corrupt ones passed over
        self._ended = False

    def __iter__(self) -> Iterator[Frame]:
        failed = 0  # consecutive failed reads from self._position on
        limit = self.MAX_FAILED_READS if self.length is None else self.MAX_FAILED_READS_COUNTED
        while self._capture is not None and not self._ended:
            start = time.perf_counter()
            ok, image = self._capture.read()
            done = time.perf_counter()
            if not ok or image is None:
                failed += 1
                at_end = self.length is not None and self._position + failed > self.length
                if at_end or failed >= limit:
                    self._end()
                continue
            if failed:  # the reads that failed were frames that cannot be decoded
                self.skipped += failed
                log.warning("%s: %s cannot be decoded (corrupt); skipped", self.name,
                            f"frame {self._position}" if failed == 1
                            else f"frames {self._position}..{self._position + failed - 1}")
                self._position += failed
                failed = 0
            position = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1e3
            timestamp = position if math.isfinite(position) else None
            index, self._position = self._position, self._position + 1
            yield Frame(index, image, timestamp, done, (done - start) * 1e3, self.name)

    def _end(self) -> None:
        """No more frames: reports those the header announces that never came (truncated file)."""
        self._ended = True
        if self.length is not None and self._position < self.length:
            missing = self.length - self._position
            self.skipped += missing
            log.warning("%s ended after %d of the %d frames its header announces (truncated or corrupt); %d "
                        "frames skipped", self.name, self._position, self.length, missing)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class SyntheticSource(Source):
    """Frames of a SyntheticScene, with their ground truth in Frame.truth; `frames` 0 = endless."""

    kind = "synthetic"
    OPTIONS = {"targets": int, "frames": int, "seed": int, "bits": int, "fps": float}

    def __init__(self, size: tuple[int, int] = (256, 256), targets: int = 3, frames: int = 300, seed: int = 0,
                 bits: int = 8, fps: float = 25.0, name: Optional[str] = None):
        if frames < 0 or not fps > 0:
            raise SourceError(f"synthetic source: frames={frames}, fps={fps}; expected frames >= 0 (0 = endless) "
                              f"and fps > 0")
        self.scene = SyntheticScene(size, targets=targets, seed=seed, bits=bits)
        h, w = self.scene.size
        super().__init__(name or f"synthetic:{w}x{h},targets={targets},frames={frames},seed={seed}"
                                 + (f",bits={bits}" if bits != 8 else ""))
        self.fps = float(fps)
        self.length = frames or None

    @classmethod
    def from_spec(cls, spec: str) -> "SyntheticSource":
        """`synthetic[:WxH][,key=value...]` (keys: targets, frames, seed, bits, fps)."""
        body = spec[len("synthetic"):].lstrip(":")
        parts = [p.strip() for p in body.split(",") if p.strip()]
        kwargs: dict = {}
        if parts and re.fullmatch(r"\d+x\d+", parts[0]):
            w, h = (int(v) for v in parts.pop(0).split("x"))
            kwargs["size"] = (h, w)
        for part in parts:
            key, _, value = part.partition("=")
            if key not in cls.OPTIONS or not value:
                raise SourceError(f"synthetic source spec {spec!r}: cannot read {part!r}; expected "
                                  f"synthetic[:WxH][,key=value...] with keys {', '.join(cls.OPTIONS)}, e.g. "
                                  f"synthetic:640x512,targets=5,frames=300,seed=0")
            try:
                kwargs[key] = cls.OPTIONS[key](value)
            except ValueError:
                raise SourceError(f"synthetic source spec {spec!r}: {key}={value!r} is not a valid "
                                  f"{cls.OPTIONS[key].__name__}") from None
        try:
            return cls(**kwargs, name=spec)
        except InputError as exc:
            raise SourceError(f"synthetic source spec {spec!r}: {exc}") from exc

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while self.length is None or index < self.length:
            start = time.perf_counter()
            truth = self.scene.frame(index)
            done = time.perf_counter()
            yield Frame(index, truth.image, index / self.fps, done, (done - start) * 1e3, self.name, truth)
            index += 1


class IterableSource(Source):
    """Any iterable of numpy frames (HxW / HxWxC, uint8 or uint16), e.g. a list or a generator; in order."""

    kind = "frames"

    def __init__(self, frames: Iterable[np.ndarray], name: str = "frames", fps: Optional[float] = None):
        super().__init__(name)
        self._frames = frames
        self.fps = fps
        self.length = len(frames) if hasattr(frames, "__len__") else None

    def __iter__(self) -> Iterator[Frame]:
        frames = iter(self._frames)
        index = 0
        while True:
            start = time.perf_counter()
            try:
                image = next(frames)
            except StopIteration:
                return
            done = time.perf_counter()
            if not isinstance(image, np.ndarray):
                raise InputError(f"{self.name}: item {index} is a {type(image).__name__}; expected numpy frames "
                                 f"(HxW or HxWxC, uint8 or uint16)")
            yield Frame(index, image, None if self.fps is None else index / self.fps, done, (done - start) * 1e3,
                        self.name)
            index += 1


# ---- live sources --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reconnect:
    """How a live source survives outages.

    retries: reopening attempts after a failure before giving up (0 = give up at once). backoff_s: the wait before
    the first attempt, doubled after each failed one up to backoff_max_s; a backoff_s above backoff_max_s is kept
    for every attempt (the cap stops the doubling, it never makes a wait shorter than the first).
    open_timeout_s / read_timeout_s: how long OpenCV's FFmpeg backend may block opening a stream / waiting for a
    frame before that counts as a failure.
    at_start: also retry the first opening on the same schedule (a camera or stream server that comes up after
    the run starts, as on a robot's boot). Off by default: a wrong device or URL then fails at once.
    """

    retries: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    at_start: bool = False

    def __post_init__(self):
        if not (isinstance(self.retries, int) and self.retries >= 0):
            raise InputError(f"Reconnect.retries = {self.retries!r}; expected an int >= 0")
        if not isinstance(self.at_start, bool):
            raise InputError(f"Reconnect.at_start = {self.at_start!r}; expected True or False")
        for name in ("backoff_s", "backoff_max_s", "open_timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"Reconnect.{name} = {value!r}; expected a finite number of seconds >= 0")

    @property
    def longest_wait_s(self) -> float:
        """Where the doubling stops: backoff_max_s, or backoff_s where that is larger (the waits never shrink)."""
        return max(self.backoff_s, self.backoff_max_s)

    def delays(self) -> Iterator[float]:
        """The waits before attempt 1, 2, ... retries: backoff_s, doubled each time up to longest_wait_s."""
        delay = self.backoff_s
        for _ in range(self.retries):
            yield delay
            delay = min(delay * 2.0, self.longest_wait_s)


class LiveSource(Source):
    """A camera or network stream read by a grabber thread that keeps only the newest frame.

    target: what cv2.VideoCapture opens (an int index, a device path or a URL). Opening fails with a SourceError
    when the device/stream cannot be opened: at once, or after the retries with reconnect.at_start; later outages
    are retried per `reconnect`.
    """

    kind = "live"
    live = True
    # Consecutive failed reads on an open capture that are taken for frames that cannot be decoded, before the
    # source counts as lost. A corrupt JPEG in an MJPEG stream fails one read and the next read returns the frame
    # after it, where a dropped connection fails every read at once: each failure is read again, up to this many.
    # A read that fails after half the read timeout or more is a stall, and an outage at once.
    MAX_FAILED_READS = 8

    def __init__(self, target: Union[int, str], name: str, kind: str, reconnect: Reconnect = Reconnect(),
                 api: int = cv2.CAP_ANY, open_error: Optional[Callable[[], str]] = None):
        super().__init__(name)
        self.kind = kind
        self.reconnect = reconnect
        self._target, self._api = target, api
        capture = self._open_at_start()
        if capture is None:
            tried = f" ({reconnect.retries + 1} attempts)" if reconnect.at_start and reconnect.retries else ""
            raise SourceError((open_error() if open_error else f"cannot open {name}") + tried)
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and math.isfinite(fps) and 0 < fps < 1000 else None
        self._latest: Optional[Frame] = None
        self._finished = False
        self._error: Optional[SourceError] = None
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grab, args=(capture,), name=f"edge-irst grabber {name}",
                                        daemon=True)
        self._thread.start()

    def _open(self) -> Optional[cv2.VideoCapture]:
        """An opened capture, or None."""
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.reconnect.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.reconnect.read_timeout_s * 1000)]
        capture = cv2.VideoCapture(self._target, self._api, params)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _open_at_start(self) -> Optional[cv2.VideoCapture]:
        """The first opening: once, or with reconnect.at_start retried per reconnect.delays(); None if it failed."""
        capture = self._open()
        if capture is not None or not self.reconnect.at_start:
            return capture
        for attempt, delay in enumerate(self.reconnect.delays(), start=1):
            log.warning("%s: not available yet; retry %d of %d in %g s", self.name, attempt,
                        self.reconnect.retries, delay)
            time.sleep(delay)
            capture = self._open()
            if capture is not None:
                log.warning("%s: opened on retry %d", self.name, attempt)
                return capture
        return None

    def _grab(self, capture: cv2.VideoCapture) -> None:
        index = 0
        last_frame_at = time.perf_counter()  # when the last frame came (or the capture opened): outages start here
        # The outage in progress: its attempts left, and the one that reopened the source. It lasts until a frame
        # comes: a reopening that delivers none (a stream that connects but cannot be decoded, a device that opens
        # but does not stream) uses up an attempt instead of starting a new round of retries.
        attempts, reopened_on = None, 0
        failed = 0  # consecutive quick failed reads on this capture (frames that could not be decoded, so far)
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                ok, image = capture.read()
                done = time.perf_counter()
                if ok and image is not None:
                    if failed:  # the reads that failed were frames of the stream that cannot be decoded
                        self.skipped += failed
                        log.warning("%s: %s after frame %d cannot be decoded (corrupt); skipped", self.name,
                                    "1 frame" if failed == 1 else f"{failed} frames", index - 1)
                        index += failed
                        failed = 0
                    if attempts is not None:
                        gap = done - last_frame_at
                        self.reconnects += 1
                        self.gaps_s.append(gap)
                        log.warning("%s: reconnected on attempt %d after a %.2f s gap", self.name, reopened_on, gap)
                        attempts = None
                    frame = Frame(index, image, time.time(), done, (done - start) * 1e3, self.name)
                    index += 1
                    last_frame_at = done
                    with self._condition:
                        if self._latest is not None:
                            self.dropped += 1
                        self._latest = frame
                        self._condition.notify_all()
                    continue
                if done - start < 0.5 * self.reconnect.read_timeout_s and failed + 1 < self.MAX_FAILED_READS:
                    failed += 1
                    continue
                failed = 0
                capture.release()
                capture = None
                if self._stop.is_set():
                    break
                if attempts is None:
                    attempts = enumerate(self.reconnect.delays(), start=1)
                    self._log_outage(index - 1)
                else:
                    log.info("%s: reconnection attempt %d of %d opened it, but no frame came", self.name,
                             reopened_on, self.reconnect.retries)
                reopened = self._reopen(attempts, index - 1, last_frame_at)
                if reopened is None:
                    break
                capture, reopened_on = reopened
        except BaseException as exc:  # noqa: BLE001 - a crash must end the iteration, not hang it
            self._error = SourceError(f"{self.name}: the frame grabber failed: {type(exc).__name__}: {exc}")
            log.error("%s", self._error)
        finally:
            if capture is not None:
                capture.release()
            with self._condition:
                self._finished = True
                self._condition.notify_all()

    @staticmethod
    def _after(last_index: int) -> str:
        return f"after frame {last_index}" if last_index >= 0 else "before its first frame"

    def _log_outage(self, last_index: int) -> None:
        policy = self.reconnect
        log.warning("%s: no frame %s; reconnecting (up to %d attempts, back-off %g s doubling to %g s)", self.name,
                    self._after(last_index), policy.retries, policy.backoff_s, policy.longest_wait_s)

    def _reopen(self, attempts: Iterator[tuple[int, float]], last_index: int,
                lost: float) -> Optional[tuple[cv2.VideoCapture, int]]:
        """(capture, attempt): the source reopened by the next of the outage's `attempts` (attempt, delay), each
        after its wait; None when stopped or out of attempts. The reconnection counts once a frame comes (_grab).

        last_index: the last frame delivered (-1: none yet). lost: perf_counter() of its capture (or of the
        opening), so a gap includes the read timeout that passed before the failure was noticed."""
        policy = self.reconnect
        for attempt, delay in attempts:
            if self._stop.wait(delay):
                return None
            capture = self._open()
            if capture is not None:
                return capture, attempt
            log.info("%s: reconnection attempt %d of %d failed", self.name, attempt, policy.retries)
        gap = time.perf_counter() - lost
        self.gaps_s.append(gap)
        self._error = SourceError(
            f"{self.name}: lost {self._after(last_index)}; {policy.retries} reconnection attempts over {gap:.1f} s "
            f"failed. Check the camera/stream; to wait longer raise the retries or back-off "
            f"(Reconnect(retries=..., backoff_max_s=...), edge-irst run --reconnect-retries N)")
        log.error("%s", self._error)
        return None

    def __iter__(self) -> Iterator[Frame]:
        while not self._stop.is_set():
            with self._condition:
                while self._latest is None and not self._finished and not self._stop.is_set():
                    self._condition.wait()
                frame, self._latest = self._latest, None
            if frame is None or self._stop.is_set():
                break
            yield frame
        # A stop() asked for ends the iteration cleanly, also when the source failed meanwhile (a quit that lands
        # as the retries run out): the failure is in the log.
        if self._error is not None and not self._stop.is_set():
            raise self._error

    def stop(self) -> None:
        """Ends the iteration at once, even while the grabber waits out a reconnection's back-off or a read."""
        with self._condition:
            self._stop.set()
            self._condition.notify_all()

    def close(self) -> None:
        self.stop()
        # A blocked opening or read returns within its timeout; the thread is a daemon, so an exit never waits longer.
        self._thread.join(timeout=max(self.reconnect.open_timeout_s, self.reconnect.read_timeout_s) + 1.0)


# ---- opening a spec ------------------------------------------------------------------------------------------
def _natural_key(path: Path) -> list:
    """frame_2.png before frame_10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _camera_error(spec: str) -> Callable[[], str]:
    def message() -> str:
        devices = sorted(str(p) for p in Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
        seen = f"video devices here: {', '.join(devices)}" if devices else "this machine has no /dev/video* devices"
        return (f"camera {spec!r} could not be opened ({seen}). Check that it is connected and not in use, that "
                f"you may read it (the 'video' group), or pass another index / device, a video file, or "
                f"--source synthetic")
    return message


def open_source(spec: Union[str, int, Path, Source, Iterable[np.ndarray]],
                reconnect: Reconnect = Reconnect()) -> Source:
    """A Source for `spec` (see the module docstring). A Source passes through unchanged.

    reconnect: outage handling of live sources (cameras, streams); ignored by the others.
    Raises SourceError naming the spec and what is accepted when it cannot be opened.
    """
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return LiveSource(int(spec), f"camera {int(spec)}", "camera", reconnect, open_error=_camera_error(str(spec)))
    if not isinstance(spec, (str, Path)):
        if isinstance(spec, _IterableABC):
            return IterableSource(spec)
        raise SourceError(f"source {spec!r} ({type(spec).__name__}) is not something frames can be read from; "
                          f"expected a path, a glob, a camera index, a URL, 'synthetic[:WxH,...]', a Source or an "
                          f"iterable of numpy frames")
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:") or text.startswith("synthetic,"):
        return SyntheticSource.from_spec(text)
    if text.isdigit():
        return LiveSource(int(text), f"camera {text}", "camera", reconnect, open_error=_camera_error(text))
    scheme = text.split("://", 1)[0].lower() if "://" in text else None
    if scheme in STREAM_SCHEMES:
        return LiveSource(text, text, "stream", reconnect, cv2.CAP_FFMPEG, open_error=lambda: (
            f"cannot open stream {text}: FFmpeg could not connect (refused, unreachable or not a stream it reads), "
            f"or read no frame within {reconnect.open_timeout_s:g} s. Check the URL, that the server is up and "
            f"reachable from here, and credentials"))
    if scheme is not None:
        raise SourceError(f"source {text!r}: unsupported URL scheme {scheme!r}; accepted: "
                          f"{', '.join(STREAM_SCHEMES)}")
    path = Path(text)
    if text.startswith("/dev/video"):
        if not path.exists():
            raise SourceError(_camera_error(text)())
        return LiveSource(text, text, "camera", reconnect, cv2.CAP_V4L2, open_error=_camera_error(text))
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                       key=_natural_key)
        if not files:
            raise SourceError(f"folder {path} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
        return ImageFilesSource(files, str(path))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return ImageFilesSource([path], str(path))
        if suffix in VIDEO_SUFFIXES:
            return VideoFileSource(path)
        raise SourceError(f"source {path}: unknown file type {suffix or '(no suffix)'!r}; accepted images "
                          f"{', '.join(IMAGE_SUFFIXES)} and videos {', '.join(VIDEO_SUFFIXES)}")
    if any(c in text for c in "*?["):
        files = sorted((Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()), key=_natural_key)
        if not files:
            raise SourceError(f"glob {text!r} matches no files")
        return ImageFilesSource(files, text)
    raise SourceError(f"source {text!r} not found: expected an image or video file, a folder of images, a glob, "
                      f"a camera index (0) or /dev/videoN, a stream URL ({', '.join(STREAM_SCHEMES)}) or "
                      f"'synthetic[:WxH,targets=N,frames=N,seed=N]'")


__all__ = ["Frame", "Source", "ImageFilesSource", "VideoFileSource", "SyntheticSource", "IterableSource",
           "LiveSource", "Reconnect", "open_source", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "STREAM_SCHEMES"]

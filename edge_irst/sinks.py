"""Where results go: JSON Lines, CSV, annotated video, annotated images, an OpenCV window.

Every sink takes `write(result)` per FrameResult and `close()`; `SinkSet` closes all of them even when one fails.
An output that cannot be written (a bad path, a full disk) raises one SinkError naming it, its path and the OS's
reason; close() after that does not raise again. Interruption (Ctrl-C, a crash) never leaves a truncated file
behind: JSON Lines and CSV go to the OS unbuffered, one piece per frame (the file always ends with a complete line,
also when a write fails half way: the part written is cut off again), the video writer is released by close()
(which runs from `with` / `finally`), and annotated images are written to a temporary name and renamed into place.

JSON Lines record (one object per frame; schema: tests/schemas/detections.schema.json):
    {"frame_index", "timestamp", "source", "frame_name", "frame_shape": [H, W(, C)], "threshold",
     "filter": {"size_min", "size_max", "ratio_min", "ratio_max", "inclusive"}, "policy",
     "conventions": {...}, "targets": [{"id", "centroid": [x, y], "weighted_centroid": [x, y],
     "box": [x_min, y_min, x_max, y_max], "size", "aspect_ratio", "score", "mean_logit", "peak": [x, y]}]}
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
from pathlib import Path
from typing import Iterable, Optional

import cv2

from .annotate import annotate
from .errors import InputError, SinkError
from .pipeline import FrameResult
from .preprocess import RawMapping

# suffix -> FourCC of the video writer (all through OpenCV's FFmpeg backend).
VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}


def conventions(policy: str) -> dict:
    """How to read the coordinates and values of a record made under `policy`."""
    return {
        "threshold": "a pixel is target where logit > threshold (a logit, not a probability)",
        "coordinates": "source-frame pixels; x = column, y = row; pixel centres at integers, (0, 0) = centre of "
                       "the top-left pixel",
        "box": "[x_min, y_min, x_max, y_max], inclusive pixel-centre coordinates: the target covers "
               "[x_min - 0.5, x_max + 0.5] x [y_min - 0.5, y_max + 0.5]",
        "size": "pixel count of the target in the labelled grid: "
                + ("model-input pixels (policy resize)" if policy == "resize" else "source-frame pixels"),
        "aspect_ratio": "box width / height in the labelled grid",
        "score": "peak logit of the target (sigmoid(score) is the model's peak pixel probability)",
    }


def _finite(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def frame_record(result: FrameResult, source: str, policy: str) -> dict:
    """The JSON Lines object of one frame (plain Python types; non-finite values as None)."""
    d = result.detections
    targets = [{
        "id": i,
        "centroid": [float(d.x[i]), float(d.y[i])],
        "weighted_centroid": [float(d.weighted_x[i]), float(d.weighted_y[i])],
        "box": [float(d.x_min[i]), float(d.y_min[i]), float(d.x_max[i]), float(d.y_max[i])],
        "size": int(d.size[i]),
        "aspect_ratio": float(d.aspect_ratio[i]),
        "score": _finite(float(d.peak_logit[i])),
        "mean_logit": _finite(float(d.mean_logit[i])),
        "peak": [float(d.peak_x[i]), float(d.peak_y[i])],
    } for i in range(len(d))]
    return {"frame_index": result.index, "timestamp": result.timestamp, "source": source,
            "frame_name": result.frame.name, "frame_shape": list(result.frame.image.shape),
            "threshold": result.settings.threshold, "filter": result.settings.target_filter.to_dict(),
            "policy": policy, "conventions": conventions(policy),
            "targets": targets}


class Sink:
    """Base: write(result) per frame, close() once (idempotent). `stop_requested` asks the caller to stop."""

    stop_requested = False

    def start(self, first: FrameResult) -> None:
        """Opens what needs the first frame (the video writer: its size). write() calls it where needed; SinkSet
        calls it on every sink before writing the first frame to any, so an output that cannot be opened fails
        before the others have written a frame the run's summary would not count."""

    def write(self, result: FrameResult) -> None:
        raise NotImplementedError

    def retract(self, result: FrameResult) -> None:
        """Takes back `result`, the frame this sink wrote last, where it can: a sink after it in a SinkSet failed
        on that frame, which the run then does not count. A video or a window cannot take a frame back."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sink_error(what: str, path: Path, exc: OSError) -> SinkError:
    """'cannot write the <what> to <path>: <the OS's reason>; <what to do>'."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "free space there or choose another path" if full else "choose a writable path"
    return SinkError(f"cannot write the {what} to {path}: {exc.strerror or exc}; {fix}")


def _make_folder(folder: Path, what: str, path: Path) -> None:
    """Creates `folder` and its parents for the `what` written to `path`; SinkError when it cannot."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _sink_error(what, path, exc) from exc


class _TextFileSink(Sink):
    """A text file written unbuffered, one piece per frame, so that it always ends with a complete line. An OS error
    while writing (a full disk, a file-size limit) becomes a SinkError naming the file, and what did get written of
    that frame's piece is cut off again: the file holds exactly the frames written before it."""

    what = "results"

    def __init__(self, path):
        self.path = Path(path)
        _make_folder(self.path.parent, self.what, self.path)
        try:
            self._file = open(self.path, "wb", buffering=0)
        except OSError as exc:
            raise _sink_error(self.what, self.path, exc) from exc
        self._size = 0  # bytes of the complete pieces written
        self._size_before = 0  # ... before the last piece (retract)

    def _append(self, text: str) -> None:
        data = text.encode("utf-8")
        rest = memoryview(data)
        try:
            while rest:
                rest = rest[self._file.write(rest):]  # a write to a nearly full disk can take only a part
        except OSError as exc:
            with contextlib.suppress(OSError):  # a device (/dev/full) cannot be cut: nothing landed there anyway
                self._file.truncate(self._size)
                self._file.seek(self._size)
            raise _sink_error(self.what, self.path, exc) from exc
        self._size_before, self._size = self._size, self._size + len(data)

    def retract(self, result: FrameResult) -> None:
        self._file.truncate(self._size_before)
        self._file.seek(self._size_before)
        self._size = self._size_before

    def close(self) -> None:
        self._file.close()


class JsonlSink(_TextFileSink):
    """JSON Lines: one object per frame (frame_record), one line written per frame."""

    what = "JSON Lines results"

    def __init__(self, path, source: str, policy: str):
        super().__init__(path)
        self.source, self.policy = source, policy

    def write(self, result: FrameResult) -> None:
        self._append(json.dumps(frame_record(result, self.source, self.policy), allow_nan=False) + "\n")


class CsvSink(_TextFileSink):
    """CSV: a header, then one row per target (frames without targets write no row); a frame's rows are written
    together."""

    what = "CSV results"
    COLUMNS = ("frame_index", "timestamp", "source", "frame_name", "target", "x", "y", "weighted_x", "weighted_y",
               "x_min", "y_min", "x_max", "y_max", "size", "aspect_ratio", "score", "mean_logit", "threshold")

    def __init__(self, path, source: str):
        super().__init__(path)
        self.source = source
        self._rows = io.StringIO()  # a frame's rows, formatted by csv, then appended in one piece
        self._writer = csv.writer(self._rows)
        try:
            self._writer.writerow(self.COLUMNS)
            self._flush_rows()
        except SinkError:
            self.close()
            raise

    def _flush_rows(self) -> None:
        text = self._rows.getvalue()
        self._rows.seek(0)
        self._rows.truncate()
        self._append(text)

    def write(self, result: FrameResult) -> None:
        d = result.detections
        for i in range(len(d)):
            self._writer.writerow((
                result.index, "" if result.timestamp is None else result.timestamp, self.source,
                result.frame.name, i, d.x[i], d.y[i], d.weighted_x[i], d.weighted_y[i], d.x_min[i], d.y_min[i],
                d.x_max[i], d.y_max[i], d.size[i], d.aspect_ratio[i], d.peak_logit[i], d.mean_logit[i],
                result.settings.threshold))
        self._flush_rows()


def _caption(result: FrameResult) -> str:
    return f"#{result.index}  {len(result.detections)} targets  thr {result.settings.threshold:g}"


class VideoSink(Sink):
    """An annotated video (.avi / .mkv: Motion JPEG, .mp4 / .mov: MPEG-4 part 2), opened at the first frame (its
    size fixes the video's); a frame of another size is resized to it. An odd width or height is padded with one
    black column / row at the right / bottom: the encoders take even sizes only, and OpenCV would otherwise crop
    the last column / row. Released by close(), which then reads the file's frame count back: OpenCV's writer
    reports no write failure (a full disk, a file-size limit), so a video cut short is found only there. A video
    opened (start) that got no frame is removed by close(): such a file (MP4, MKV) cannot even be read."""

    def __init__(self, path, fps: Optional[float] = None, raw: RawMapping = RawMapping()):
        self.path, self.raw = Path(path), raw
        self.fps = fps if fps and fps > 0 else 25.0
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise InputError(f"--save-video {self.path}: unsupported suffix {suffix or '(none)'!r}; accepted: "
                             f"{', '.join(VIDEO_CODECS)}")
        self.codec = VIDEO_CODECS[suffix]
        _make_folder(self.path.parent, "annotated video", self.path)
        self._writer: Optional[cv2.VideoWriter] = None
        self._size: Optional[tuple[int, int]] = None  # (width, height) of the frames; the video's is even
        self._frames = 0  # handed to the writer

    def start(self, first: FrameResult) -> None:
        if self._writer is not None:
            return
        height, width = first.frame.image.shape[:2]
        self._size = (width, height)
        even = (width + width % 2, height + height % 2)
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.codec), self.fps, even)
        if not self._writer.isOpened():
            self._writer = None
            other = "" if self.path.suffix.lower() == ".avi" else ", or try .avi"
            raise SinkError(f"OpenCV cannot write the video {self.path} ({self.codec}, {even[0]}x{even[1]}): "
                            f"check the folder is writable{other}")

    def write(self, result: FrameResult) -> None:
        self.start(result)
        canvas = annotate(result.frame.image, result.detections, self.raw, _caption(result))
        if (canvas.shape[1], canvas.shape[0]) != self._size:
            canvas = cv2.resize(canvas, self._size, interpolation=cv2.INTER_AREA)
        width, height = self._size
        if width % 2 or height % 2:
            canvas = cv2.copyMakeBorder(canvas, 0, height % 2, 0, width % 2, cv2.BORDER_CONSTANT, value=0)
        self._writer.write(canvas)
        self._frames += 1

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        if not self._frames:  # opened for a first frame that a sink before it failed on: no output was made
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            return
        # The containers written here (AVI and MP4 indexes, Matroska's duration) give the exact count back; a file
        # the disk cut short has no index (AVI: 0), no moov atom (MP4: not readable) or a bogus duration (MKV).
        capture = cv2.VideoCapture(str(self.path))
        held = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else None
        capture.release()
        if held != self._frames:
            found = "cannot be read back" if held is None else f"holds {max(held, 0)} of them"
            raise SinkError(f"the annotated video {self.path} is incomplete: {self._frames} frames were written and "
                            f"it {found}. OpenCV's video writer reports no write error: check that the disk has "
                            f"room and the file-size limit (ulimit -f)")


class ImageFolderSink(Sink):
    """Annotated PNGs, `<folder>/frame_<index>.png`, each written to a temporary name and renamed into place."""

    def __init__(self, folder, raw: RawMapping = RawMapping()):
        self.folder, self.raw = Path(folder), raw
        _make_folder(self.folder, "annotated images", self.folder)

    def write(self, result: FrameResult) -> None:
        canvas = annotate(result.frame.image, result.detections, self.raw, _caption(result))
        ok, data = cv2.imencode(".png", canvas)
        if not ok:
            raise SinkError(f"OpenCV could not encode frame {result.index} as PNG")
        target = self._path(result)
        partial = target.with_suffix(".png.part")
        try:
            data.tofile(str(partial))
            os.replace(partial, target)
        except OSError as exc:
            with contextlib.suppress(OSError):  # e.g. the folder is gone: the write's error is the one to report
                partial.unlink(missing_ok=True)
            raise _sink_error("annotated images", target, exc) from exc

    def retract(self, result: FrameResult) -> None:
        self._path(result).unlink(missing_ok=True)

    def _path(self, result: FrameResult) -> Path:
        return self.folder / f"frame_{result.index:06d}.png"


def gui_unavailable_reason() -> Optional[str]:
    """Why an OpenCV window cannot open here, or None when it can."""
    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "")
    if gui.upper() == "NONE":
        return (f"this OpenCV ({cv2.__version__}) is built without a GUI (opencv-python-headless, edge-irst's "
                f"dependency, has none). For --show replace it with the GUI build: pip uninstall "
                f"opencv-python-headless && pip install opencv-python; or save results with --save-video / "
                f"--save-dir instead")
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: neither DISPLAY nor WAYLAND_DISPLAY is set; use --save-video / --save-dir instead"
    return None


class WindowSink(Sink):
    """An OpenCV window showing annotated frames; q or Esc sets stop_requested."""

    def __init__(self, title: str = "edge-irst", raw: RawMapping = RawMapping()):
        why = gui_unavailable_reason()
        if why:
            raise SinkError(f"--show cannot open a window: {why}")
        self.title, self.raw = title, raw
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)

    def write(self, result: FrameResult) -> None:
        cv2.imshow(self.title, annotate(result.frame.image, result.detections, self.raw, _caption(result)))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop_requested = True

    def close(self) -> None:
        cv2.destroyWindow(self.title)


class SinkSet(Sink):
    """Several sinks as one: writes to each in order; close() closes every one, re-raising the first failure.

    A sink that fails on a frame has the sinks before it take that frame back (Sink.retract), so the outputs end
    with the same frames, which the run's summary counts. A video and a window cannot; put them last."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks = list(sinks)
        self._started = False

    @property
    def stop_requested(self) -> bool:  # type: ignore[override]
        return any(sink.stop_requested for sink in self.sinks)

    def start(self, first: FrameResult) -> None:
        for sink in self.sinks:
            sink.start(first)
        self._started = True

    def write(self, result: FrameResult) -> None:
        if not self._started:
            self.start(result)
        for done, sink in enumerate(self.sinks):
            try:
                sink.write(result)
            except BaseException:
                for written in self.sinks[:done]:
                    with contextlib.suppress(OSError):  # the failure being raised is the one to report
                        written.retract(result)
                raise

    def close(self) -> None:
        failure = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - the others must still be closed
                failure = failure or exc
        if failure is not None:
            raise failure


__all__ = ["VIDEO_CODECS", "CsvSink", "ImageFolderSink", "JsonlSink", "Sink", "SinkSet", "VideoSink",
           "WindowSink", "conventions", "frame_record", "gui_unavailable_reason"]

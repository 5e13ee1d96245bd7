"""Frame sources for real: image folders with corrupt files, globs, video files written by OpenCV (whole and
truncated), synthetic scenes, missing cameras, and an MJPEG-over-HTTP server on 127.0.0.1 that OpenCV's FFmpeg
backend reads as a live stream: latest-frame delivery with drop counting, reconnection with back-off after the
server drops the connection, and giving up when it is gone."""
from __future__ import annotations

import http.server
import logging
import re
import socketserver
import struct
import threading
import time

import cv2
import numpy as np
import pytest

from edge_irst.errors import InputError, SourceError
from edge_irst.sources import (IterableSource, LiveSource, Reconnect, SyntheticSource, VideoFileSource,
                               open_source)
from edge_irst.synthetic import SyntheticScene, match_truth
from conftest import until


def _write_png(path, image):
    assert cv2.imwrite(str(path), image)
    return path


def _write_video(path, frames, fps=25.0, fourcc="MJPG"):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame)
    writer.release()
    return path


def _corrupt_avi_frames(path, numbers):
    """Zeroes the JPEG data of the given frames of an MJPG .avi in place (the index and sizes stay valid): FFmpeg
    then fails to decode just those frames ("No JPEG data found in image")."""
    data = bytearray(path.read_bytes())
    frames = [m.start() + 8 for m in re.finditer(b"00dc", data) if data[m.start() + 8:m.start() + 10] == b"\xff\xd8"]
    for number in numbers:
        start = frames[number]
        size = struct.unpack("<I", data[start - 4:start])[0]
        data[start:start + size] = bytes(size)
    path.write_bytes(bytes(data))


# ---- synthetic ---------------------------------------------------------------------------------------------------
def test_synthetic_spec_is_parsed_and_deterministic_with_ground_truth():
    source = open_source("synthetic:160x128,targets=4,frames=5,seed=7,fps=10")
    assert isinstance(source, SyntheticSource) and source.length == 5 and source.fps == 10.0
    frames = list(source)
    again = list(open_source("synthetic:160x128,targets=4,frames=5,seed=7,fps=10"))
    assert [f.index for f in frames] == list(range(5))
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    for a, b in zip(frames, again):
        assert a.image.shape == (128, 160) and a.image.dtype == np.uint8
        assert np.array_equal(a.image, b.image)
        assert a.truth.centers.shape == (4, 2) and a.truth.sizes.shape == (4,) and (a.truth.sizes > 0).all()
    # targets move, each stays well inside the frame
    assert not np.allclose(frames[0].truth.centers, frames[4].truth.centers)
    centers = np.concatenate([f.truth.centers for f in frames])
    assert (centers[:, 0] >= 6).all() and (centers[:, 0] <= 154).all() and (centers[:, 1] <= 122).all()
    other_seed = next(iter(open_source("synthetic:160x128,targets=4,frames=5,seed=8")))
    assert not np.array_equal(other_seed.image, frames[0].image)


def test_synthetic_targets_are_where_the_truth_says_and_never_merge():
    scene = SyntheticScene((256, 320), targets=6, seed=1)
    for index in (0, 50, 400):
        frame = scene.frame(index)
        count, _, stats, centroids = cv2.connectedComponentsWithStats(frame.mask.astype(np.uint8), connectivity=8)
        assert count - 1 == 6  # one half-maximum blob per target: targets keep to their own grid cells
        match = match_truth(centroids[1:, 0], centroids[1:, 1], frame.centers, radius=1.0)
        assert match.found == 6
        assert sorted(stats[1:, cv2.CC_STAT_AREA]) == sorted(frame.sizes)
        brightest = [frame.image[int(round(y)), int(round(x))] for x, y in frame.centers]
        assert min(brightest) > np.median(frame.image) + 40  # contrast well above the noise (sigma 2.5)


def test_synthetic_raw_frames_encode_the_same_picture_as_eight_bit_ones():
    eight = SyntheticScene((64, 80), targets=2, seed=3).frame(2)
    raw_scene = SyntheticScene((64, 80), targets=2, seed=3, bits=14)
    raw = raw_scene.frame(2)
    assert raw.image.dtype == np.uint16 and raw.image.max() < 2 ** 14
    lo, hi = raw_scene.raw_range
    back = (raw.image.astype(np.float64) - lo) * 255.0 / (hi - lo)
    assert np.abs(back - eight.image).max() <= 0.51  # both are roundings of the same float picture
    np.testing.assert_array_equal(raw.centers, eight.centers)


@pytest.mark.parametrize("spec, message", [
    ("synthetic:64x64,speed=3", "keys targets, frames, seed, bits, fps"),
    ("synthetic:64x64,frames=many", "frames='many' is not a valid int"),
    ("synthetic:64x64,targets=40", "do not fit"),
    ("synthetic:64x64,bits=20", "bits=20"),
])
def test_bad_synthetic_specs_say_what_is_accepted(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


# ---- images ------------------------------------------------------------------------------------------------------
def test_an_image_that_cannot_be_read_is_reported_and_skipped(caplog):
    """A file without read permission (root reads any: the check then runs with the effective uid of nobody)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # world-traversable, unlike pytest's tmp_path, for nobody
    try:
        folder.chmod(0o755)
        image = SyntheticScene((48, 64), targets=1).frame(0).image
        for name in ("a.png", "b.png"):
            _write_png(folder / name, image)
            (folder / name).chmod(0o644)
        (folder / "b.png").chmod(0)
        source = open_source(folder)
        as_root = os.geteuid() == 0
        with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
            if as_root:
                os.seteuid(65534)
            try:
                frames = list(source)
            finally:
                if as_root:
                    os.seteuid(0)
        assert [f.name.rsplit("/", 1)[1] for f in frames] == ["a.png"] and source.skipped == 1
        assert re.search(r"cannot read image \S*b\.png: Permission denied", caplog.text)
    finally:
        shutil.rmtree(folder)


def test_folder_in_natural_order_with_corrupt_images_skipped_and_counted(tmp_path, caplog):
    scene = SyntheticScene((48, 64), targets=1)
    for i in (1, 2, 10):
        _write_png(tmp_path / f"frame_{i}.png", scene.frame(i).image)
    ok, encoded = cv2.imencode(".png", scene.frame(3).image)
    (tmp_path / "frame_3.png").write_bytes(encoded.tobytes()[: encoded.size // 2])  # truncated PNG
    (tmp_path / "frame_4.jpg").write_bytes(b"this is not a JPEG")
    (tmp_path / "frame_5.png").write_bytes(b"")  # empty: OpenCV asserts on an empty buffer
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    source = open_source(tmp_path)
    with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
        frames = list(source)
    assert [f.name.rsplit("/", 1)[1] for f in frames] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    assert [f.index for f in frames] == [0, 1, 5]  # list positions: the gaps are the skipped files
    assert np.array_equal(frames[2].image, scene.frame(10).image)
    assert source.skipped == 3 and source.stats()["skipped"] == 3
    reported = " ".join(r.getMessage() for r in caplog.records)
    assert "frame_3.png" in reported and "frame_4.jpg" in reported
    assert "frame_5.png: the file is empty (0 bytes)" in reported


def test_single_image_glob_and_sixteen_bit_images(tmp_path):
    raw = SyntheticScene((40, 48), targets=1, bits=16).frame(0).image
    _write_png(tmp_path / "a.png", raw)
    _write_png(tmp_path / "b.png", raw // 2)
    (single,) = list(open_source(tmp_path / "a.png"))
    assert single.image.dtype == np.uint16 and np.array_equal(single.image, raw)
    assert single.timestamp is None and single.decode_ms >= 0
    assert len(list(open_source(str(tmp_path / "*.png")))) == 2
    with pytest.raises(SourceError, match="matches no files"):
        open_source(str(tmp_path / "*.bmp"))


def test_unknown_missing_and_empty_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match=r"not found.*camera index.*synthetic"):
        open_source(tmp_path / "absent.png")
    (tmp_path / "data.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"unknown file type '\.bin'.*\.png.*\.avi"):
        open_source(tmp_path / "data.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        open_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="unsupported URL scheme 'ftp'"):
        open_source("ftp://example.com/x.avi")


def test_iterable_source_refuses_non_arrays():
    frames = list(IterableSource([np.zeros((8, 8), np.uint8)] * 2, fps=5))
    assert [f.timestamp for f in frames] == [0.0, 0.2]
    with pytest.raises(InputError, match="item 1 is a str"):
        list(IterableSource([np.zeros((8, 8), np.uint8), "frame.png"]))


# ---- video -------------------------------------------------------------------------------------------------------
def write_grey_video(path, frames, fps=25.0):
    """A lossless FFV1 .mkv of grey frames, uint8 or uint16 (gray16le) as they are."""
    h, w = frames[0].shape
    depth = cv2.CV_16U if frames[0].dtype == np.uint16 else cv2.CV_8U
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h),
                             [cv2.VIDEOWRITER_PROP_DEPTH, depth, cv2.VIDEOWRITER_PROP_IS_COLOR, 0])
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def test_a_sixteen_bit_grey_video_keeps_its_raw_values(tmp_path, capfd):
    scene = SyntheticScene((48, 64), targets=2, seed=4, bits=14)
    images = [scene.frame(i).image for i in range(6)]
    assert images[0].dtype == np.uint16 and images[0].max() > 255
    level = cv2.utils.logging.getLogLevel()
    with open_source(write_grey_video(tmp_path / "raw.mkv", images, fps=30.0)) as source:
        frames = list(source)
    assert source.bits == 16 and source.length == 6 and [f.index for f in frames] == list(range(6))
    for frame, original in zip(frames, images):  # lossless: the recorded values, bit for bit
        assert frame.image.dtype == np.uint16 and np.array_equal(frame.image, original)
    # OpenCV's warning that BGR conversion is off is silenced for that open only
    assert "BGR conversion turned OFF" not in capfd.readouterr().err and cv2.utils.logging.getLogLevel() == level


def test_an_eight_bit_grey_video_is_still_read_as_bgr(tmp_path):
    images = [SyntheticScene((48, 64), targets=2, seed=4).frame(i).image for i in range(3)]
    with open_source(write_grey_video(tmp_path / "grey.mkv", images)) as source:
        frames = list(source)
    assert source.bits == 8 and len(frames) == 3
    for frame, original in zip(frames, images):
        assert frame.image.shape == (48, 64, 3) and np.array_equal(frame.image[:, :, 1], original)


@pytest.mark.parametrize("suffix, fourcc", [(".avi", "MJPG"), (".mp4", "mp4v")])
def test_video_file_read_back_in_order_with_timestamps(tmp_path, suffix, fourcc):
    scene = SyntheticScene((96, 128), targets=2, seed=5)
    images = [scene.frame(i).image for i in range(12)]
    path = _write_video(tmp_path / f"clip{suffix}", images, fps=20.0, fourcc=fourcc)
    source = open_source(path)
    assert isinstance(source, VideoFileSource) and source.length == 12 and source.fps == pytest.approx(20.0)
    frames = list(source)
    source.close()
    assert [f.index for f in frames] == list(range(12)) and source.skipped == 0
    assert [f.timestamp for f in frames] == pytest.approx([i / 20.0 for i in range(12)], abs=1e-3)
    for frame, original in zip(frames, images):  # lossy codecs: the same picture, not the same bytes
        assert frame.image.shape == (96, 128, 3)
        assert np.abs(frame.image[:, :, 1].astype(int) - original).mean() < 3.0


def test_truncated_video_reports_the_missing_frames(tmp_path, caplog):
    images = [SyntheticScene((96, 128), targets=2).frame(i).image for i in range(30)]
    path = _write_video(tmp_path / "clip.avi", images)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    source = open_source(path)
    with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
        count = len(list(source))
    assert 0 < count < 30 and source.skipped == 30 - count
    assert "truncated" in caplog.text


def test_corrupt_frames_in_a_video_are_skipped_and_the_rest_is_read(tmp_path, caplog):
    images = [SyntheticScene((64, 80), targets=1).frame(i).image for i in range(20)]
    path = _write_video(tmp_path / "clip.avi", images, fps=10.0)
    _corrupt_avi_frames(path, [8, 12, 13])
    source = open_source(path)
    with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
        frames = list(source)
    source.close()
    expected = [i for i in range(20) if i not in (8, 12, 13)]
    assert [f.index for f in frames] == expected  # the frame numbers in the file, gaps where the bad ones were
    assert [f.timestamp for f in frames] == pytest.approx([i / 10.0 for i in expected], abs=1e-3)
    for frame in frames:
        assert np.abs(frame.image[:, :, 1].astype(int) - images[frame.index]).mean() < 3.0
    assert source.skipped == 3
    assert "frame 8 cannot be decoded" in caplog.text and "frames 12..13 cannot be decoded" in caplog.text
    assert "truncated" not in caplog.text  # it was read to its real end


def test_a_long_corrupt_stretch_in_a_video_with_a_frame_count_loses_no_frame_after_it(tmp_path, caplog):
    """30 corrupt frames in a row, more than the 25 failed reads that end a video without a frame count: with the
    count in its header, the frames after the stretch are read, and the file is not taken for truncated."""
    images = [SyntheticScene((64, 80), targets=1).frame(i).image for i in range(60)]
    path = _write_video(tmp_path / "clip.avi", images, fps=10.0)
    _corrupt_avi_frames(path, list(range(10, 40)))
    source = open_source(path)
    assert source.length == 60 and 30 > VideoFileSource.MAX_FAILED_READS
    with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
        frames = list(source)
    source.close()
    assert [f.index for f in frames] == list(range(10)) + list(range(40, 60))
    assert source.skipped == 30 and "frames 10..39 cannot be decoded" in caplog.text
    assert "truncated" not in caplog.text


def test_video_iterated_again_goes_on_with_the_next_frame(tmp_path, caplog):
    images = [SyntheticScene((64, 80), targets=1).frame(i).image for i in range(12)]
    source = open_source(_write_video(tmp_path / "clip.avi", images, fps=10.0))
    with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
        first = []
        for frame in source:
            first.append(frame)
            if len(first) == 5:
                break  # like a stream stopped by max_frames
        rest = list(source)
        again = list(source)  # at the end: nothing more, and the end is not reported twice
    source.close()
    assert [f.index for f in first + rest] == list(range(12)) and again == []
    assert [f.timestamp for f in rest] == pytest.approx([i / 10.0 for i in range(5, 12)], abs=1e-3)
    assert source.skipped == 0 and "truncated" not in caplog.text


def test_unreadable_video_is_a_source_error(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 2048)
    with pytest.raises(SourceError, match="cannot open video .*broken.mp4"):
        open_source(tmp_path / "broken.mp4")


# ---- cameras -----------------------------------------------------------------------------------------------------
def test_missing_camera_is_a_clear_source_error():
    with pytest.raises(SourceError, match=r"camera '9' could not be opened \(.*/dev/video.*--source synthetic"):
        open_source(9)
    with pytest.raises(SourceError, match=r"camera '/dev/video9' could not be opened"):
        open_source("/dev/video9")


# ---- live: an MJPEG server on 127.0.0.1 --------------------------------------------------------------------------
class MjpegServer:
    """multipart/x-mixed-replace JPEG stream on 127.0.0.1, like an IP camera. Each connection gets frames
    numbered from a global counter (the grey level encodes it: 5 * number), `per_connection` of them (None =
    endless) at `fps`, then the connection is dropped, or with `hang` kept open without sending anything more
    until stop(). `then` changes the connections after the first: "broken" ones send JPEGs whose data is zeroed
    (FFmpeg opens them, but no frame decodes), "silent" ones get no answer at all until stop() (an opening waits
    out its timeout). `undecodable`: numbers of the frames sent with their data zeroed on any connection. stop()
    closes the listening socket: reconnections are refused."""

    def __init__(self, per_connection=None, fps=100.0, hang=False, port=0, then=None, undecodable=()):
        self.per_connection, self.period = per_connection, 1.0 / fps
        self.undecodable = set(undecodable)
        self.connections = 0
        self.sent = 0
        self.stopping = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.connections += 1
                later = then if server.connections > 1 else None
                if later == "silent":
                    server.stopping.wait()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                count = 0
                while not server.stopping.is_set() and (server.per_connection is None
                                                        or count < server.per_connection):
                    image = np.full((48, 64), (server.sent * 5) % 250, np.uint8)
                    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                    if later == "broken" or server.sent in server.undecodable:
                        jpeg = jpeg[:20] + bytes(len(jpeg) - 20)
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpeg) + jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    server.sent += 1
                    count += 1
                    time.sleep(server.period)
                if hang:
                    server.stopping.wait()

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True  # a port given back by _free_port() may still be in TIME_WAIT

        self._httpd = Server(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def fast_reconnect():
    return Reconnect(retries=3, backoff_s=0.05, backoff_max_s=0.2, open_timeout_s=2.0, read_timeout_s=2.0)


def test_stream_delivers_the_latest_frame_and_counts_the_dropped_ones(fast_reconnect):
    server = MjpegServer(per_connection=None, fps=100.0)
    source = open_source(server.url, fast_reconnect)
    try:
        assert isinstance(source, LiveSource) and source.live and source.kind == "stream"
        taken = []
        for frame in source:
            taken.append(frame)
            time.sleep(0.2)  # a consumer far slower than the stream
            if len(taken) == 4:
                break
    finally:
        source.close()
        server.stop()
    indices = [f.index for f in taken]
    assert indices == sorted(set(indices))
    # every frame captured before the last one taken and not taken was replaced, i.e. counted as dropped
    assert source.dropped >= indices[-1] + 1 - len(taken) > 0
    assert all(f.timestamp is not None and f.image.shape == (48, 64, 3) for f in taken)


def test_undecodable_frames_of_a_stream_are_skipped_without_reconnecting(fast_reconnect, caplog):
    """A corrupt JPEG in an MJPEG stream fails one read, and the read after it returns the next frame: the frame is
    reported and counted as skipped, the connection kept, and the frames after it keep their place in the
    stream's numbering (frame n has grey level 5 n)."""
    server = MjpegServer(per_connection=None, fps=100.0, undecodable={5, 6, 12})
    source = open_source(server.url, fast_reconnect)
    frames = []
    try:
        with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
            for frame in source:
                frames.append(frame)
                if frame.index >= 20:
                    break
    finally:
        source.close()
        server.stop()
    assert source.skipped == 3 and source.reconnects == 0 and server.connections == 1
    assert "2 frames after frame 4 cannot be decoded (corrupt); skipped" in caplog.text
    assert "1 frame after frame 11 cannot be decoded (corrupt); skipped" in caplog.text
    assert "reconnecting" not in caplog.text
    assert not {5, 6, 12} & {f.index for f in frames}
    assert all(abs(f.image.mean() - 5 * f.index) < 1.5 for f in frames)


def _read_until_lost(source, server, connections: int) -> tuple:
    """(frames, SourceError) of a stream whose server stops for good once it has had `connections` connections."""
    frames = []
    try:
        for frame in source:
            frames.append(frame)
            if server.connections >= connections and not server.stopping.is_set():
                server.stop()  # the camera goes away for good
    except SourceError as exc:
        return frames, exc
    finally:
        source.close()
    pytest.fail("a stream that never comes back must end with a SourceError")


def test_stream_that_drops_is_reopened_with_back_off_then_given_up(fast_reconnect, caplog):
    server = MjpegServer(per_connection=5, fps=100.0)
    source = open_source(server.url, fast_reconnect)
    with caplog.at_level(logging.INFO, logger="edge_irst.sources"):
        frames, error = _read_until_lost(source, server, connections=3)
    assert source.reconnects >= 2 and len(source.gaps_s) == source.reconnects + 1
    assert "reconnected on attempt" in caplog.text
    attempts = [r for r in caplog.records if r.levelno == logging.INFO and "reconnection attempt" in r.getMessage()]
    assert len(attempts) == fast_reconnect.retries  # the final outage used every retry, then gave up
    assert "3 reconnection attempts" in str(error) and "--reconnect-retries" in str(error)
    assert len(frames) > 5  # more than one connection delivers: frames kept coming across the reconnections


def test_outages_name_the_last_frame_delivered_and_are_timed_from_it(caplog):
    reconnect = Reconnect(retries=2, backoff_s=0.05, backoff_max_s=0.2, open_timeout_s=2.0, read_timeout_s=1.0)
    server = MjpegServer(per_connection=5, fps=100.0, hang=True)  # 5 frames, then silence on an open connection
    source = open_source(server.url, reconnect)
    with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
        frames, error = _read_until_lost(source, server, connections=2)  # reconnected once, then gone for good
    # The newest frame is always taken before an outage is noticed, so the last frame the first connection
    # delivered (grey levels 0..20 are its 5 frames) and the last of all are among those seen here.
    last_of_first = max(f.index for f in frames if f.image.mean() < 22.5)
    outages = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
    assert len(outages) == 2 and f"no frame after frame {last_of_first};" in outages[0]
    assert f"no frame after frame {frames[-1].index};" in outages[1]
    assert f"lost after frame {frames[-1].index};" in str(error)
    # the first outage began with the last frame: the silence lasted the whole read timeout before it was noticed
    assert source.reconnects == 1 and source.gaps_s[0] >= reconnect.read_timeout_s


def test_reopenings_that_bring_no_frame_use_up_the_retries(caplog):
    """A stream that connects again but whose frames cannot be decoded is not back: each such reopening is one
    failed attempt of the same outage, which ends with a SourceError, instead of a 'reconnection' per opening and
    a new round of retries after each, for ever."""
    reconnect = Reconnect(retries=3, backoff_s=0.05, backoff_max_s=0.1, open_timeout_s=2.0, read_timeout_s=1.0)
    server = MjpegServer(per_connection=5, fps=100.0, then="broken")
    source = open_source(server.url, reconnect)
    watchdog = threading.Timer(4.0, source.stop)  # ends the iteration where the retries never run out
    watchdog.start()
    frames = []
    try:
        with caplog.at_level(logging.INFO, logger="edge_irst.sources"), pytest.raises(SourceError) as error:
            for frame in source:
                frames.append(frame)
    finally:
        watchdog.cancel()
        source.close()
        server.stop()
    assert "3 reconnection attempts" in str(error.value) and server.connections == 4
    assert frames and f"lost after frame {frames[-1].index};" in str(error.value)
    assert source.reconnects == 0 and len(source.gaps_s) == 1 and "reconnected" not in caplog.text
    assert caplog.text.count("opened it, but no frame came") == 3


def test_a_stop_asked_for_as_the_retries_run_out_ends_the_iteration_cleanly(caplog):
    """The stream is lost for good and the grabber has given up, but before the consumer sees the end it asks the
    source to stop (a `quit`): the iteration ends without the SourceError, which is in the log."""
    server = MjpegServer(per_connection=10, fps=100.0)
    source = open_source(server.url, Reconnect(retries=0, open_timeout_s=2.0, read_timeout_s=1.0))
    frames = []
    try:
        with caplog.at_level(logging.ERROR, logger="edge_irst.sources"):
            for frame in source:
                frames.append(frame)
                if len(frames) == 1:
                    server.stop()
                    source._thread.join(timeout=5.0)  # the grabber has given up: the stream's end is pending
                    assert not source._thread.is_alive()
                    source.stop()
    finally:
        source.close()
    assert len(frames) == 1 and "0 reconnection attempts" in caplog.text


def test_close_waits_for_a_reconnection_blocked_in_its_opening():
    """An opening blocks up to open_timeout_s, longer here than a read: close() waits for it, so that no grabber
    thread is left holding the camera / stream after it returns."""
    reconnect = Reconnect(retries=3, backoff_s=0.05, backoff_max_s=0.1, open_timeout_s=2.0, read_timeout_s=0.2)
    server = MjpegServer(per_connection=5, fps=100.0, then="silent")
    source = open_source(server.url, reconnect)
    try:
        assert next(iter(source)).index >= 0
        assert until(lambda: server.connections >= 2)  # the reopening now waits for an answer that never comes
        time.sleep(0.1)
        source.close()
        assert not source._thread.is_alive()
    finally:
        server.stop()
        source.close()


def _gone_after_first_connection(server: "MjpegServer") -> None:
    """Stops the server for good once its first connection has sent its frames (the camera goes away)."""
    while server.sent < server.per_connection:
        time.sleep(0.01)
    server.stop()


def test_stop_ends_a_stream_waiting_out_its_reconnection_back_off():
    # A 30 s back-off: without stop() the iteration would sit in it, then in 4 more, before giving up.
    reconnect = Reconnect(retries=5, backoff_s=30.0, backoff_max_s=30.0, open_timeout_s=2.0, read_timeout_s=2.0)
    server = MjpegServer(per_connection=5, fps=100.0)
    source = open_source(server.url, reconnect)
    threading.Thread(target=_gone_after_first_connection, args=(server,), daemon=True).start()
    frames, stopped_at = [], None
    try:
        for frame in source:  # ends without a SourceError: stopping is not a failure
            frames.append(frame)
            if stopped_at is None:
                stopped_at = time.perf_counter() + 1.0
                threading.Timer(1.0, source.stop).start()  # from another thread, as a control quit does
        ended_at = time.perf_counter()
    finally:
        source.close()
    assert frames and ended_at - stopped_at < 5.0  # not the 30 s back-off
    assert source.reconnects == 0


def test_control_quit_ends_a_run_during_a_reconnection(tmp_path, capsys):
    """`quit` in the control file while the stream is down: the run ends at once with its outputs and summary,
    not after the reconnection's back-off (30 s here) or its next frame."""
    import json

    from edge_irst.cli import main

    server = MjpegServer(per_connection=5, fps=100.0)
    control = tmp_path / "control.txt"
    control.write_text("")
    jsonl = tmp_path / "detections.jsonl"
    quit_at = []

    def drop_then_quit():
        _gone_after_first_connection(server)
        time.sleep(1.0)  # the run is now in its reconnection back-off
        quit_at.append(time.perf_counter())
        control.write_text("quit\n")

    threading.Thread(target=drop_then_quit, daemon=True).start()
    code = main(["run", "--source", server.url, "--control", str(control), "--reconnect-backoff", "30",
                 "--save-json", str(jsonl), "--json"])
    ended_at = time.perf_counter()
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["outcome"] == "stopped by a control quit"
    assert quit_at and ended_at - quit_at[0] < 5.0
    assert 1 <= summary["frames"] <= 5 and len(jsonl.read_text().splitlines()) == summary["frames"]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_stream_that_comes_up_late_is_opened_with_at_start(caplog):
    """A stream server that starts after the run (a camera booting): retried on the back-off schedule with
    at_start, refused at once without it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/stream.mjpg"
    with pytest.raises(SourceError, match="cannot open stream"):
        open_source(url, Reconnect(retries=5, backoff_s=0.2))
    servers = []
    threading.Timer(0.7, lambda: servers.append(MjpegServer(per_connection=None, fps=100.0, port=port))).start()
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="edge_irst.sources"):
        source = open_source(url, Reconnect(retries=5, backoff_s=0.2, backoff_max_s=0.4, at_start=True))
    try:
        opened_after = time.perf_counter() - started
        frame = next(iter(source))
    finally:
        source.close()
        for server in servers:
            server.stop()
    assert frame.image.shape == (48, 64, 3) and opened_after >= 0.6
    assert "not available yet; retry 1 of 5" in caplog.text and re.search(r"opened on retry [2-5]", caplog.text)
    assert source.reconnects == 0  # an opening, not a reconnection


def test_at_start_gives_up_after_its_retries_naming_them():
    url = f"http://127.0.0.1:{_free_port()}/stream.mjpg"
    started = time.perf_counter()
    with pytest.raises(SourceError, match=r"cannot open stream .* \(3 attempts\)$"):
        open_source(url, Reconnect(retries=2, backoff_s=0.1, backoff_max_s=0.2, at_start=True))
    assert time.perf_counter() - started >= 0.3  # both waits were taken
    with pytest.raises(InputError, match="at_start"):
        Reconnect(at_start="yes")


def test_unreachable_stream_fails_at_open():
    # nothing listens on port 9: refused at once, which the message must not word as a timeout alone
    with pytest.raises(SourceError, match=r"cannot open stream http://127\.0\.0\.1:9/none\.mjpg: FFmpeg could not "
                                          r"connect \(refused, unreachable or .*\), or read no frame within 1 s"):
        open_source("http://127.0.0.1:9/none.mjpg", Reconnect(open_timeout_s=1.0))


def test_reconnect_back_off_schedule_and_validation():
    assert list(Reconnect(retries=5, backoff_s=0.5, backoff_max_s=3.0).delays()) == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert list(Reconnect(retries=0).delays()) == []
    # a first wait above the cap is the user's: kept, never followed by shorter ones
    assert list(Reconnect(retries=4, backoff_s=20).delays()) == [20, 20, 20, 20]
    with pytest.raises(InputError, match="retries"):
        Reconnect(retries=-1)

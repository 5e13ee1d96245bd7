"""Control lines (edge_irst.control): parsing, refusal of bad lines, application to a real Detector's settings."""
from __future__ import annotations

import io
import logging
import os
import threading
import time

import pytest

from edge_irst.control import ControlChannel, parse_command
from edge_irst.errors import InputError
from edge_irst.postprocess import LiveSettings, PostprocessSettings
from conftest import until


@pytest.mark.parametrize("line, changes", [
    ("threshold=0.5", {"threshold": 0.5}),
    ("  size_min=5 size-max=100  # the paper's area bounds", {"size_min": 5.0, "size_max": 100.0}),
    ("ratio_min=none inclusive=yes", {"ratio_min": None, "inclusive": True}),
    ("filter=authors ratio_max=3", {"target_filter": "authors", "ratio_max": 3.0}),
    ("SHOW", {"show": True}),
    ("quit", {"quit": True}),
    ("", None),
    ("# only a comment", None),
])
def test_parse_command(line, changes):
    assert parse_command(line) == changes


@pytest.mark.parametrize("line, message", [
    ("threshold", r"expected key=value"),
    ("threshold=", r"expected key=value"),
    ("thresh=1", r"unknown setting 'thresh'"),
    ("size_min=five", r"size_min='five': expected a number or 'none'"),
    ("inclusive=maybe", r"expected true or false"),
    ("threshold=none", r"threshold='none': expected a number"),
    ("threshold=1 threshold=2", r"'threshold=2': threshold is given twice on one line"),
    ("size_min=1 size-min=2", r"size_min is given twice"),
    ("filter=none filter=authors", r"filter is given twice"),
])
def test_parse_command_names_the_bad_word(line, message):
    with pytest.raises(InputError, match=message):
        parse_command(line)


class _Holder:
    """The part of a Detector a ControlChannel uses: its LiveSettings and update()."""

    def __init__(self):
        self.settings = LiveSettings(PostprocessSettings())

    def update(self, **changes):
        return self.settings.update(**changes)


def test_channel_applies_good_lines_refuses_bad_ones_and_stops_at_quit(caplog):
    holder = _Holder()
    lines = io.StringIO("threshold=1.5\nsize_min=10 size_max=5\nfilter=authors inclusive=true\nquit\n"
                        "threshold=9\n")
    channel = ControlChannel(holder, lines)
    with caplog.at_level(logging.WARNING, logger="edge_irst.control"):
        channel.start()._thread.join(10)
    settings = holder.settings.snapshot()
    assert channel.quit_requested.is_set() and channel.applied == 2
    assert settings.threshold == 1.5  # the line after quit is never read
    assert settings.target_filter.size_min == 5 and settings.target_filter.inclusive  # authors' preset, inclusive
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "size_min = 10.0 > size_max = 5.0" in refused[0]


def test_channel_reads_a_regular_file_once_and_quits_on_eof_when_asked(tmp_path):
    path = tmp_path / "commands.txt"
    path.write_text("threshold=2\n")
    holder = _Holder()
    channel = ControlChannel(holder, str(path), quit_on_eof=True).start()
    channel._thread.join(10)
    assert holder.settings.snapshot().threshold == 2.0 and channel.quit_requested.is_set()


def _watching(tmp_path):
    """(path, holder, channel): a channel watching a file whose first line, threshold=1, has been applied."""
    path = tmp_path / "commands.txt"
    path.write_text("threshold=1\n")
    holder = _Holder()
    channel = ControlChannel(holder, str(path)).start()
    assert until(lambda: holder.settings.snapshot().threshold == 1.0)
    return path, holder, channel


def test_channel_watches_a_regular_file_for_appended_and_rewritten_lines(tmp_path):
    path, holder, channel = _watching(tmp_path)
    try:
        settings = holder.settings.snapshot
        with open(path, "a") as fh:  # echo ... >> file
            fh.write("threshold=2\n")
        assert until(lambda: settings().threshold == 2.0)
        path.write_text("size_min=4\n")  # echo ... > file: rewritten, shorter than what was read
        assert until(lambda: settings().target_filter.size_min == 4)
        path.write_text("size_min=6\nthreshold=5")  # the last line has no newline: applied once it stays so
        assert until(lambda: settings().threshold == 5.0 and settings().target_filter.size_min == 6)
        assert channel.applied == 5 and channel._thread.is_alive()
        with open(path, "a") as fh:
            fh.write("\nquit\n")
        assert until(lambda: channel.quit_requested.is_set())
    finally:
        channel.quit_requested.set()
        channel._thread.join(10)
    assert not channel._thread.is_alive()


def test_close_ends_a_watched_file_and_no_line_applies_after_it(tmp_path):
    path, holder, channel = _watching(tmp_path)
    try:
        channel.close()
        channel._thread.join(10)
        assert not channel._thread.is_alive() and not channel.quit_requested.is_set()  # closed, not quit
        with open(path, "a") as fh:
            fh.write("threshold=2\n")
        time.sleep(3 * ControlChannel.POLL_S)
        assert holder.settings.snapshot().threshold == 1.0 and channel.applied == 1
    finally:
        channel.quit_requested.set()


def test_channel_logs_a_missing_path_and_changes_nothing(tmp_path, caplog):
    holder = _Holder()
    channel = ControlChannel(holder, str(tmp_path / "absent"))
    with caplog.at_level(logging.ERROR, logger="edge_irst.control"):
        channel.start()._thread.join(10)
    assert "absent" in caplog.text and holder.settings.snapshot() == PostprocessSettings()


def _refused(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]


def test_a_line_that_is_not_utf8_is_refused_alone_in_a_file(tmp_path, caplog):
    """The good lines around it, in the same read, still apply, and the end of the file still quits."""
    path = tmp_path / "commands.txt"
    path.write_bytes(b"threshold=1\nthreshold=\xff\nsize_min=3\n")
    holder = _Holder()
    with caplog.at_level(logging.ERROR, logger="edge_irst.control"):
        channel = ControlChannel(holder, str(path), quit_on_eof=True).start()
        channel._thread.join(10)
    settings = holder.settings.snapshot()
    assert channel.applied == 2 and settings.threshold == 1.0 and settings.target_filter.size_min == 3
    assert channel.quit_requested.is_set() and not channel._thread.is_alive()
    assert len(_refused(caplog)) == 1 and "not UTF-8" in _refused(caplog)[0]


def test_a_line_that_is_not_utf8_leaves_a_fifo_channel_reading(tmp_path, caplog):
    """The writer stays open throughout, so the channel is never between two opens of the FIFO: no race."""
    fifo = tmp_path / "ctl"
    os.mkfifo(fifo)
    holder = _Holder()
    applied = threading.Event()
    holder.update = lambda **changes: (holder.settings.update(**changes), applied.set())[0]
    channel = ControlChannel(holder, str(fifo)).start()
    with caplog.at_level(logging.ERROR, logger="edge_irst.control"):
        with open(fifo, "wb", buffering=0) as writer:  # blocks until the channel has opened its end
            writer.write(b"threshold=\xfe\nthreshold=3\n")  # one write: both lines arrive in one read
            assert applied.wait(10), "the line after the bad one was not applied"
            assert channel._thread.is_alive()
            channel.quit_requested.set()  # the end of this writer then ends the channel instead of reopening
    channel._thread.join(10)
    assert holder.settings.snapshot().threshold == 3.0 and not channel._thread.is_alive()
    assert len(_refused(caplog)) == 1 and "not UTF-8" in _refused(caplog)[0]

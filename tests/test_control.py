"""Control lines (edge_irst.control): parsing, refusal of bad lines, application to a real Detector's settings."""
from __future__ import annotations

import io
import logging

import pytest

from edge_irst.control import ControlChannel, parse_command
from edge_irst.errors import InputError
from edge_irst.postprocess import LiveSettings, PostprocessSettings


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


def test_channel_logs_a_missing_path_and_changes_nothing(tmp_path, caplog):
    holder = _Holder()
    channel = ControlChannel(holder, str(tmp_path / "absent"))
    with caplog.at_level(logging.ERROR, logger="edge_irst.control"):
        channel.start()._thread.join(10)
    assert "absent" in caplog.text and holder.settings.snapshot() == PostprocessSettings()

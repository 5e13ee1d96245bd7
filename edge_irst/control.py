"""Live control of a running stream from text lines: `edge-irst run --control stdin` (or a FIFO / file path).

One command per line, `key=value` pairs separated by spaces, applied together to the Detector's live settings
(LiveSettings.update: atomic, the next frame uses them):

    threshold=0.5                      logit threshold
    size_min=5 size_max=100            target filter bounds (pixels); `none` clears a bound
    ratio_min=0.2 ratio_max=5          box w/h bounds
    inclusive=true                     <= bounds instead of strict <
    filter=authors                     a preset (none | authors), applied before the single bounds on the line
    show                               log the settings in effect
    quit                               end the run cleanly (outputs closed, summary printed, exit 0)

`#` starts a comment; blank lines are ignored. A bad line (an unknown key, a key given twice, a value that does not
parse, bytes that are not UTF-8) is logged with the reason and changes nothing; the run goes on. This is what a
robot stack can drive through a pipe (`mkfifo ctl; edge-irst run --control ctl &; echo threshold=1 > ctl`)
without a GUI. A regular file works too: it is watched, so lines appended to it apply (`echo threshold=1 >> ctl`),
and a file rewritten or replaced (`echo threshold=1 > ctl`, an editor's save) applies again from its first line.
"""
from __future__ import annotations

import io
import logging
import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Optional, TextIO, Union

from .errors import EdgeIrstError, InputError
from .postprocess import FILTER_FIELDS

log = logging.getLogger("edge_irst.control")

_BOUNDS = tuple(name for name in FILTER_FIELDS if name != "inclusive")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_CLEARED = ("none", "off", "-")


def _number(key: str, text: str, expected: str = "a number") -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{key}={text!r}: expected {expected}") from None


def _bound(key: str, text: str) -> Optional[float]:
    return None if text.lower() in _CLEARED else _number(key, text, "a number or 'none'")


def _flag(key: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise InputError(f"{key}={text!r}: expected true or false")


_PARSERS: dict[str, Callable[[str, str], object]] = {
    "threshold": _number, "inclusive": _flag, "filter": lambda _key, text: text,
    **{name: _bound for name in _BOUNDS},
}


def parse_command(line: str) -> Optional[dict]:
    """A control line -> the LiveSettings.update changes (None for a blank/comment line).

    The words `show` and `quit` come back as {"show": True} / {"quit": True}. Raises InputError naming the
    offending word on anything else it cannot read.
    """
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    if len(words) == 1 and words[0].lower() in ("show", "quit"):
        return {words[0].lower(): True}
    changes: dict = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not value:
            raise InputError(f"{word!r}: expected key=value (keys: {', '.join(_PARSERS)}), show or quit")
        if key not in _PARSERS:
            raise InputError(f"{word!r}: unknown setting {key!r}; expected one of {', '.join(_PARSERS)}")
        setting = "target_filter" if key == "filter" else key
        if setting in changes:  # which one was meant is anyone's guess: refuse rather than let the last one win
            raise InputError(f"{word!r}: {key} is given twice on one line; give each setting once")
        changes[setting] = _PARSERS[key](key, value)
    return changes


class ControlChannel:
    """Reads control lines from a text stream or path in a daemon thread and applies them to `detector`.

    source: "stdin", an open text or binary stream, or a path (a FIFO is reopened after each writer closes it, so
    `echo ... > fifo` can be repeated; a regular file is watched, see _follow, or read once when quit_on_eof).
    `quit_requested` is set by a `quit` line (and by the end of the source, when quit_on_eof), which then calls
    `on_quit` (e.g. the video source's stop(), so that a run waiting out a stream's reconnection ends at once
    instead of at its next frame). `applied` counts the lines that changed the settings. close() ends the reading
    without a quit (a watched file at its next poll, a pipe or stdin at its next line): nothing applies after it.
    stdin and paths are read as bytes and decoded line by line, so a line that is not UTF-8 is refused alone: the
    lines around it still apply and the channel keeps reading.
    """

    POLL_S = 0.2  # how often a regular file is looked at for new lines

    def __init__(self, detector, source, quit_on_eof: bool = False, on_quit: Optional[Callable[[], None]] = None):
        self.detector, self.quit_on_eof, self._on_quit = detector, quit_on_eof, on_quit
        self.quit_requested = threading.Event()
        self._closed = threading.Event()
        self.applied = 0
        self._source = source
        self._thread = threading.Thread(target=self._run, name="edge-irst-control", daemon=True)

    def start(self) -> "ControlChannel":
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()

    def _reading(self) -> bool:
        return not (self.quit_requested.is_set() or self._closed.is_set())

    def handle(self, line: str) -> None:
        """Applies one line (logged); a bad line is logged and changes nothing."""
        try:
            changes = parse_command(line)
            if changes is None:
                return
            if changes.pop("quit", False):
                log.warning("control: quit requested")
                self._quit()
                return
            if changes.pop("show", False):
                log.warning("control: %s", _describe(self.detector.settings.snapshot()))
                return
            settings = self.detector.update(**changes)
        except EdgeIrstError as exc:  # InputError / UnknownNameError: the line is refused, the run goes on
            log.error("control: line %r refused: %s", line.strip(), exc)
            return
        self.applied += 1
        log.warning("control: %s (from the next frame)", _describe(settings))

    def _lines(self, stream: Union[TextIO, BinaryIO]) -> None:
        lines = iter(stream)
        while self._reading():
            try:
                line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:  # a caller's text stream decoding on its own: that chunk is gone
                log.error("control: input refused: not UTF-8 text (%s)", exc)
                continue
            if isinstance(line, bytes):
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    log.error("control: line %r refused: not UTF-8 text (%s)", line.strip(), exc)
                    continue
            if not self._reading():  # closed while this line was awaited
                return
            self.handle(line)

    def _run(self) -> None:
        try:
            if self._source == "stdin":
                import sys

                self._lines(getattr(sys.stdin, "buffer", sys.stdin))  # bytes: decoded line by line
            elif hasattr(self._source, "readline"):
                self._lines(self._source)
            else:
                self._read_path(Path(self._source))
        except OSError as exc:
            log.error("control: %s: %s", self._source, exc)
            return
        if self.quit_on_eof and not self._closed.is_set():
            self._quit()

    def _quit(self) -> None:
        self.quit_requested.set()
        if self._on_quit is not None:
            self._on_quit()

    def _read_path(self, path: Path) -> None:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode) and not self.quit_on_eof:
            return self._follow(path)
        is_fifo = stat.S_ISFIFO(mode)
        while self._reading():
            with open(path, "rb") as stream:  # a FIFO blocks here until a writer opens it
                self._lines(stream)
            if not is_fifo:
                return

    def _follow(self, path: Path) -> None:
        """A regular file: its lines, then those appended to it; a file that no longer starts with what was read
        (rewritten or replaced) is read again from its start. A last line without its newline may be half written:
        it applies once the file has stayed the same for a poll. A file missing for a moment (an editor's save
        replaces it) is waited for."""
        taken, previous = b"", None  # the bytes whose lines were applied; the file at the last poll
        while self._reading():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = previous if previous is not None else b""
            if not data.startswith(taken):
                taken = b""
            end = len(data) if data == previous else data.rfind(b"\n") + 1
            if end > len(taken):
                self._lines(io.BytesIO(data[len(taken):end]))
                taken = data[:end]
            previous = data
            self._closed.wait(self.POLL_S)


def _describe(settings) -> str:
    return f"threshold {settings.threshold:g}, filter {settings.target_filter.describe()}"

"""A minimal progress bar on stderr, drawn only when stderr is a TTY (logs stay clean in CI and pipes).

Hand-written instead of depending on tqdm: the runtime must stay light on a 2 GB board, and this is 40 lines.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, total: Optional[int], desc: str = "", stream=None, enabled: Optional[bool] = None,
                 min_interval: float = 0.2):
        self.total, self.desc = total, desc
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.count, self.postfix = 0, ""
        self.start = self._last = time.perf_counter()
        self.min_interval = min_interval

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.count += n
        if postfix:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.min_interval or self.count == self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        if self.total:
            frac = min(self.count / self.total, 1.0)
            bar = "#" * int(frac * 24)
            line = f"{self.desc} [{bar:<24}] {self.count}/{self.total} {rate:.1f}/s"
        else:
            line = f"{self.desc} {self.count} {rate:.1f}/s"
        self.stream.write(f"\r{line} {self.postfix}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(items: Iterable[T], total: Optional[int] = None, desc: str = "") -> Iterator[T]:
    """Iterate `items` with a progress bar on stderr (a TTY only)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc) as bar:
        for item in items:
            yield item
            bar.update()

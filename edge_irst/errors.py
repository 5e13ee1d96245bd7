"""One error family. Each subclass also derives from the builtin a caller would naturally catch."""
from __future__ import annotations

import difflib


class EdgeIrstError(Exception):
    """Base of every error edge-irst raises on purpose."""


class UnknownNameError(EdgeIrstError, KeyError):
    """An unknown model, backend or format name; the message lists close matches and every valid name."""

    def __init__(self, kind: str, name: str, valid):
        valid = sorted(valid)
        close = difflib.get_close_matches(str(name), valid, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        self.message = f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid) or '(none)'}"
        super().__init__(self.message)

    def __str__(self):  # KeyError would otherwise repr() the message
        return self.message


class ModelFileError(EdgeIrstError, ValueError):
    """A model/artifact file that is missing, truncated, corrupt, or does not match what was asked for."""


class UnsafePickleError(ModelFileError):
    """A pickle that references something outside the allow-list; nothing from it was executed."""


class MissingDependencyError(EdgeIrstError, ImportError):
    """A runtime or converter that is not installed; the message names the pip extra to install, or, for a core
    dependency (extra None), says to reinstall edge-irst."""

    def __init__(self, what: str, extra: str | None, detail: str = ""):
        fix = f"pip install 'edge-irst[{extra}]'" if extra else "reinstall edge-irst (pip install edge-irst)"
        super().__init__(f"{what} is not installed: {fix}" + (f" ({detail})" if detail else ""))


class VerificationError(EdgeIrstError, RuntimeError):
    """An exported artifact whose outputs disagree with the PyTorch reference beyond tolerance."""


class InputError(EdgeIrstError, ValueError):
    """A frame, tensor or option the pipeline cannot take (wrong shape, dtype, NaN...)."""


class DeviceUnavailableError(EdgeIrstError, RuntimeError):
    """A requested accelerator/delegate that is not present; use fallback='cpu' to run on the CPU instead."""


class SourceError(EdgeIrstError, IOError):
    """A frame source that cannot be opened or read."""


class SinkError(EdgeIrstError, IOError):
    """An output (result file, video writer, image folder, window) that cannot be opened or written."""

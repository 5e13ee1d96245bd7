"""edge-irst: an edge inference runtime for infrared small-target detection.

The runtime (this package) needs numpy, OpenCV and one inference runtime; it never imports torch at import time.
The PyTorch side lives in `edge_irst.models` and the exporter in `edge_irst.export` (both need the [export] extra).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access so `import edge_irst` stays light.
_LAZY = {
    "ModelContract": "edge_irst.contract",
    "AUTHORS_CONTRACT": "edge_irst.contract",
    "EdgeIrstError": "edge_irst.errors",
    "create_model": "edge_irst.models",
    "load_backend": "edge_irst.backends",
    "Detector": "edge_irst.pipeline",
    "Detections": "edge_irst.detections",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_irst' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["__version__", *_LAZY]

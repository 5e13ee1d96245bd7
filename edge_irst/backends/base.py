"""The backend protocol: the one small surface every runtime module implements.

A backend loads ONE artifact, takes a preprocessed float32 NCHW batch and returns float32 NCHW logits, whatever
the runtime wants inside (NHWC, quantised int8 I/O, blob names). It never thresholds, labels or rescales
coordinates: that is the pipeline's job. One instance is used from one thread at a time (runtimes differ in what
they allow; the pipeline gives each worker its own instance).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from edge_irst.contract import ModelContract


def physical_cores() -> int:
    """Physical cores (not hyper-threads) the process may run on; falls back to the logical count."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_id") as fh:
                core = fh.read().strip()
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id") as fh:
                package = fh.read().strip()
            cores.add((package, core))
        except OSError:
            cores.add(("cpu", cpu))
    return max(1, len(cores))


@dataclass(frozen=True)
class TensorSpec:
    """One input/output as the artifact declares it. shape uses None for a dynamic dimension."""

    name: str
    shape: tuple
    dtype: str
    layout: str = "NCHW"


@dataclass(frozen=True)
class BackendOptions:
    """What the caller asks for. What the runtime actually applied is `Backend.options_in_effect()`.

    threads: None = physical cores. device: "cpu" or an accelerator name the backend understands ("cuda",
    "vulkan", "opencl", "nnapi", ...). delegate: a TFLite external-delegate library path (or a named one).
    fallback: "cpu" turns a missing accelerator into a warning + CPU run instead of an error.
    precision: "auto" (runtime default), "fp32", "fp16", "bf16" where the runtime decides at run time.
    spin: onnxruntime intra-op spinning (None = runtime default). big_cores: pin to big cores where offered.
    xnnpack: TFLite's XNNPACK delegate on/off.
    """

    threads: Optional[int] = None
    device: str = "cpu"
    delegate: Optional[str] = None
    delegate_options: dict = field(default_factory=dict)
    fallback: Optional[str] = None
    precision: str = "auto"
    spin: Optional[bool] = None
    big_cores: bool = False
    xnnpack: bool = True
    warmup: int = 0

    def resolved_threads(self) -> int:
        return self.threads if self.threads and self.threads > 0 else physical_cores()


class Backend(ABC):
    """Base class of every runtime module. Subclasses set `name`, `suffixes`, `requires` (the pip extra)."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    extra: ClassVar[str]

    def __init__(self, path: str | Path, options: BackendOptions, contract: ModelContract):
        self.path = Path(path)
        self.options = options
        self.contract = contract

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, C, H, W] -> float32 [N, 1, H, W] logits."""

    @abstractmethod
    def options_in_effect(self) -> dict:
        """Threads, precision, device/delegate as the runtime reports them (read back where it can tell)."""

    def close(self) -> None:
        """Release the runtime's resources. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

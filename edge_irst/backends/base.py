"""The backend protocol: the one small surface every runtime module implements.

A backend loads ONE artifact, takes a preprocessed float32 NCHW batch and returns float32 NCHW logits, whatever
the runtime wants inside (NHWC, quantised int8 I/O, blob names). It never thresholds, labels or rescales
coordinates: that is the pipeline's job.

Thread safety: one instance is used from ONE thread at a time. Runtimes differ in what they allow (an ncnn
Extractor or a TFLite Interpreter must never be shared; onnxruntime sessions could be), so the protocol promises
the least common denominator and the pipeline gives each worker its own instance.

A runtime module subclasses `Backend`, loads the artifact in `__init__` (raising ModelFileError /
MissingDependencyError / DeviceUnavailableError, never crashing), sets `inputs` / `outputs` and implements
`_forward` on a batch that `run` (or `run_preprocessed`, the pipeline's call, which skips only the NaN/Inf scan
of tensors that preprocess made) has already validated and cut to the artifact's batch size, `_read_effect` (what
`options_in_effect` reports) and `_release` (what `close` frees). `close` is the base class's: idempotent, and
after it `run` raises BackendClosedError while `options_in_effect` returns what was in effect at closing.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from edge_irst.contract import AUTHORS_CONTRACT, ModelContract, resolve_contract
from edge_irst.errors import (DeviceUnavailableError, EdgeIrstError, InputError, MissingDependencyError,
                              ModelFileError)

log = logging.getLogger("edge_irst.backends")


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


class BackendClosedError(EdgeIrstError, RuntimeError):
    """run() on a backend after its close(): the runtime's resources are gone; load the artifact again."""


class NativeOutput:
    """Text that native code wrote to the redirected file descriptors (filled when the block ends)."""

    text = ""


@contextlib.contextmanager
def capture_native_output(fds: tuple[int, ...] = (1, 2)):
    """Redirect the process's file descriptors `fds` (1 = stdout, 2 = stderr) into a buffer meanwhile.

    Runtimes print from C where sys.stdout cannot catch it (MNN to stdout, which would corrupt `--json`
    results; ncnn's Vulkan loader to stderr). Process-wide while it lasts: use it around loading and probing
    only, never around the inference hot path.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    result = NativeOutput()
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(fd) for fd in fds]
        try:
            for fd in fds:
                os.dup2(sink.fileno(), fd)
            yield result
        finally:
            libc.fflush(None)  # C stdio buffers what it printed to a file: push it into the sink, not our stdout
            for fd, copy in zip(fds, saved):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            result.text = sink.read().decode("utf-8", "replace")
            if result.text.strip():
                log.debug("native output: %s", result.text.strip())


@dataclass(frozen=True)
class TensorSpec:
    """One input/output as the artifact declares it, in the artifact's own layout.

    shape: per-dimension int, or None for a dynamic dimension. dtype: numpy dtype name as the runtime sees it
    ("float32", "int8", ...). layout: "NCHW" or "NHWC". scale / zero_point: quantisation of an integer tensor
    (real = scale * (q - zero_point)), None for float tensors.
    """

    name: str
    shape: tuple
    dtype: str
    layout: str = "NCHW"
    scale: Optional[float] = None
    zero_point: Optional[int] = None

    def _axis(self, letter: str) -> int:
        return self.layout.index(letter)

    @property
    def batch(self) -> Optional[int]:
        return self.shape[0] if len(self.shape) == 4 else None

    @property
    def channels(self) -> Optional[int]:
        return self.shape[self._axis("C")] if len(self.shape) == 4 else None

    @property
    def hw(self) -> tuple:
        """(H, W), each an int or None when dynamic."""
        if len(self.shape) != 4:
            return (None, None)
        return (self.shape[self._axis("H")], self.shape[self._axis("W")])

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}
        if self.scale is not None:
            d.update(scale=self.scale, zero_point=self.zero_point)
        return d


_FALLBACKS = (None, "cpu")
_PRECISIONS = ("auto", "fp32", "fp16", "bf16", "low", "normal", "high")


@dataclass(frozen=True)
class BackendOptions:
    """What the caller asks for. What the runtime actually applied is `Backend.options_in_effect()`.

    threads: None or 0 = physical cores. device: "cpu" or an accelerator name the backend understands ("cuda",
    "vulkan", "opencl", "openvino", ...). delegate: a TFLite external-delegate library path.
    delegate_options: passed to that delegate, or to the onnxruntime execution provider / MNN backend chosen.
    fallback: "cpu" turns a missing accelerator into a warning + CPU run instead of DeviceUnavailableError.
    precision: "auto" (runtime default), "fp32" (pure fp32 arithmetic), "fp16", "bf16" where the runtime decides
    at run time (ncnn), or MNN's modes "low" / "normal" / "high". Backends refuse values they cannot apply.
    spin: onnxruntime intra-op spinning (None = runtime default). big_cores: pin to big cores where offered.
    xnnpack: TFLite's XNNPACK delegate on/off. warmup: runs on a zero batch right after loading.
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

    def __post_init__(self):
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 0):
            raise InputError(f"threads={self.threads!r}: expected a non-negative int (0 or None = physical cores; "
                             f"threads='auto', measured at load time, is taken by load_backend() and Detector)")
        if self.fallback not in _FALLBACKS:
            raise InputError(f"fallback={self.fallback!r}: accepted values are None (error) and 'cpu'")
        if self.precision not in _PRECISIONS:
            raise InputError(f"precision={self.precision!r}: accepted values are {', '.join(_PRECISIONS)} (the "
                             f"runtime's arithmetic; a stored fp16/int8 artifact of a model folder is chosen with "
                             f"artifact_precision=)")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError(f"warmup={self.warmup!r}: expected a non-negative int (number of runs)")
        object.__setattr__(self, "device", str(self.device or "cpu").lower())

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def resolved_threads(self) -> int:
        return self.threads if self.threads and self.threads > 0 else physical_cores()


class Backend(ABC):
    """Base class of every runtime module.

    Subclasses set: `name` (registry name), `suffixes` (artifact file suffixes it reads), `runtime` (the Python
    module it imports, checked without importing it), `extra` (the pip extra that installs it; None for a core
    dependency), `precisions` (what `options.precision` may be), `delegates` (True if it takes external
    delegate libraries). Accelerators are named through `options.device` and checked by the runtime module.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    runtime: ClassVar[str]
    extra: ClassVar[Optional[str]]
    precisions: ClassVar[tuple[str, ...]] = ("auto", "fp32")
    delegates: ClassVar[bool] = False

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __init__(self, path: str | Path, options: BackendOptions, contract: Optional[ModelContract] = None):
        self.path = Path(path)
        self.options = options
        self.contract = contract  # a subclass resolves None once it can read the artifact's own metadata
        # Where the contract came from, for messages about one that contradicts the artifact.
        self.contract_origin = "the contract passed to load_backend" if contract is not None else None
        self._effect_at_close: Optional[dict] = None  # options_in_effect() as close() found it; None while open
        self.fallback_reason: Optional[str] = None
        self.warmup_runs = 0
        self.thread_choice: Optional[dict] = None  # what threads="auto" measured (thread_choice.py)
        if options.precision not in self.precisions:
            raise InputError(f"{self.name} cannot apply precision={options.precision!r} at run time (accepted: "
                             f"{', '.join(self.precisions)}); to run at another precision export an artifact "
                             f"at that precision")
        if options.delegate and not self.delegates:
            raise InputError(f"delegate={options.delegate!r} applies to the tflite backend only; {self.name} "
                             f"takes accelerators through device=")
        if not self.path.is_file():
            raise ModelFileError(f"{self.name}: artifact not found: {self.path}")

    @classmethod
    @abstractmethod
    def probe(cls) -> dict:
        """{"version": str, "accelerators": [str, ...]} as the installed runtime reports them (imports it)."""

    # ---- helpers for subclasses -------------------------------------------------------------------------------
    @classmethod
    def installed(cls) -> bool:
        """Whether the runtime can be imported, checked without importing it."""
        try:
            return importlib.util.find_spec(cls.runtime) is not None
        except (ValueError, ImportError):  # a module blocked with sys.modules[name] = None, or a broken parent
            return False

    @classmethod
    def import_runtime(cls, module: Optional[str] = None):
        """Import the runtime module, or raise MissingDependencyError naming the pip extra."""
        module = module or cls.runtime
        if sys.modules.get(module) is not None:
            return sys.modules[module]
        try:
            with capture_native_output((1,)):  # MNN 3.6 prints its CPU features to stdout when imported
                return importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(f"the {cls.name} backend's runtime ({module})", cls.extra or None,
                                         str(exc)) from exc

    @classmethod
    def install_hint(cls) -> str:
        if cls.extra:
            return f"pip install 'edge-irst[{cls.extra}]'"
        return "pip install --force-reinstall edge-irst (it is a core dependency)"

    def _resolve_contract(self, metadata: Optional[dict] = None) -> None:
        if self.contract is None:
            self.contract, self.contract_origin = resolve_contract(self.path, metadata)

    def _check_contract_agrees(self, channels: Optional[int], hw: tuple, declared_by: str) -> None:
        """Refuse a contract (sidecar, embedded or passed) that contradicts what the artifact itself declares:
        its input channels (`channels`, None when it cannot tell), or its input size where both fix one (`hw`:
        (H, W), None per dynamic dimension). A contradiction is never resolved by believing one side: whichever
        is wrong, frames would be prepared for one model and run through another."""
        contract, problems = self.contract, []
        if channels and channels != contract.channels:
            problems.append(f"{channels} input channel(s) where the contract says {contract.channels} "
                            f"(channel_order {contract.channel_order!r})")
        # The authors' default is no claim about a size, only the fallback for an artifact that carries none.
        claims_size = contract.input_size and contract is not AUTHORS_CONTRACT
        if hw[0] and hw[1] and claims_size and tuple(hw) != tuple(contract.input_size):
            problems.append(f"a {hw[0]}x{hw[1]} (HxW) input where the contract says "
                            f"{contract.input_size[0]}x{contract.input_size[1]}")
        if problems:
            raise ModelFileError(f"{self.name}: {self.path} ({declared_by}) declares {'; '.join(problems)}: "
                                 f"{self.contract_origin} contradicts the artifact; fix or remove that contract, "
                                 f"or re-export the model")

    def _device_unavailable(self, what: str, fix: str) -> None:
        """Raise DeviceUnavailableError, or under fallback='cpu' warn, remember why, and return to run on CPU."""
        if self.options.fallback == "cpu":
            self.fallback_reason = what
            message = f"{self.name}: {what}; running on the CPU (fallback='cpu')"
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return
        raise DeviceUnavailableError(f"{self.name}: {what}. {fix}, or pass fallback='cpu' to run on the CPU")

    def _base_effect(self) -> dict:
        effect = {"backend": self.name, "artifact": str(self.path), "fallback": self.fallback_reason,
                  "warmup_runs": self.warmup_runs}
        if self.thread_choice is not None:
            effect["threads_auto"] = self.thread_choice
        return effect

    # ---- the protocol ------------------------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, C, H, W] (preprocessed, NCHW) -> float32 [N, 1, H, W] logits.

        NaN / Inf in the batch is refused with InputError: runtimes propagate them differently (some silently
        produce finite garbage), so a mask computed from them would mean nothing.
        """
        return self._run(self._validate(batch, scan_values=True))

    def run_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """run() for a tensor made by edge_irst.preprocess (the pipeline's call): such a tensor is finite by
        construction (integer pixels times the contract's factors, which preprocess checks once), so the scan of
        every value for NaN / Inf is left out; the shape, channel, size and dtype checks stay. The scan costs
        about 25 us a 256x256 frame (0.5 % of the bundled int8 model's inference on the AMD EPYC), and beside a
        busy Python thread one more wait for the GIL (benchmarks/gil_contention.py)."""
        return self._run(self._validate(batch, scan_values=False))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.inputs[0].batch == 1 and batch.shape[0] > 1:  # a batch-1 fixed artifact: loop
            return np.concatenate([self._forward(batch[i:i + 1]) for i in range(batch.shape[0])])
        return self._forward(batch)

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Validated C-contiguous float32 NCHW batch the artifact accepts -> float32 [N, 1, H, W] logits."""

    def options_in_effect(self) -> dict:
        """Threads, precision, device/delegate as the runtime reports them (read back where it can tell; a key
        `<option>_source` says where a value came from or that the runtime could not tell). After close(): what
        was in effect when it closed, with "closed": True."""
        if self._effect_at_close is not None:
            return dict(self._effect_at_close)
        return self._read_effect()

    @abstractmethod
    def _read_effect(self) -> dict:
        """options_in_effect() of an open backend, read back from its runtime."""

    @property
    def closed(self) -> bool:
        return self._effect_at_close is not None

    def close(self) -> None:
        """Release the runtime's resources. Idempotent. What was in effect is read first and kept, so reports made
        after closing (a run's summary) still have it; run() afterwards raises BackendClosedError."""
        if self.closed:
            return
        self._effect_at_close = {**self._read_effect(), "closed": True}
        self._release()

    def _release(self) -> None:
        """Drop the runtime objects (net, session, interpreter); called once, by close()."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def claim_threads(self) -> None:
        """Set the runtime's thread count to this instance's again, where the runtime keeps one count for the whole
        process (OpenCV, PyTorch: the last instance created, or any other user, wins); the others keep a count per
        session or net, and this does nothing. threads="auto" calls it before timing each candidate."""

    def zero_batch(self) -> np.ndarray:
        """A float32 [1, C, H, W] batch of zeros at the artifact's (or the contract's) input size."""
        h, w = self.input_size()
        return np.zeros((1, self.inputs[0].channels or self.contract.channels, h, w), np.float32)

    def warm_up(self, runs: int) -> None:
        """Run `runs` zero batches at the artifact's (or the contract's) input size."""
        batch = self.zero_batch()
        for _ in range(runs):
            self.run(batch)
            self.warmup_runs += 1

    def input_size(self) -> tuple[int, int]:
        """(H, W) this artifact takes: its fixed size, else the contract's, else 256x256."""
        h, w = self.inputs[0].hw
        if h and w:
            return int(h), int(w)
        return tuple(self.contract.input_size or (256, 256))

    def _validate(self, batch: np.ndarray, scan_values: bool) -> np.ndarray:
        if self.closed:  # checked here, once for every backend: their runtime objects are gone
            raise BackendClosedError(f"{self.name}: {self.path.name} was closed (close() or the end of a with "
                                     f"block); load it again to run it")
        spec = self.inputs[0]
        if not isinstance(batch, np.ndarray):
            raise InputError(f"{self.name}: batch must be a numpy array, got {type(batch).__name__}")
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise InputError(f"{self.name}: batch shape {batch.shape} is not NCHW [N, C, H, W] with N >= 1 "
                             f"(preprocess() returns [1, C, H, W])")
        if batch.dtype.kind != "f":
            raise InputError(f"{self.name}: batch dtype {batch.dtype} is not floating point; pass the float32 "
                             f"tensor from preprocess(), not raw pixels")
        channels = spec.channels or self.contract.channels
        if batch.shape[1] != channels:
            raise InputError(f"{self.name}: batch has {batch.shape[1]} channels, {self.path.name} takes {channels}")
        h, w = batch.shape[2:]
        fixed = spec.hw
        if (fixed[0] and fixed[0] != h) or (fixed[1] and fixed[1] != w):
            raise InputError(f"{self.name}: {self.path.name} takes {fixed[0]}x{fixed[1]} (HxW) frames only, got "
                             f"{h}x{w}; resize or tile to {fixed[0]}x{fixed[1]} (the pipeline's resize/tile policy)")
        stride = self.contract.stride
        if (not fixed[0] or not fixed[1]) and (h % stride or w % stride):
            raise InputError(f"{self.name}: {h}x{w} is not a multiple of the model stride {stride}; pad the frame "
                             f"to a multiple of {stride}")
        if scan_values and not np.isfinite(batch).all():
            raise InputError(f"{self.name}: batch contains NaN or Inf; refusing to run (check the frame source "
                             f"and preprocessing)")
        return np.ascontiguousarray(batch, dtype=np.float32)


def layout_from_shape(shape: tuple, channels: int, declared: str, where: str,
                      contract_origin: str = "its contract") -> str:
    """The layout of a 4-D input shape: the one axis (1 or 3) that holds `channels`; `declared` breaks a tie."""
    if len(shape) != 4:
        raise ModelFileError(f"{where}: input shape {list(shape)} is not 4-D; LW-IRSTNet artifacts take NCHW or "
                             f"NHWC images")
    candidates = [layout for layout, axis in (("NCHW", 1), ("NHWC", 3)) if shape[axis] == channels]
    if not candidates:
        raise ModelFileError(f"{where}: input shape {list(shape)} has no axis of {channels} channels, the channel "
                             f"count of {contract_origin}: that contract contradicts the artifact; fix or remove "
                             f"it, or re-export the model")
    if len(candidates) == 1 and declared != candidates[0]:
        log.debug("%s: shape %s is %s although the contract says %s; going by the shape",
                  where, list(shape), candidates[0], declared)
    return declared if declared in candidates else candidates[0]

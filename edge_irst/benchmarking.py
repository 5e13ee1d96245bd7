"""Benchmarking: the timing method, machine info, result tables/JSON and `--compare`, shared by `edge-irst bench`
and the scripts in benchmarks/.

    from edge_irst.benchmarking import Config, Method, run_configs, machine_info
    rows = run_configs([Config("LW_IRST.onnx", "onnxruntime", threads=1)], Method(min_runs=20, min_time_s=1))

Method (in the spirit of benchncnn, onnxruntime_perf_test and TFLite's benchmark_model):
- every configuration runs in a FRESH Python process (`python -m edge_irst.benchmarking CONFIG RESULT`), one
  per configuration and round. Why: thread pools are process-wide (cv2.setNumThreads, torch.set_num_threads,
  ncnn's powersave mode, the OpenMP pool that ncnn and torch each bring), so one configuration would set the
  threads of the next; peak RSS (getrusage) is a process high-water mark; and load / first-inference times are
  only cold in a process that has not loaded the runtime before. It also keeps two OpenMP runtimes (torch's and
  ncnn's) out of one process.
- in that process: import the runtime (timed), load the artifact (timed: "load"), one inference on the prepared
  tensor (timed: "first inference"), `warmup` more runs, then timed runs until BOTH `min_runs` runs and
  `min_time_s` seconds are done (the longer of the two). Each run is one `backend.run(batch)` timed with
  time.perf_counter_ns; median / p90 / p99 over all timed runs (numpy's linear percentile); FPS = 1000 / median;
  CPU time per frame = process CPU time (every thread, time.process_time) / runs, which exceeds the latency when
  a runtime's threads spin or work in parallel.
- threads in effect are read back from the runtime (`options_in_effect()`), never echoed; beside them the number
  of threads of the process that were busy (>= 10 % of the timed window, from /proc/self/task) shows what the
  runtime really ran, also where it cannot say (TFLite).
- rounds > 1 interleaves: round r runs every configuration once (in interleaved(configs, r)'s order) with 1/rounds of
  the runs and time, so drift in the machine's other load hits all rows alike; samples of all rounds are pooled.
- the pipeline stage (optional) runs `Detector.stream()` on the synthetic source at the same size, policy and
  threads, and reports per-stage medians (decode, preprocess, inference, postprocess), end-to-end FPS, and
  whether the Detector used its reader thread (it runs in line where the runtime's threads leave no CPU free).
- peak RSS: the row's is read before the pipeline stage loads the model a second time (load, first inference and
  the inference stage); the pipeline stage's own is read after resetting the high-water mark (Linux >= 4.0:
  /proc/self/clear_refs), or, where that is not possible, is the whole process's and says so.

Nothing here imports torch or a runtime in the parent process; the workers import only the one they measure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from edge_irst import __version__
from edge_irst.errors import InputError, UnknownNameError

SCHEMA = "edge-irst-bench/1"
STAGE_NAMES = ("inference", "pipeline")
POLICY_CHOICES = ("auto", "resize", "native", "tile")
# Python distributions whose versions a result records (read from package metadata: nothing is imported).
LIBRARIES = ("numpy", "opencv-python-headless", "opencv-python", "opencv-contrib-python", "onnxruntime",
             "onnxruntime-gpu", "ncnn", "MNN", "ai-edge-litert", "tflite-runtime", "torch", "tensorflow-cpu",
             "tensorflow", "onnx", "pnnx")
# CPU features that decide which kernels the runtimes pick (int8 dot products, fp16 arithmetic, vector width).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8",
             "neon", "asimd", "asimdhp", "asimddp", "fphp", "sve", "i8mm", "bf16")
BUSY_SHARE = 0.10  # a thread counts as busy when it used >= 10 % of the timed window's wall time
# Backend options that only some runtimes apply (the others would ignore them, yet carry them in the row name);
# delegate= goes by Backend.delegates.
OPTION_BACKENDS = {"spin": ("onnxruntime",), "xnnpack": ("tflite",)}


# ---- machine --------------------------------------------------------------------------------------------------
def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def parse_cpuinfo(text: str) -> tuple[Optional[str], set, Optional[str]]:
    """(model name, every flag, CPU identity) from the text of a Linux /proc/cpuinfo. The identity tells CPUs apart
    where the model name does not (a VM's "AMD EPYC" is any EPYC generation): "family F model M stepping S" on
    x86 (the first processor's), "implementer I part P[, part Q]" on Arm (one part per core kind: a big.LITTLE
    chip lists each); None where the text has neither."""
    model, flags, fields, arm_parts = None, set(), {}, []
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "Hardware", "cpu model") and value and model is None:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key in ("cpu family", "model", "stepping", "CPU implementer") and value:
            fields.setdefault(key, value)
        elif key == "CPU part" and value not in arm_parts:
            arm_parts.append(value)
    identity = None
    if "cpu family" in fields:
        identity = " ".join(f"{name} {fields[key]}" for key, name in (("cpu family", "family"), ("model", "model"),
                                                                       ("stepping", "stepping")) if key in fields)
    elif arm_parts:
        identity = f"implementer {fields.get('CPU implementer', '?')} part {', part '.join(arm_parts)}"
    return model, flags, identity


def _cpuinfo() -> tuple[Optional[str], list[str], Optional[str]]:
    """(CPU model, the CPU_FLAGS it has, CPU identity: see parse_cpuinfo) from /proc/cpuinfo; (platform.processor(),
    [], None) elsewhere."""
    model, flags, identity = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    board = _read("/proc/device-tree/model")  # Raspberry Pi and other device-tree boards name themselves here
    if board:
        model = f"{model} ({board.rstrip(chr(0))})" if model else board.rstrip(chr(0))
    return (model or platform.processor() or platform.machine() or None, [f for f in CPU_FLAGS if f in flags],
            identity)


def library_versions(names: Iterable[str] = LIBRARIES) -> dict:
    """{distribution: version} for the installed ones among `names` (package metadata; nothing imported)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def load_average() -> Optional[list[float]]:
    """1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    """What a benchmark result needs to be read against: CPU model, identity and features, cores (physical,
    logical, allowed to this process), frequency governor, memory, load average now, OS, Python, library versions,
    and which postprocess implementation is active. Linux files are read where present; elsewhere a field is None.
    """
    from edge_irst.backends import physical_cores

    model, flags, identity = _cpuinfo()
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    memory_mb = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            memory_mb = round(int(line.split()[1]) / 1024)
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = os.cpu_count()
    try:
        from edge_irst.postprocess import implementation_info

        postprocess = implementation_info()
    except Exception as exc:  # a broken postprocess build must not stop a benchmark of the backends
        postprocess = {"implementation": f"unavailable ({type(exc).__name__}: {exc})"}
    return {
        "cpu": model,
        "cpu_id": identity,
        "cpu_flags": flags,
        "architecture": platform.machine(),
        "cores_physical": physical_cores(),
        "cores_logical": os.cpu_count(),
        "cores_allowed": allowed,
        "governor": governor or "not readable (no /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor)",
        "cpu_max_mhz": round(int(max_khz) / 1000) if max_khz and max_khz.isdigit() else None,
        "memory_mb": memory_mb,
        "load_average": load_average(),
        "os": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "edge_irst": __version__,
        "libraries": library_versions(),
        "postprocess": postprocess,
    }


def machine_line(machine: dict) -> str:
    """One line for a table header: CPU, cores, governor, load, Python."""
    load = machine.get("load_average") or machine.get("load_average_at_start")
    cores = machine.get("cores_physical"), machine.get("cores_logical") or machine.get("logical_cpus")
    governor = machine.get("governor") or "?"
    governor = "?" if governor.startswith("not readable") else governor
    identity = f", {machine['cpu_id']}" if machine.get("cpu_id") else ""
    return (f"{machine.get('cpu') or '?'} ({machine.get('architecture') or machine.get('machine') or '?'}"
            f"{identity}), "
            f"{cores[0] or '?'} physical / {cores[1] or '?'} logical cores, governor {governor}, load average "
            f"{' '.join(f'{v:.2f}' for v in load) if load else '?'}, Python {machine.get('python', '?')}")


# ---- method ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """How long each configuration is measured. Totals over all rounds: warm-up runs are repeated in every round
    (each is a fresh process); timed runs and time are split across rounds."""

    warmup: int = 10
    min_runs: int = 100
    min_time_s: float = 10.0
    rounds: int = 1
    timeout_s: Optional[float] = None  # per worker process; None: 300 s + 4 x its share of min_time_s

    def __post_init__(self):
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise InputError(f"warmup = {self.warmup!r}; expected an int >= 0 (runs before timing)")
        if not (isinstance(self.min_runs, int) and self.min_runs >= 1):
            raise InputError(f"min_runs = {self.min_runs!r}; expected an int >= 1")
        if not (self.min_time_s >= 0 and math.isfinite(self.min_time_s)):
            raise InputError(f"min_time_s = {self.min_time_s!r}; expected seconds >= 0")
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            raise InputError(f"rounds = {self.rounds!r}; expected an int >= 1")

    def per_round(self) -> tuple[int, float]:
        """(timed runs, seconds) one round must reach."""
        return math.ceil(self.min_runs / self.rounds), self.min_time_s / self.rounds

    def describe(self) -> str:
        split = (f", split over {self.rounds} interleaved rounds (each a fresh process, order balanced over rounds, "
                 f"samples pooled)" if self.rounds > 1 else "")
        return (f"each configuration in a fresh process; {self.warmup} warm-up runs after the first inference, then "
                f"timed runs until >= {self.min_runs} runs AND >= {self.min_time_s:g} s{split}; latency = wall clock "
                f"of one backend.run(batch) (perf_counter_ns); median/p90/p99 over all timed runs; FPS = 1000 / "
                f"median; CPU ms/frame = process CPU time (all threads) / runs")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "description": self.describe(),
                "clock": "time.perf_counter_ns (wall), time.process_time (process CPU, all threads)",
                "percentiles": "numpy.percentile, linear interpolation, over the pooled timed runs",
                "isolation": "one fresh Python process per configuration and round (process-wide thread pools, "
                             "peak RSS, cold load and first inference)"}


def summarize(samples_ms: Sequence[float]) -> dict:
    """Latency statistics (ms) of timed runs: median, p90, p99, mean, min, max, stdev; FPS = 1000 / median."""
    values = np.asarray(samples_ms, np.float64)
    if values.size == 0:
        return {"runs": 0}
    median = float(np.median(values))
    return {"runs": int(values.size), "median_ms": median, "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean()),
            "min_ms": float(values.min()), "max_ms": float(values.max()), "stdev_ms": float(values.std()),
            "fps": 1000.0 / median if median > 0 else None}


# ---- configurations -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One thing to measure: `model` (an artifact file or an exporter's model folder) on `backend`.

    threads: what the runtime is asked for (None: physical cores). imgsz: (H, W) of the synthetic frame, None =
    the artifact's own input size. policy: the Detector's frame-size policy ("auto": native for a dynamic artifact,
    tile for a fixed one whose size differs from the frame, else resize). precision: runtime arithmetic
    (BackendOptions.precision). artifact_precision: which artifact of a model folder. options: other
    BackendOptions fields (spin, xnnpack, big_cores, device, delegate, fallback). stages: "inference" (backend.run
    on the prepared tensor) and/or "pipeline" (Detector.stream on synthetic frames). label: how the model appears
    in the row name; group: free text for the scripts ("ours", "authors", ...).
    """

    model: str
    backend: str
    threads: Optional[int] = None
    imgsz: Optional[tuple[int, int]] = None
    policy: str = "auto"
    precision: str = "auto"
    artifact_precision: Optional[str] = None
    options: dict = field(default_factory=dict)
    stages: tuple[str, ...] = ("inference",)
    label: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None  # default: built by default_name()

    def __post_init__(self):
        if self.policy not in POLICY_CHOICES:
            raise UnknownNameError("policy", self.policy, POLICY_CHOICES)
        bad = [s for s in self.stages if s not in STAGE_NAMES]
        if bad or not self.stages:
            raise InputError(f"stages {list(self.stages)!r}: expected one or more of {', '.join(STAGE_NAMES)}")
        if self.imgsz is not None:
            object.__setattr__(self, "imgsz", tuple(int(v) for v in self.imgsz))
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.name is None:
            object.__setattr__(self, "name", self.default_name())

    def default_name(self) -> str:
        """label/backend/t<threads>[/WxH][/policy][/precision][/key=value...]: what --compare takes."""
        label = self.label or Path(self.model).name
        if self.artifact_precision and not self.label:
            label += f":{self.artifact_precision}"
        parts = [label, self.backend, "tall" if self.threads is None else f"t{self.threads}"]
        if self.imgsz:
            parts.append(f"{self.imgsz[1]}x{self.imgsz[0]}")
        if self.policy != "auto":
            parts.append(self.policy)
        if self.precision != "auto":
            parts.append(self.precision)
        parts += [f"{k}={v}" for k, v in sorted(self.options.items())]
        return "/".join(parts)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["imgsz"] = list(self.imgsz) if self.imgsz else None
        d["stages"] = list(self.stages)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        d["imgsz"] = tuple(d["imgsz"]) if d.get("imgsz") else None
        d["stages"] = tuple(d.get("stages") or ("inference",))
        return cls(**d)


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '640x512' (width x height, as cameras quote it) -> (512, 640) as (H, W)."""
    value = text.strip().lower()
    try:
        if "x" in value:
            w, h = (int(v) for v in value.split("x"))
        else:
            w = h = int(value)
    except ValueError:
        raise InputError(f"input size {text!r}: expected N (square) or WxH, e.g. 256 or 640x512") from None
    if w <= 0 or h <= 0:
        raise InputError(f"input size {text!r}: width and height must be positive")
    return h, w


# ---- the worker: runs in a fresh process ----------------------------------------------------------------------
def _thread_cpu_ticks() -> dict:
    """{thread id: user+system clock ticks} of this process's threads (Linux /proc), {} elsewhere."""
    ticks = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return ticks
    for tid in tasks:
        stat = _read(f"/proc/self/task/{tid}/stat")
        if not stat:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces: split after it
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks


def _busy_threads(before: dict, after: dict, wall_s: float) -> Optional[dict]:
    """Threads that used >= BUSY_SHARE of `wall_s` between two _thread_cpu_ticks() snapshots."""
    if not before or not after or wall_s <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    shares = sorted(((after[t] - before.get(t, 0)) / hz / wall_s for t in after), reverse=True)
    return {"busy": sum(s >= BUSY_SHARE for s in shares), "total": len(after),
            "cpu_shares": [round(s, 2) for s in shares[:8]]}


def _peak_rss_mb() -> Optional[float]:
    """Peak resident memory of this process (MB). Linux: VmHWM, because getrusage's ru_maxrss survives execve
    there, so a worker started by a parent that had grown to 1.3 GB (an export in process) reported 1.3 GB."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> Optional[str]:
    """Restart the peak-RSS count of this process from its current RSS (writing "5" to /proc/self/clear_refs, see
    proc(5)), so that the next _peak_rss_mb() covers only what ran since. None when done, else why it was not."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError as exc:  # not Linux, a kernel before 4.0, or a sandbox that forbids it
        return f"the high-water mark cannot be reset here: {type(exc).__name__}: {exc}"
    return None


def _runtime_version(module) -> Optional[str]:
    version = getattr(module, "__version__", None)
    if version is None and callable(getattr(module, "version", None)):  # MNN
        with contextlib.suppress(Exception):
            version = module.version()
    return None if version is None else str(version)


def _timed_loop(step: Callable[[], None], min_runs: int, min_time_s: float) -> dict:
    """Call `step` until >= min_runs calls and >= min_time_s seconds; per-call ms, process CPU, busy threads."""
    samples = []
    ticks = _thread_cpu_ticks()
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + min_time_s
    while len(samples) < min_runs or time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        step()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    wall = time.perf_counter() - start
    return {"samples_ms": samples, "wall_s": wall, "cpu_s": time.process_time() - cpu0,
            "threads": _busy_threads(ticks, _thread_cpu_ticks(), wall)}


def _policy_for(backend, policy: str, frame_hw: tuple[int, int], overlap: int = 32):
    """The Detector's frame-size policy object for `backend`, `policy` resolved from "auto".

    Built through Detector._make_policy (with a stand-in for the Detector) so the tensor timed in the inference
    stage is exactly the one Detector.detect() would feed, without loading the artifact a second time.
    """
    from types import SimpleNamespace

    from edge_irst.pipeline import Detector

    if policy == "auto":
        fixed = backend.inputs[0].hw
        if not (fixed[0] and fixed[1]):
            policy = "native"
        else:
            policy = "resize" if tuple(frame_hw) == tuple(fixed) else "tile"
    stand_in = SimpleNamespace(backend=backend, contract=backend.contract)
    return Detector._make_policy(stand_in, policy, None, overlap)


def _synthetic_image(h: int, w: int) -> np.ndarray:
    from edge_irst.synthetic import SyntheticScene

    return SyntheticScene((h, w), targets=5, seed=0).frame(0).image


def measure(config: Config, warmup: int, min_runs: int, min_time_s: float) -> dict:
    """Measure `config` in THIS process (the worker's body). Returns the round's raw result."""
    from edge_irst.backends import backend_class, load_backend
    from edge_irst.preprocess import RawMapping

    result: dict = {"stages": {}}
    cls = backend_class(config.backend)
    start = time.perf_counter()
    module = cls.import_runtime()
    result["runtime_import_ms"] = (time.perf_counter() - start) * 1e3
    result["runtime_version"] = _runtime_version(module)
    result["rss_before_load_mb"] = _peak_rss_mb()

    start = time.perf_counter()
    backend = load_backend(config.model, config.backend, threads=config.threads, precision=config.precision,
                           artifact_precision=config.artifact_precision, warmup=0, **config.options)
    result["load_ms"] = (time.perf_counter() - start) * 1e3
    try:
        native = backend.input_size()
        frame_hw = tuple(config.imgsz or native)
        policy = _policy_for(backend, config.policy, frame_hw)
        batch = policy.prepare(_synthetic_image(*frame_hw), backend.contract, RawMapping())
        start = time.perf_counter()
        backend.run(batch)
        result["first_inference_ms"] = (time.perf_counter() - start) * 1e3
        result.update(artifact=str(backend.path), artifact_bytes=_artifact_bytes(backend.path),
                      artifact_input=backend.inputs[0].to_dict(), artifact_precision=backend.contract.precision,
                      frame=list(frame_hw), policy=policy.describe(), batch_shape=list(batch.shape))
        if "inference" in config.stages:
            for _ in range(warmup):
                backend.run(batch)
            loop = _timed_loop(lambda: backend.run(batch), min_runs, min_time_s)
            result["stages"]["inference"] = loop
        result["options_in_effect"] = backend.options_in_effect()
        # Read now: the pipeline stage's Detector loads a second copy of the model, which is not this backend's.
        result["peak_rss_mb"] = _peak_rss_mb()
    finally:
        backend.close()

    if "pipeline" in config.stages:
        result["stages"]["pipeline"] = _pipeline_stage(config, result["policy"]["policy"], frame_hw, warmup,
                                                       min_runs, min_time_s)
    return result


def _pipeline_stage(config: Config, policy: str, frame_hw: tuple, warmup: int, min_runs: int,
                    min_time_s: float) -> dict:
    """Detector.stream() on an endless synthetic source: per-frame stage times and end-to-end throughput."""
    from edge_irst.pipeline import Detector

    untaken = (["precision"] if config.precision != "auto" else []) + \
        [k for k in config.options if k not in ("device", "delegate", "fallback")]
    if untaken:
        return {"skipped": f"Detector takes no {' / '.join(f'{k}=' for k in untaken)} argument; the pipeline "
                           f"stage runs at runtime defaults only"}
    source = f"synthetic:{frame_hw[1]}x{frame_hw[0]},targets=5,frames=0,seed=0"
    not_reset = _reset_peak_rss()
    detector = Detector(config.model, config.backend, threads=config.threads, policy=policy, warmup=0,
                        artifact_precision=config.artifact_precision,
                        **{k: v for k, v in config.options.items() if k in ("device", "delegate", "fallback")})
    frames = []
    try:
        stream = detector.stream(source)
        try:
            for _ in range(warmup + 1):
                next(stream)
            ticks = _thread_cpu_ticks()
            cpu0 = time.process_time()
            start = time.perf_counter()
            deadline = start + min_time_s
            while len(frames) < min_runs or time.perf_counter() < deadline:
                frames.append(next(stream).timings)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            threads = _busy_threads(ticks, _thread_cpu_ticks(), wall)
        finally:
            stream.close()
    finally:
        detector.close()
    return {"source": source, "frames": len(frames), "wall_s": wall, "cpu_s": cpu, "threads": threads,
            "stage_ms": {name: [getattr(t, name) for t in frames]
                         for name in ("decode", "preprocess", "inference", "postprocess", "latency")},
            # a synthetic source is not live, so stream() uses its reader thread exactly when prefetch > 0
            "prefetch": detector.prefetch, "reader_thread": detector.prefetch > 0,
            "peak_rss_mb": _peak_rss_mb(), "peak_rss_not_reset": not_reset}


def _artifact_bytes(path: Path) -> int:
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".param" else [])
    return sum(f.stat().st_size for f in files if f.is_file())


def _worker_main(argv: list[str]) -> int:
    """`python -m edge_irst.benchmarking CONFIG.json RESULT.json`: measure one configuration for one round."""
    request = json.loads(Path(argv[0]).read_text())
    config = Config.from_dict(request["config"])
    try:
        result = {"status": "ok", **measure(config, request["warmup"], request["min_runs"], request["min_time_s"])}
    except BaseException as exc:  # noqa: BLE001 - any failure is this configuration's result, reported by the parent
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        result = {"status": "failed", "reason": detail, "traceback": traceback.format_exc()[-4000:]}
    Path(argv[1]).write_text(json.dumps(result, default=str))
    return 0


# ---- the parent: plans, spawns, pools ---------------------------------------------------------------------------
def _run_worker(config: Config, warmup: int, runs: int, seconds: float, timeout: float, scratch: Path) -> dict:
    request = scratch / "request.json"
    answer = scratch / "result.json"
    answer.unlink(missing_ok=True)
    request.write_text(json.dumps({"config": config.to_dict(), "warmup": warmup, "min_runs": runs,
                                   "min_time_s": seconds}))
    command = [sys.executable, "-m", "edge_irst.benchmarking", str(request), str(answer)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:g} s (worker killed)"}
    if not answer.is_file():
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
        return {"status": "failed", "reason": f"worker exited with code {done.returncode} without a result"
                                              + (f": {' | '.join(tail)}" if tail else "")}
    return json.loads(answer.read_text())


def _pool(config: Config, rounds: list[dict], load: list) -> dict:
    """One result row from the rounds of one configuration."""
    row = {"name": config.name, "group": config.group, "config": config.to_dict(), "rounds": len(rounds)}
    failed = next((r for r in rounds if r["status"] != "ok"), None)
    if failed:
        row.update(status="failed", reason=failed["reason"])
        if failed.get("traceback"):
            row["traceback"] = failed["traceback"]
        return row
    first = rounds[0]
    effect = first.get("options_in_effect", {})
    row.update(
        status="ok", backend=config.backend, runtime_version=first["runtime_version"],
        artifact=first["artifact"], artifact_bytes=first["artifact_bytes"],
        artifact_precision=first["artifact_precision"], artifact_input=first["artifact_input"],
        frame=first["frame"], policy=first["policy"], batch_shape=first["batch_shape"],
        threads_requested=config.threads, threads_in_effect=effect.get("threads"),
        threads_source=effect.get("threads_source"), precision_requested=config.precision,
        precision_in_effect=effect.get("precision"), delegate=effect.get("delegate"),
        device=effect.get("device"), options_in_effect=effect,
        runtime_import_ms=float(np.median([r["runtime_import_ms"] for r in rounds])),
        load_ms=float(np.median([r["load_ms"] for r in rounds])),
        load_ms_rounds=[round(r["load_ms"], 3) for r in rounds],
        first_inference_ms=float(np.median([r["first_inference_ms"] for r in rounds])),
        first_inference_ms_rounds=[round(r["first_inference_ms"], 3) for r in rounds],
        peak_rss_mb=max((r["peak_rss_mb"] for r in rounds if r["peak_rss_mb"] is not None), default=None),
        rss_before_load_mb=first["rss_before_load_mb"],
        load_average_1min=[v[0] if v else None for v in load],
    )
    if "inference" in config.stages:
        loops = [r["stages"]["inference"] for r in rounds]
        samples = [s for loop in loops for s in loop["samples_ms"]]
        stats = summarize(samples)
        stats.update(
            wall_s=sum(loop["wall_s"] for loop in loops),
            cpu_ms_per_frame=1e3 * sum(loop["cpu_s"] for loop in loops) / len(samples),
            median_ms_rounds=[round(float(np.median(loop["samples_ms"])), 4) for loop in loops],
            threads_busy=max((loop["threads"]["busy"] for loop in loops if loop["threads"]), default=None),
            thread_cpu_shares=next((loop["threads"]["cpu_shares"] for loop in loops if loop["threads"]), None),
        )
        row["inference"] = stats
    if "pipeline" in config.stages:
        stages = [r["stages"]["pipeline"] for r in rounds]
        if "skipped" in stages[0]:
            row["pipeline"] = {"skipped": stages[0]["skipped"]}
        else:
            frames = sum(s["frames"] for s in stages)
            wall = sum(s["wall_s"] for s in stages)
            pooled = {name: [v for s in stages for v in s["stage_ms"][name]] for name in stages[0]["stage_ms"]}
            not_reset = next((s["peak_rss_not_reset"] for s in stages if s["peak_rss_not_reset"]), None)
            row["pipeline"] = {
                "source": stages[0]["source"], "frames": frames, "wall_s": wall,
                "fps": frames / wall if wall > 0 else None,
                "cpu_ms_per_frame": 1e3 * sum(s["cpu_s"] for s in stages) / frames,
                "threads_busy": max((s["threads"]["busy"] for s in stages if s["threads"]), default=None),
                "median_ms": {name: float(np.median(v)) for name, v in pooled.items()},
                "p90_ms": {name: float(np.percentile(v, 90)) for name, v in pooled.items()},
                "prefetch": stages[0]["prefetch"], "reader_thread": stages[0]["reader_thread"],
                "fps_includes": _pipeline_fps_includes(stages[0]["prefetch"]),
                "peak_rss_mb": max((s["peak_rss_mb"] for s in stages if s["peak_rss_mb"] is not None), default=None),
                "peak_rss_own": not_reset is None,
                "peak_rss_scope": ("the pipeline stage alone: the high-water mark was reset (/proc/self/clear_refs) "
                                   "once the row's first backend was closed, so it counts from the process's RSS then"
                                   if not_reset is None else f"the whole worker process, load and inference stage "
                                                             f"included ({not_reset})"),
            }
    return row


def _pipeline_fps_includes(prefetch: int) -> str:
    """What the pipeline stage's FPS covers, given the Detector's prefetch (0: no reader thread)."""
    if prefetch:
        return (f"decode (synthetic frame generation) + preprocess in a reader thread (a queue of {prefetch} frames),"
                f" overlapped with inference + postprocess in the caller: frames / wall time")
    return ("decode (synthetic frame generation), preprocess, inference and postprocess one after another in the "
            "caller's thread (prefetch 0: the Detector runs in line where the runtime's threads leave no usable CPU "
            "for a reader): frames / wall time")


def quartiles(values: Sequence[float]) -> list:
    """[first, third] quartile of per-round values (inclusive method, so both lie within the values' range): how
    far a verdict taken on their median could move in a run as long on the same machine."""
    if len(values) < 2:
        return [values[0], values[0]]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return [low, high]


def within_spread(quartiles: Sequence[float], required: float, at_most: bool = False) -> bool:
    """Whether `required` lies between the quartiles of a verdict's per-round values such that a run as long could
    have given the other verdict: for a target met at a median >= required, low < required <= high; for one met
    at a median <= required (`at_most`, e.g. an overhead), low <= required < high."""
    low, high = quartiles
    return low <= required < high if at_most else low < required <= high


def interleaved(items: Sequence, round_index: int) -> list:
    """The order in which round `round_index` of an interleaved benchmark runs `items`: a balanced Latin square
    (Williams design), so that over every n rounds (2n for an odd count n) each item runs first equally often and
    right after each other item equally often.

    Why not a plain rotation: turning the order by one place a round still runs b right after a in almost every
    round, and what a method leaves behind is not neutral. The C labeller, for one, runs 1.5-2x slower for its
    first tens of calls after OpenCV's connected components or a numpy sort, until the CPU's branch predictor has
    relearnt it; a fixed predecessor would charge that to the same method every round.
    """
    count = len(items)
    if count == 0:
        return []
    # Row 0 is 0, 1, n-1, 2, n-2, ...; row r adds r (mod n). For odd n the second n rows are the first n reversed.
    row, low, high = [0], 1, count - 1
    while len(row) < count:
        row.append(low)
        low += 1
        if len(row) < count:
            row.append(high)
            high -= 1
    cycle = 2 * count if count % 2 else count
    shift = round_index % cycle
    order = [items[(k + shift) % count] for k in row]
    return order[::-1] if shift >= count else order


def run_configs(configs: Sequence[Config], method: Method, progress: bool = True,
                on_row: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Measure every configuration per `method`; rows in the order of `configs`.

    Round r runs the configurations in interleaved(configs, r)'s order (the first round in the given order), each
    in a fresh worker process. A configuration that fails in a round is not run again; its row says why.
    """
    from edge_irst.progress import Progress

    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"configurations share the names {duplicates}: give the models distinct labels")
    runs, seconds = method.per_round()
    timeout = method.timeout_s or 300.0 + 4 * seconds
    results: dict = {c.name: [] for c in configs}
    loads: dict = {c.name: [] for c in configs}
    failed: set = set()
    total = len(configs) * method.rounds
    with tempfile.TemporaryDirectory(prefix="edge-irst-bench-") as scratch, \
            Progress(total, "bench", enabled=None if progress else False, min_interval=0) as bar:
        for r in range(method.rounds):
            for config in interleaved(configs, r):
                # min_interval=0: the bar is drawn as each configuration starts, so it names the one running, not
                # the one before it (a configuration takes far longer than the default 0.2 s between draws)
                bar.update(0, postfix=f"round {r + 1}/{method.rounds} {config.name}")
                if config.name not in failed:
                    loads[config.name].append(load_average())
                    outcome = _run_worker(config, method.warmup, runs, seconds, timeout, Path(scratch))
                    results[config.name].append(outcome)
                    if outcome["status"] != "ok":
                        failed.add(config.name)
                bar.update(1)
    rows = []
    for config in configs:
        row = _pool(config, results[config.name], loads[config.name])
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


# ---- planning (edge-irst bench) -----------------------------------------------------------------------------
def installed_reason(backend: str) -> Optional[str]:
    """None if `backend`'s runtime is importable (checked without importing it), else why not and the fix."""
    from edge_irst.backends import backend_class

    cls = backend_class(backend)
    return None if cls.installed() else f"{cls.runtime} not installed: {cls.install_hint()}"


def plan(models: Sequence[tuple[Optional[str], str]], backends: Sequence[str], threads: Sequence[Optional[int]],
         sizes: Sequence[Optional[tuple[int, int]]], policy: str = "auto", precisions: Sequence[str] = ("auto",),
         artifact_precisions: Sequence[str] = ("fp32",), options: Optional[dict] = None,
         stages: Sequence[str] = ("inference",), explicit_backends: bool = False) -> tuple[list[Config], list[dict]]:
    """Expand models x backends x artifact precisions x precisions x threads x sizes into Configs.

    models: (label or None, path). A file pairs with the backends that read its suffix; with `explicit_backends`
    the others are listed as skipped. A model folder pairs with every backend that has an artifact of the asked
    precision in its manifest. A backend whose runtime is not installed is skipped with the reason. A folder
    without a readable manifest raises the loader's ModelFileError, once for the folder rather than per backend.
    Returns (configs, skipped), skipped = [{"model", "backend", "artifact_precision", "reason"}].
    """
    # _read_manifest is the loader's own reading: a folder it refuses fails here with the same message
    from edge_irst.backends import _read_manifest, backend_class, resolve_artifact
    from edge_irst.errors import ModelFileError

    configs, skipped = [], []
    for label, model in models:
        path = Path(model)
        is_folder = path.is_dir()
        manifest = _read_manifest(path) if is_folder else {}
        for backend in backends:
            cls = backend_class(backend)
            if not is_folder and path.suffix.lower() not in cls.suffixes:
                if explicit_backends:
                    reads = f"{backend} reads {', '.join(cls.suffixes)}, not {path.suffix or path.name}"
                    skipped.append({"model": str(model), "backend": backend, "artifact_precision": None,
                                    "reason": reads})
                continue
            missing = installed_reason(backend)
            for artifact_precision in (artifact_precisions if is_folder else (None,)):
                if missing:
                    skipped.append({"model": str(model), "backend": backend, "artifact_precision": artifact_precision,
                                    "reason": missing})
                    continue
                if is_folder:
                    try:
                        resolve_artifact(path, backend, artifact_precision)
                    except ModelFileError as exc:
                        why = _manifest_reason(manifest, cls.suffixes, artifact_precision)
                        reason = f"no {artifact_precision} artifact for {backend} in {path.name}"
                        if why:
                            reason += f": {why}"
                        elif _has_format(manifest, cls.suffixes, artifact_precision):
                            reason = str(exc)  # listed, yet not loadable: the resolver says why (missing file...)
                        if explicit_backends or why or _has_format(manifest, cls.suffixes):
                            skipped.append({"model": str(model), "backend": backend,
                                            "artifact_precision": artifact_precision, "reason": reason})
                        continue
                untaken = _untaken_options(cls, options or {})
                if untaken:
                    skipped.append({"model": str(model), "backend": backend, "artifact_precision": artifact_precision,
                                    "reason": untaken})
                    continue
                for precision in precisions:
                    if precision not in cls.precisions:
                        skipped.append({"model": str(model), "backend": backend,
                                        "artifact_precision": artifact_precision,
                                        "reason": f"{backend} cannot apply precision={precision!r} at run time "
                                                  f"(it takes {', '.join(cls.precisions)})"})
                        continue
                    for n in threads:
                        for size in sizes:
                            configs.append(Config(str(model), backend, threads=n, imgsz=size, policy=policy,
                                                  precision=precision, options=dict(options or {}),
                                                  artifact_precision=artifact_precision if is_folder else None,
                                                  stages=tuple(stages), label=_label(label, path, artifact_precision,
                                                                                     is_folder)))
    return configs, skipped


def _untaken_options(cls, options: dict) -> Optional[str]:
    """Why backend class `cls` cannot apply one of `options` (an option only other runtimes take), or None."""
    from edge_irst.backends import backend_class, list_backends

    for key in options:
        if key == "delegate":
            takers = [name for name in list_backends() if backend_class(name).delegates]
        else:
            takers = OPTION_BACKENDS.get(key, [cls.name])
        if cls.name not in takers:
            return f"{cls.name} takes no {key}= option (only {', '.join(takers)} applies it)"
    return None


def _label(label: Optional[str], path: Path, artifact_precision: Optional[str], is_folder: bool) -> str:
    if label:
        return f"{label}:{artifact_precision}" if is_folder else label
    return f"{path.name}:{artifact_precision}" if is_folder else path.name


def _has_format(manifest: dict, suffixes: tuple, precision: Optional[str] = None) -> bool:
    """Whether the manifest lists a file in one of `suffixes` (at `precision`, if given)."""
    return any(Path(f).suffix in suffixes for e in manifest.get("artifacts", [])
               if precision is None or e.get("precision", "fp32") == precision for f in e.get("files", []))


def _manifest_reason(manifest: dict, suffixes: tuple, precision: Optional[str]) -> Optional[str]:
    """The exporter's recorded reason for a skipped/failed artifact of this format and precision, if any."""
    formats = {"onnx": ".onnx", "ncnn": ".param", "mnn": ".mnn", "tflite": ".tflite"}
    for entry in manifest.get("artifacts", []):
        if formats.get(entry.get("format")) in suffixes and entry.get("precision") == precision and entry.get("reason"):
            return entry["reason"]
    return None


# ---- artifacts for the benchmark scripts ------------------------------------------------------------------------
def default_cache() -> Path:
    """Where the benchmark scripts keep the artifacts they export: $EDGE_IRST_CACHE, else ~/.cache/edge-irst."""
    root = os.environ.get("EDGE_IRST_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                         "edge-irst")
    return Path(root) / "benchmarks"


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def exporter_fingerprint() -> str:
    """12 hex digits of the sha256 over the exporter's own source files (edge_irst.export, by name and content):
    an export cached by other exporter code, such as a working tree between two releases, is not reused."""
    import hashlib
    import importlib.util

    folder = Path(importlib.util.find_spec("edge_irst.export").origin).parent  # found, not imported
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def artifacts_to_redo(manifest: dict, wanted: set) -> set:
    """The (format, precision) pairs of `wanted` that a cached export's manifest cannot serve: missing, FAILED (a
    newer exporter or verification rule may pass them), or skipped by an exporter that had no converter for them
    where this one has one (FORMATS). Other skipped ones stay skipped: exporting again would skip them again."""
    from edge_irst.export.formats import FORMATS

    rows = {(a.get("format"), a.get("precision")): a.get("status") for a in manifest.get("artifacts", [])}
    writable = {(name, precision) for name, fmt in FORMATS.items() for precision in fmt.precisions}
    return {key for key in wanted
            if key not in rows or rows[key] == "FAILED" or (rows[key] == "skipped" and key in writable)}


def cached_export(weights, formats: str, precisions: str, cache: Path, dynamic: bool = False,
                  calib: Optional[str] = None, log: Callable[[str], None] = print,
                  grey_input: bool = False) -> tuple[Path, dict]:
    """An exporter model folder of `weights` (formats x precisions), exported once into `cache` and reused.

    The folder is keyed by the weights' sha256, the export settings (`grey_input`: export's one-channel
    artifacts), the edge-irst version and the exporter's source (exporter_fingerprint); a folder whose manifest is
    missing, or lacks a wanted artifact, or marks one FAILED, or skipped one that the exporter now writes
    (FORMATS), is exported again. Returns (folder, its manifest). An export in which some converter failed still
    leaves a folder (the exporter writes the manifest first): the failures are logged and the verified artifacts
    used; the manifest says why the others are missing.
    """
    weights = Path(weights)
    sha = _sha256(weights)
    key = f"{sha[:12]}_{'dyn' if dynamic else 'fixed'}{'_grey' if grey_input else ''}_{__version__}_" \
          f"{exporter_fingerprint()}"
    name = f"{weights.stem.lower()}_{key}"
    folder = Path(cache) / name
    manifest = folder / "manifest.json"
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        if not artifacts_to_redo(doc, {(f, p) for f in formats.split(",") for p in precisions.split(",")}):
            log(f"using the cached export {folder}")
            return folder, doc
    from edge_irst.errors import EdgeIrstError
    from edge_irst.export import export

    log(f"exporting {weights.name} ({formats} x {precisions}{', dynamic H/W' if dynamic else ''}"
        f"{', grey input' if grey_input else ''}) to {folder} (once; later runs reuse it)")
    try:
        export(weights, formats=formats, precisions=precisions, dynamic=dynamic, out=Path(cache), name=name,
               threads=1, calib=calib, grey_input=grey_input)
    except EdgeIrstError as exc:
        if not manifest.is_file():
            raise
        log(f"the export reported failures; benchmarking the verified artifacts only: {exc}")
    return folder, json.loads(manifest.read_text())


def export_summary(manifest: dict) -> list[dict]:
    """format, precision, status, size, reason of each artifact of an exporter manifest (for result JSON)."""
    keep = ("format", "precision", "status", "verified", "size_bytes", "mask_iou_vs_fp32", "max_abs_diff", "reason")
    return [{k: a.get(k) for k in keep} for a in manifest.get("artifacts", [])]


# ---- documents, tables, comparison ------------------------------------------------------------------------------
def document(rows: list[dict], skipped: list[dict], method: Method, machine: dict, command: str,
             benchmark: str = "bench", **extra) -> dict:
    """The JSON document of a run (what --json writes and benchmarks/results/*.json hold)."""
    return {"schema": SCHEMA, "benchmark": benchmark, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command, "edge_irst": __version__, "method": method.to_dict(), "machine": machine,
            "load_average_at_end": load_average(), **extra, "rows": rows, "skipped": skipped}


def add_method_arguments(parser, rounds: int, quick: Method) -> None:
    """--rounds/--warmup/--min-runs/--min-time/--quick for a benchmarks/ script (defaults: the stated method)."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"interleaved rounds (default {rounds})")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--min-runs", type=int, default=100)
    parser.add_argument("--min-time", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run, do not publish: {quick.rounds} round(s), {quick.warmup} warm-up, "
                             f"{quick.min_runs} runs, {quick.min_time_s} s")


def method_from_args(args, quick: Method) -> Method:
    return quick if args.quick else Method(warmup=args.warmup, min_runs=args.min_runs, min_time_s=args.min_time,
                                           rounds=args.rounds)


def script_command(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command line that reproduces a run of a benchmarks/ script (argv None: this process's arguments)."""
    words = sys.argv[1:] if argv is None else list(argv)
    return f"python {script}" + (f" {shlex.join(words)}" if words else "")


def publish(doc: dict, summary: str, out, log: Callable[[str], None]) -> int:
    """Print a benchmark script's result (rows table, then its own summary) and write its JSON; returns 0."""
    print(render(doc))
    print(summary)
    write_json(doc, out)
    log(f"wrote {out}")
    return 0


def write_json(doc: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def find_row(rows: Sequence[dict], name: str) -> dict:
    """The row called `name`, else the one row whose name contains it; UnknownNameError listing close names."""
    exact = [r for r in rows if r["name"] == name]
    if exact:
        return exact[0]
    partial = [r for r in rows if name in r["name"]]
    if len(partial) == 1:
        return partial[0]
    names = [r["name"] for r in rows]
    if partial:
        raise InputError(f"--compare {name!r} matches {len(partial)} rows ({', '.join(r['name'] for r in partial)});"
                         f" give a full row name")
    raise UnknownNameError("row", name, names if len(names) < 40 else difflib.get_close_matches(name, names, 10))


def round_ratios(base: dict, row: dict) -> list[float]:
    """Per round, the `base` row's inference median over `row`'s. Round r of two rows of one run_configs call ran
    in the same pass over the configurations, so load on the machine that drifts from round to round cancels
    out of each ratio; [] unless both rows have medians for the same number of rounds."""
    a = (base.get("inference") or {}).get("median_ms_rounds") or []
    b = (row.get("inference") or {}).get("median_ms_rounds") or []
    return [x / y for x, y in zip(a, b) if x > 0 and y > 0] if len(a) == len(b) else []


def compare(rows: Sequence[dict], baseline: str) -> dict:
    """Speed-up of each row against the `baseline` row: baseline median / row median (> 1 = faster), for the
    inference stage, and FPS ratio row / baseline for the pipeline stage, where both rows have them; with two
    rounds or more, also the median over the rounds of the per-round ratio (round_ratios). A baseline row that
    failed has no times: InputError naming why it failed."""
    base = find_row(rows, baseline)
    if base.get("status", "ok") != "ok":
        raise InputError(f"--compare {baseline!r}: the row {base['name']} failed, so it has no times to compare "
                         f"against ({base.get('reason') or 'no reason recorded'}); give a row that ran")
    ratios = {}
    for row in rows:
        entry = {}
        if row.get("inference", {}).get("median_ms") and base.get("inference", {}).get("median_ms"):
            entry["inference"] = base["inference"]["median_ms"] / row["inference"]["median_ms"]
            entry["inference_cpu"] = base["inference"]["cpu_ms_per_frame"] / row["inference"]["cpu_ms_per_frame"]
            per_round = round_ratios(base, row)
            if len(per_round) >= 2:
                entry["inference_paired"] = float(np.median(per_round))
        if row.get("pipeline", {}).get("fps") and base.get("pipeline", {}).get("fps"):
            entry["pipeline_fps"] = row["pipeline"]["fps"] / base["pipeline"]["fps"]
        ratios[row["name"]] = entry
    return {"baseline": base["name"], "meaning": "inference: baseline median / row median (> 1 = row faster); "
                                                 "inference_paired: median over the rounds of the same ratio per "
                                                 "round; inference_cpu: the same on CPU time per frame; "
                                                 "pipeline_fps: row FPS / baseline FPS", "ratios": ratios}


def _ms(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def text_table(rows: list[tuple], header: tuple, align: str = "") -> str:
    """Plain aligned columns (first column left, the rest right unless `align` says 'l' for that column)."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(row):
        out = []
        for i, (c, w) in enumerate(zip(row, widths)):
            left = i == 0 or (i < len(align) and align[i] == "l")
            out.append(c.ljust(w) if left else c.rjust(w))
        return "  ".join(out).rstrip()

    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def threads_cell(row: dict, stage: Optional[str] = None) -> str:
    """'req>eff busy': e.g. '4>4 b2' = 4 asked, the runtime reports 4, 2 threads were busy in the timed window of
    `stage` (default: the inference stage, else the pipeline stage)."""
    req = "all" if row.get("threads_requested") is None else row["threads_requested"]
    eff = row.get("threads_in_effect")
    busy = ((row.get(stage) if stage else row.get("inference") or row.get("pipeline")) or {}).get("threads_busy")
    return f"{req}>{'-' if eff is None else eff}" + ("" if busy is None else f" b{busy}")


def delegate_cell(row: dict) -> str:
    """What runs the graph besides the runtime's own CPU kernels, as the runtime reports it: an external delegate
    library, TFLite's XNNPACK, or a device other than the CPU; '-' for none."""
    effect = row.get("options_in_effect") or {}
    if effect.get("delegate"):
        return Path(str(effect["delegate"])).name
    if effect.get("xnnpack") is True:
        return "xnnpack"
    device = effect.get("device")
    return device if device and device != "cpu" else "-"


def render(doc: dict, comparison: Optional[dict] = None) -> str:
    """The human report of a bench document: method, machine, inference and pipeline tables, skips, failures."""
    rows = doc["rows"]
    ok = [r for r in rows if r.get("status") == "ok"]
    lines = [f"method: {doc['method']['description']}", f"machine: {machine_line(doc['machine'])}"]
    if doc.get("load_average_at_end"):
        lines.append(f"load average at end: {' '.join(f'{v:.2f}' for v in doc['load_average_at_end'])}")
    ratio_name = comparison["baseline"] if comparison else None
    paired = comparison is not None and any("inference_paired" in e for e in comparison["ratios"].values())
    with_inference = [r for r in ok if r.get("inference")]
    if with_inference:
        header = ("inference (backend.run)", "thr req>eff busy", "prec", "delegate", "input", "median ms", "p90", "p99",
                  "FPS", "CPU ms/frame", "load ms", "1st ms", "RSS MB")
        header += _ratio_header(ratio_name, "x") + (("paired x",) if paired else ())
        table = []
        for r in with_inference:
            s = r["inference"]
            cells = (r["name"], threads_cell(r), r.get("precision_in_effect") or "-", delegate_cell(r),
                     "x".join(str(v) for v in r["batch_shape"]), _ms(s["median_ms"]), _ms(s["p90_ms"]),
                     _ms(s["p99_ms"]), _ms(s["fps"], 1), _ms(s["cpu_ms_per_frame"]), _ms(r["load_ms"], 1),
                     _ms(r["first_inference_ms"], 1), _ms(r["peak_rss_mb"], 0))
            cells += _ratio_cell(comparison, r["name"], "inference")
            table.append(cells + (_ratio_cell(comparison, r["name"], "inference_paired") if paired else ()))
        lines += ["", text_table(table, header)]
    with_pipeline = [r for r in ok if r.get("pipeline")]
    shared_rss = False
    if with_pipeline:
        # rows without the inference table would otherwise show their load and first-inference times nowhere
        cold = any(not r.get("inference") for r in with_pipeline)
        header = ("pipeline (Detector.stream, synthetic)", "thr req>eff busy", "policy", "reader", "frame", "decode",
                  "preproc", "infer", "postproc", "latency", "FPS e2e", "CPU ms/frame", "RSS MB")
        header += ("load ms", "1st ms") if cold else ()
        header += _ratio_header(ratio_name, "FPS x")
        table, skips = [], []
        for r in with_pipeline:
            p = r["pipeline"]
            if "skipped" in p:  # the reason goes below the table: in a cell it would widen that column for all rows
                table.append((r["name"], threads_cell(r, "pipeline"), "skipped") + ("",) * (len(header) - 3))
                skips.append(f"  {r['name']}: {p['skipped']}")
                continue
            m = p["median_ms"]
            shared_rss = shared_rss or p.get("peak_rss_own") is False
            cells = (r["name"], threads_cell(r, "pipeline"), r["policy"]["policy"], _reader_cell(p),
                     "x".join(str(v) for v in r["frame"][::-1]), _ms(m["decode"]), _ms(m["preprocess"]),
                     _ms(m["inference"]), _ms(m["postprocess"]), _ms(m["latency"]), _ms(p["fps"], 1),
                     _ms(p["cpu_ms_per_frame"]),
                     _ms(p.get("peak_rss_mb"), 0) + ("*" if p.get("peak_rss_own") is False else ""))
            cells += (_ms(r["load_ms"], 1), _ms(r["first_inference_ms"], 1)) if cold else ()
            table.append(cells + _ratio_cell(comparison, r["name"], "pipeline_fps"))
        lines += ["", "stage medians in ms; FPS end to end; reader: 'thread' = a reader thread decodes + preprocesses "
                      "ahead into a prefetch queue, overlapped with inference; 'in line' = every stage one after "
                      "another in one thread (the Detector's choice where the runtime's threads leave no usable CPU "
                      "free); latency = capture to result, including on 'thread' rows the wait in the prefetch "
                      "queue, which a synthetic or file source keeps full (a live source always runs in line)",
                  text_table(table, header, align="lrll")]
        lines += ["pipeline stage skipped:", *skips] if skips else []
    notes = _thread_notes(ok, doc["machine"])
    if notes:
        lines += ["", *notes]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["", "failed:"] + [f"  {r['name']}: {r['reason']}" for r in failed]
    if doc.get("skipped"):
        lines += ["", "skipped:"] + [f"  {s['backend']} on {Path(s['model']).name}"
                                     + (f" ({s['artifact_precision']})" if s.get("artifact_precision") else "")
                                     + f": {s['reason']}" for s in doc["skipped"]]
    lines.append("")
    lines.append("thr req>eff busy: threads requested > in effect as the runtime reports them (TFLite cannot: it "
                 "echoes the request) ; b = threads of the process busy >= 10% of the timed window")
    if with_inference:
        lines.append("prec, delegate: arithmetic and delegate / accelerator in effect, as the runtime reports them "
                     "('-': the runtime's own CPU kernels)")
    if with_pipeline:
        lines.append("RSS MB: peak resident memory; inference: load, first inference and timed runs; pipeline: the "
                     "stage's own" + (" (* = of the whole process, earlier stages included: its peak could not be "
                                      "reset)" if shared_rss else ""))
    if paired:
        lines.append("paired x: median over the rounds of the baseline's round median / the row's (drift in the "
                     "machine's load between rounds cancels out)")
    return "\n".join(lines)


def _reader_cell(pipeline: dict) -> str:
    """How the pipeline stage read frames: 'thread' (prefetch queue), 'in line', '?' (a result from before this
    was recorded)."""
    reader = pipeline.get("reader_thread")
    return "?" if reader is None else "thread" if reader else "in line"


def _ratio_header(baseline: Optional[str], what: str) -> tuple:
    """The --compare column's header (none without a baseline)."""
    return (f"{what} vs {baseline}",) if baseline else ()


def _ratio_cell(comparison: Optional[dict], name: str, key: str) -> tuple:
    """The --compare cell of row `name` for the ratio `key` ("-" where it has none; nothing without --compare)."""
    if not comparison:
        return ()
    ratio = comparison["ratios"].get(name, {}).get(key)
    return ("-" if ratio is None else f"{ratio:.2f}x",)


def _thread_notes(rows: list[dict], machine: dict) -> list[str]:
    logical = machine.get("cores_logical") or 0
    notes = []
    for r in rows:
        req, eff = r.get("threads_requested"), r.get("threads_in_effect")
        if req and logical and req > logical:
            busy = (r.get("inference") or {}).get("threads_busy")
            notes.append(f"note: {r['name']}: {req} threads requested on {logical} logical cores; the runtime "
                         f"applied {eff if eff is not None else '?'} ({r.get('threads_source')})"
                         + (f", {busy} threads busy" if busy is not None else ""))
    return notes


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))

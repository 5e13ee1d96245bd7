"""`export()`: weights -> a model folder of verified artifacts, their sidecars, and a manifest.

    <out>/<name>/
        <name>_<precision><suffix>        one file per artifact (+ companions: ncnn's .bin)
        <name>_<precision><suffix>.json   its sidecar: contract, source hash, toolchain versions, verification
        manifest.json                     every artifact with its figures; the backend layer resolves from it

Order of work: names, sizes and installed converters are checked first (a missing converter is reported before
minutes of conversion), then the output folder, then the weights; each artifact is converted, then verified
(export/verify.py), then described. A converter that fails is recorded and the others go on; at the end an
fp32 artifact that disagrees with PyTorch raises VerificationError and a failed conversion ConversionError, both
carrying the report (`exc.report`) after the manifest has been written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from edge_irst.contract import ModelContract, sidecar_path, write_sidecar
from edge_irst.errors import EdgeIrstError, InputError, VerificationError

from .calibration import calibration_frames, check_limit
from .formats import FORMATS, ONNX_HUB_REQUIRES, PRECISIONS, TORCH_REQUIRES, Format, check_requirements, parse_names
from .verify import Reference, Verification, verify_artifact

log = logging.getLogger("edge_irst.export")

MANIFEST = "manifest.json"
DEFAULT_OUT = Path("runs") / "export"


class ConversionError(EdgeIrstError, RuntimeError):
    """A converter that failed on the model; `report` holds what the other formats produced."""


@dataclass
class ArtifactResult:
    """One row of the manifest. files: names inside the model folder, the runtime's file first."""

    format: str
    precision: str
    backend: str
    files: list = field(default_factory=list)
    verified: bool = False
    max_abs_diff: Optional[float] = None
    mask_agreement: Optional[float] = None
    mask_iou_vs_fp32: Optional[float] = None
    size_bytes: int = 0
    convert_seconds: Optional[float] = None
    reason: Optional[str] = None
    status: str = "skipped"  # verified | UNVERIFIED | FAILED | skipped

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ExportReport:
    model: str
    folder: Path
    source: str
    source_sha256: str
    calibration: str
    artifacts: list = field(default_factory=list)

    def artifact(self, format: str, precision: str) -> ArtifactResult:
        return next(a for a in self.artifacts if a.format == format and a.precision == precision)

    def path(self, format: str, precision: str) -> Path:
        """The file a runtime opens for that artifact."""
        return self.folder / self.artifact(format, precision).files[0]

    @property
    def failures(self) -> list:
        return [a for a in self.artifacts if a.status == "FAILED"]

    def to_manifest(self) -> dict:
        return {"model": self.model, "source": self.source, "source_sha256": self.source_sha256,
                "calibration": self.calibration, "artifacts": [a.to_dict() for a in self.artifacts]}

    def table(self) -> str:
        """The human-readable summary: one row per artifact, then the reason of every row not verified."""
        header = ("format", "precision", "size", "max|diff|", "mask agree", "IoU vs fp32", "convert", "status")
        rows = [header]
        for a in self.artifacts:
            rows.append((a.format, a.precision, _kib(a.size_bytes) if a.files else "-",
                         _fmt(a.max_abs_diff, "{:.2e}"), _fmt(a.mask_agreement, "{:.3%}"),
                         _fmt(a.mask_iou_vs_fp32, "{:.4f}"), _fmt(a.convert_seconds, "{:.1f} s"), a.status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines += [f"{a.format}/{a.precision} {a.status}: {a.reason}" for a in self.artifacts if a.reason]
        lines.append(f"model folder: {self.folder} (verified on {self.calibration})")
        return "\n".join(lines)


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


def _parse_imgsz(imgsz: Union[int, str, Iterable[int]], stride: int) -> tuple[int, int]:
    """256 | "256" | "256,320" | (256, 320) -> (H, W), each a positive multiple of `stride`."""
    try:
        if isinstance(imgsz, str):
            values = [int(v) for v in imgsz.replace("x", ",").split(",")]
        elif isinstance(imgsz, int):
            values = [imgsz]
        else:
            values = [int(v) for v in imgsz]
    except ValueError:
        raise InputError(f"imgsz {imgsz!r} is not a size: pass one int (square) or H,W, e.g. 256 or 256,320") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or any(v <= 0 or v % stride for v in values):
        raise InputError(f"imgsz {imgsz!r}: H and W must be positive multiples of {stride} (the model's stride), "
                         f"e.g. 256 or 256,320")
    return values[0], values[1]


def _writable_folder(folder: Path) -> Path:
    """Create `folder` and prove a file can be written in it; InputError naming the folder otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".edge-irst-write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"cannot write the export folder {folder}: {exc.strerror or exc}; pass --out a folder "
                         f"you can write to") from exc
    return folder


_DISTRIBUTIONS: dict = {}


def _toolchain(fmt: Format) -> dict:
    """{distribution: version} of everything that made and checked this format's artifact."""
    if not _DISTRIBUTIONS:
        _DISTRIBUTIONS.update(importlib.metadata.packages_distributions())
    from edge_irst.backends import backend_class

    modules = list(TORCH_REQUIRES) + (list(ONNX_HUB_REQUIRES) if fmt.source == "onnx" else []) + list(fmt.requires)
    try:
        modules.append(backend_class(fmt.backend).runtime)
    except EdgeIrstError:
        pass  # no such backend in this edge-irst: the verification reason says so
    versions = {}
    for module in dict.fromkeys(modules):
        for dist in _DISTRIBUTIONS.get(module, [module]):
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[dist] = None
    from edge_irst import __version__

    versions["edge-irst"] = __version__
    return versions


def export(weights, formats: Union[str, Iterable[str]] = "onnx", precisions: Union[str, Iterable[str]] = "fp32",
           calib=None, imgsz: Union[int, str, Iterable[int]] = 256, dynamic: bool = False, out=DEFAULT_OUT,
           name: Optional[str] = None, threads: Optional[int] = None, calib_limit: int = 64,
           grey_input: bool = False) -> ExportReport:
    """Convert `weights` to every format x precision asked for, verify each artifact, write the model folder.

    weights: our checkpoint, a bare state dict, or the authors' LW_IRST.pkl (see models.load_checkpoint).
    formats / precisions: names or comma-separated strings (FORMATS; fp32, fp16, int8); a precision a format
    cannot write is recorded as skipped with the reason. calib: folder of calibration/verification images
    (default: the authors' sample frames when ../shared exists, else synthetic IR frames); at most `calib_limit`
    (>= 1) are used. imgsz: export size, an int or (H, W), multiples of the model stride. dynamic: symbolic H/W
    where the format allows (ONNX, ncnn, MNN, TFLite), verified at imgsz and at 320x480. out / name: the model
    folder is out/name (name defaults to the architecture). threads: CPU threads (>= 1) for torch (tracing, the
    reference logits) and for the runtimes during verification (None: each library's default). grey_input:
    artifacts that take the IR frame as one channel (models/grey_input.py: the RGB model's function on grey frames,
    checked against it on the calibration frames before any conversion).
    """
    fmt_names = parse_names(formats, FORMATS, "export format")
    precision_names = parse_names(precisions, PRECISIONS, "precision")
    check_limit(calib_limit)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads {threads!r}: expected a whole number >= 1, or None for each library's default")
    check_requirements(fmt_names)
    out = _writable_folder(Path(out))
    with _torch_threads(threads):
        return _export(weights, fmt_names, precision_names, calib, imgsz, dynamic, out, name, threads, calib_limit,
                       grey_input)


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]):
    """torch.set_num_threads(threads) for the duration, restored after. Why: on a 2-core machine shared with
    other work, torch's default (one thread per core) made one 5-frame forward pass take 8 s instead of 0.2 s
    (threads contending for busy cores), in tracing and in the reference logits alike."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _export(weights, fmt_names, precision_names, calib, imgsz, dynamic, out, name, threads,
            calib_limit, grey_input) -> ExportReport:
    from edge_irst.models import load_checkpoint

    loaded = load_checkpoint(weights)
    stride = loaded.contract.stride
    size = _parse_imgsz(imgsz, stride)
    name = name or loaded.architecture
    folder = _writable_folder(out / name)
    base = loaded.contract.replace(architecture=loaded.architecture, input_size=None if dynamic else size,
                                   source=Path(weights).name, source_sha256=loaded.sha256,
                                   provenance="edge-irst export")
    frames, origin = calibration_frames(Path(calib) if calib is not None else None, calib_limit)
    model, rgb_contract = loaded.model, base
    if grey_input:
        model, base = _grey_input(model, base)
    reference = Reference(model, frames, base)
    if grey_input:
        _check_grey_fold(loaded.model, rgb_contract, reference, size)
    log.info("exporting %s (%s, sha256 %s) to %s; calibration/verification on %s", name, weights,
             loaded.sha256[:12], folder, origin)
    report = ExportReport(name, folder, str(weights), loaded.sha256, origin)
    jobs = [(FORMATS[f], p) for f in fmt_names for p in precision_names]
    with tempfile.TemporaryDirectory(prefix="edge-irst-export-") as scratch:
        run = _Run(name, folder, base, size, dynamic, model, reference, threads,
                   _Hubs(model, Path(scratch), reference.batches(size)[0]))
        for index, (fmt, precision) in enumerate(jobs, 1):
            report.artifacts.append(run.export_one(fmt, precision, f"[{index}/{len(jobs)}] {fmt.name} {precision}"))
    _write_manifest(report)
    _raise_for_failures(report)
    return report


# How far the grey-input model may stray from the RGB one, relative to the largest |logit|: float32 rounding of the
# folded weights leaves a few 1e-6 of it (the bundled weights on 64 SIRST frames: 4.7e-6); a wrong fold is off by
# far more than 1e-4.
GREY_FOLD_TOLERANCE = 1e-4


def _grey_input(model, contract: ModelContract) -> tuple:
    """(the grey-input model, its contract): one GRAY channel, pixel * scale, no mean or deviation."""
    from edge_irst.models import fold_grey_input

    if contract.channels != 3:
        raise InputError(f"--grey-input folds an RGB/BGR model's three channels into one; this model's contract is "
                         f"already {contract.channel_order}")
    grey = fold_grey_input(model, contract.mean, contract.std)
    return grey, contract.replace(channel_order="GRAY", mean=(0.0,), std=(1.0,),
                                  extra={**contract.extra, "grey_input": _grey_note(contract)})


def _check_grey_fold(rgb_model, rgb_contract: ModelContract, reference: Reference, size) -> None:
    """The grey-input model's logits on the verification frames (`reference`, which keeps them for verifying the
    artifacts) against the RGB model's on the same grey frames replicated, before any conversion: a wrong fold is
    an error here rather than artifacts verified against the wrong reference."""
    import torch

    mean = torch.tensor(rgb_contract.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(rgb_contract.std, dtype=torch.float32).view(1, -1, 1, 1)
    worst = 0.0
    with torch.no_grad():
        for plane, got in zip(reference.batches(size), reference.logits(size)):  # [1, 1, H, W] and [1, H, W]
            expected = rgb_model((torch.from_numpy(plane) - mean) / std)[0].numpy()
            worst = max(worst, float(np.abs(expected - got).max() / max(float(np.abs(expected).max()), 1e-6)))
    if worst > GREY_FOLD_TOLERANCE:
        raise VerificationError(f"grey input: the folded model differs from the RGB model by {worst:.2e} of the "
                                f"largest logit on the calibration frames (allowed {GREY_FOLD_TOLERANCE:.0e})")
    log.info("grey input: folded model within %.1e of the RGB model's largest logit on %d frames", worst,
             len(reference.frames))


def _grey_note(contract: ModelContract) -> str:
    return (f"one channel, the frame's grey level * scale; the {contract.channel_order} model's normalisation "
            f"(mean {list(contract.mean)}, std {list(contract.std)}) and stem BatchNorm folded into the stem "
            f"(models/grey_input.py)")


def _raise_for_failures(report: ExportReport) -> None:
    """VerificationError when an fp32 artifact was written but disagrees with PyTorch (or its runtime refuses
    it), else ConversionError when a converter failed; the message lists every failed artifact."""
    if not report.failures:
        return
    summary = "; ".join(f"{a.format}/{a.precision}: {a.reason}" for a in report.failures)
    disagreeing = [a for a in report.failures if a.files]
    error = (VerificationError if disagreeing else ConversionError)(
        f"export of {report.model} failed ({len(report.failures)} of {len(report.artifacts)} artifacts): {summary}. "
        f"The manifest in {report.folder} marks them unverified")
    error.report = report
    raise error


class _Hubs:
    """The fp32 ONNX files that ONNX and MNN artifacts derive from: one per input size (None: dynamic H/W),
    each exported at most once per export() call, into a scratch folder."""

    def __init__(self, model, folder: Path, example):
        self.model, self.folder, self.example = model, folder, example
        self._done: dict = {}  # input_size -> the hub's path, or the exception its export raised

    def get(self, contract: ModelContract) -> tuple[Path, float]:
        """(hub path, seconds spent exporting it in this call: 0 when it already existed)."""
        key = contract.input_size
        if key in self._done:
            if isinstance(self._done[key], BaseException):
                raise self._done[key]
            return self._done[key], 0.0
        from .to_onnx import onnx_from_torch

        path = self.folder / ("hub_dynamic.onnx" if key is None else "hub_{}x{}.onnx".format(*key))
        start = time.perf_counter()
        try:
            onnx_from_torch(self.model, contract, path, self.example)
        except Exception as exc:
            self._done[key] = exc
            raise
        self._done[key] = path
        return path, time.perf_counter() - start


@dataclass
class _Run:
    """What every artifact of one export() call shares."""

    name: str
    folder: Path
    base: ModelContract  # input_size None when --dynamic
    size: tuple  # (H, W) of tracing, calibration and verification
    dynamic: bool
    model: object  # the eval-mode PyTorch module
    reference: Reference
    threads: Optional[int]
    hubs: _Hubs

    def export_one(self, fmt: Format, precision: str, prefix: str) -> ArtifactResult:
        """Convert, verify and describe one artifact; a converter's failure is recorded, not raised."""
        result = ArtifactResult(fmt.name, precision, fmt.backend)
        if precision not in fmt.precisions:
            result.reason = fmt.unsupported.get(precision, f"{fmt.name} does not write {precision}")
            log.info("%s: skipped (%s)", prefix, result.reason)
            return result
        contract = self.base if fmt.dynamic else self.base.replace(input_size=self.size)
        if self.dynamic and not fmt.dynamic:
            log.warning("%s: %s artifacts take a fixed size; exported at %dx%d", prefix, fmt.name, *self.size)
        calib_batches = self.reference.batches(self.size)
        target = self.folder / f"{self.name}_{precision}{fmt.suffix}"
        # An earlier run's artifact under this name goes first: if this conversion fails, it must not stay behind
        # with its sidecar still saying "verified" for other weights (the loader would open it).
        for stale in [target, *(target.with_suffix(c) for c in fmt.companions), sidecar_path(target)]:
            stale.unlink(missing_ok=True)
        log.info("%s: converting ...", prefix)
        start = time.perf_counter()
        hub_seconds = 0.0
        try:
            if fmt.source == "onnx":
                source, hub_seconds = self.hubs.get(contract)
            else:
                source = self.model
            path, contract = fmt.load_converter()(source, contract, target, precision, calib_batches)
        except Exception as exc:  # recorded (a missing dependency keeps its install hint); the others go on
            result.status, result.reason = "FAILED", f"conversion failed: {type(exc).__name__}: {exc}"
            result.convert_seconds = time.perf_counter() - start
            log.error("%s: %s", prefix, result.reason)
            return result
        result.convert_seconds = time.perf_counter() - start
        files = [Path(path)] + [Path(path).with_suffix(c) for c in fmt.companions]
        result.files = [f.name for f in files]
        result.size_bytes = sum(f.stat().st_size for f in files)
        note = f" (includes {hub_seconds:.1f} s exporting the fp32 ONNX it derives from)" if hub_seconds else ""
        log.info("%s: wrote %s (%s) in %.1f s%s; verifying with %s on %d frames", prefix, result.files[0],
                 _kib(result.size_bytes), result.convert_seconds, note, fmt.backend, len(calib_batches))
        check = verify_artifact(Path(path), fmt.backend, precision, contract, self.reference, self.size,
                                self.threads)
        _record(result, check, precision)
        write_sidecar(path, contract, format=fmt.name, precision=precision, files=result.files,
                      source=self.base.source, source_sha256=self.base.source_sha256, toolchain=_toolchain(fmt),
                      convert_seconds=round(result.convert_seconds, 3), verification=check.to_dict())
        log.info("%s: %s%s", prefix, result.status, f" ({result.reason})" if result.reason else "")
        return result


def _record(result: ArtifactResult, check: Verification, precision: str) -> None:
    result.verified, result.reason = check.verified, check.reason
    result.max_abs_diff, result.mask_agreement = check.max_abs_diff, check.mask_agreement
    result.mask_iou_vs_fp32 = check.mask_iou_vs_fp32
    if check.verified:
        result.status = "verified"
    elif check.ran and precision == "fp32":
        result.status = "FAILED"  # an fp32 artifact that disagrees with PyTorch, or that its runtime refuses
    else:
        result.status = "UNVERIFIED"


def _write_manifest(report: ExportReport) -> Path:
    path = report.folder / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report.to_manifest(), indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a manifest
    return path

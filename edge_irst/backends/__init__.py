"""Backend registry and artifact resolution.

    backend = load_backend("lw_irstnet.onnx", threads=2)        # backend inferred from the file
    backend = load_backend("exported/", backend="ncnn")          # a model folder written by the exporter
    logits = backend.run(batch)                                  # float32 [N,C,H,W] -> float32 [N,1,H,W]

Each runtime lives in its own module, imported the first time its name is used, so `import edge_irst.backends`
costs nothing and a missing runtime only matters to whoever asks for it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from pathlib import Path
from typing import Optional

from edge_irst.contract import ModelContract
from edge_irst.errors import ModelFileError, UnknownNameError

from .base import Backend, BackendClosedError, BackendOptions, TensorSpec, physical_cores

# name -> (module, class), in preference order (the first installed one wins where nothing is asked for).
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("edge_irst.backends.onnxruntime", "OnnxRuntimeBackend"),
    "opencv": ("edge_irst.backends.opencv", "OpenCVBackend"),
    "ncnn": ("edge_irst.backends.ncnn", "NcnnBackend"),
    "mnn": ("edge_irst.backends.mnn", "MnnBackend"),
    "tflite": ("edge_irst.backends.tflite", "TFLiteBackend"),
    "torch": ("edge_irst.backends.torch", "TorchBackend"),
}

MANIFEST = "manifest.json"
AUTO_THREADS = "auto"  # load_backend(threads="auto"): measured at load time (thread_choice.py)
PRECISIONS = ("fp32", "fp16", "int8")


def list_backends() -> list[str]:
    return list(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The class registered as `name` (imports its module, not its runtime)."""
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, BACKENDS)
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def backend_status() -> list[dict]:
    """One row per registered backend: name, installed, version, accelerators it can see, reason if unusable."""
    rows = []
    for name in BACKENDS:
        cls = backend_class(name)
        row = {"name": name, "installed": cls.installed(), "version": None, "accelerators": [], "reason": None,
               "formats": list(cls.suffixes), "extra": cls.extra}
        if not row["installed"]:
            row["reason"] = f"{cls.runtime} not installed: {cls.install_hint()}"
        else:
            try:
                row.update(cls.probe())
            except Exception as exc:  # a broken install must not hide the other rows
                row["installed"], row["reason"] = False, f"{cls.runtime} fails to import: {type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def _backends_for_suffix(suffix: str) -> list[str]:
    return [name for name in BACKENDS if suffix in backend_class(name).suffixes]


def _all_suffixes() -> list[str]:
    return sorted({s for name in BACKENDS for s in backend_class(name).suffixes})


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelFileError(f"{folder} is a folder without {MANIFEST}: pass an artifact file, or a model folder "
                             f"written by `edge-irst export`")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("artifacts"), list):
        raise ModelFileError(f"{path}: expected an object with an 'artifacts' list")
    return doc


def _source_checkpoint(folder: Path, manifest: dict, suffixes: tuple) -> Optional[Path]:
    """The checkpoint the folder's artifacts were exported from, if it is kept in the folder: a file with one of
    `suffixes` whose SHA-256 is the manifest's source_sha256 (`make bundle` copies it in under the model's name).
    The exporter lists only the files it wrote, yet this one is the fp32 reference every artifact was verified
    against, so it needs no entry of its own; the hash, not the name, says it is that file."""
    expected = manifest.get("source_sha256")
    if not isinstance(expected, str):
        return None
    for path in sorted(folder.iterdir()):
        if path.suffix in suffixes and path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() == expected:
                return path
    return None


def _from_folder(folder: Path, backend: Optional[str], precision: Optional[str],
                 allow_unverified: bool) -> tuple[Path, str]:
    manifest = _read_manifest(folder)
    precision = precision or "fp32"
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    candidates = [backend] if backend else [n for n in BACKENDS if backend_class(n).installed()]
    for name in candidates:
        suffixes = backend_class(name).suffixes
        for entry in manifest["artifacts"]:
            files = [f for f in entry.get("files", []) if Path(f).suffix in suffixes]
            if not files:
                continue
            if entry.get("precision", "fp32") != precision or not (entry.get("verified") or allow_unverified):
                continue
            path = folder / files[0]
            if Path(files[0]).is_absolute() or ".." in Path(files[0]).parts:
                raise ModelFileError(f"{folder / MANIFEST} lists {files[0]!r}: artifact files must be relative "
                                     f"paths inside the model folder")
            if not path.is_file():
                raise ModelFileError(f"{folder / MANIFEST} lists {files[0]}, which is missing from {folder}")
            return path, name
        checkpoint = _source_checkpoint(folder, manifest, suffixes) if precision == "fp32" else None
        if checkpoint is not None:
            return checkpoint, name
    wanted = f"backend {backend!r}" if backend else f"any installed backend ({', '.join(candidates) or 'none'})"
    has = [f"{e.get('format')}/{e.get('precision')}{'' if e.get('verified') else ' (unverified)'}"
           for e in manifest["artifacts"]]
    checkpoint = _source_checkpoint(folder, manifest, tuple(_all_suffixes()))
    if checkpoint is not None:
        has.append(f"the source checkpoint {checkpoint.name} (fp32)")
    raise ModelFileError(
        f"{folder}: no {'' if allow_unverified else 'verified '}{precision} artifact for {wanted}; the folder has: "
        f"{', '.join(has) or 'no artifacts'} (ask for another artifact precision or backend, or "
        f"allow_unverified=True)")


def resolve_artifact(path, backend: Optional[str] = None, precision: Optional[str] = None,
                     allow_unverified: bool = False) -> tuple[Path, str]:
    """(artifact file, backend name) for a file or an exporter's model folder.

    A file: its suffix names the default backend (.onnx -> onnxruntime, .param -> ncnn, .mnn -> mnn, .tflite ->
    tflite, .pt/.pth/.pkl -> torch); a named backend must read that suffix. A folder: its manifest's artifact for
    the backend (default: the first installed one in preference order that has one) at `precision` (default fp32),
    verified ones only unless `allow_unverified`; for fp32, also the source checkpoint kept in the folder (the
    manifest's source_sha256), which the torch backend reads.
    """
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise UnknownNameError("backend", backend, BACKENDS)
    if path.is_dir():
        return _from_folder(path, backend, precision, allow_unverified)
    if not path.exists():
        raise ModelFileError(f"artifact not found: {path}")
    suffix = path.suffix.lower()
    readers = _backends_for_suffix(suffix)
    if not readers:
        hint = " (an ncnn model is opened by its .param; the .bin must sit beside it)" if suffix == ".bin" else ""
        raise ModelFileError(f"{path}: unknown artifact type {suffix or '(no suffix)'!r}{hint}; accepted: "
                             f"{', '.join(_all_suffixes())} or a model folder with {MANIFEST}")
    if backend is None:
        return path, readers[0]
    if backend not in readers:
        raise ModelFileError(f"{path}: the {backend} backend cannot read {suffix} files (it reads "
                             f"{', '.join(backend_class(backend).suffixes)}); use backend {' or '.join(readers)} "
                             f"or an artifact in {backend}'s format")
    return path, backend


def load_backend(artifact, backend: Optional[str] = None, options: Optional[BackendOptions] = None,
                 contract: Optional[ModelContract] = None, *, artifact_precision: Optional[str] = None,
                 allow_unverified: bool = False, **option_overrides) -> Backend:
    """Load `artifact` (a file or a model folder) on `backend` (default: inferred) and return it ready to run.

    options: BackendOptions; option_overrides (threads=, device=, delegate=, fallback=, precision=, spin=, ...)
    replace fields of it, None values ignored so unset CLI flags keep the defaults. threads="auto" loads the
    artifact once per candidate thread count, times them and keeps the fastest (thread_choice.py; what it
    measured is in options_in_effect()["threads_auto"]). `precision` is what the
    runtime computes in (fp16/bf16 on ncnn, MNN's modes); `artifact_precision` (fp32/fp16/int8) picks which
    stored artifact of a model folder is loaded. contract: overrides the artifact's own (sidecar JSON, ONNX
    metadata, else AUTHORS_CONTRACT).
    """
    overrides = {k: v for k, v in option_overrides.items() if v is not None}
    for key in overrides:
        if key not in BackendOptions.names():
            raise UnknownNameError("backend option", key, BackendOptions.names())
    measure_threads = overrides.get("threads") == AUTO_THREADS
    if measure_threads:
        del overrides["threads"]
    options = dataclasses.replace(options or BackendOptions(), **overrides)
    path, name = resolve_artifact(artifact, backend, artifact_precision, allow_unverified)

    def open_backend(threads: Optional[int]) -> Backend:
        chosen = options if threads is None else dataclasses.replace(options, threads=threads)
        instance = backend_class(name)(path, chosen, contract)
        try:
            instance.warm_up(chosen.warmup)
        except BaseException:
            instance.close()
            raise
        return instance

    if measure_threads:
        from .thread_choice import load_fastest

        return load_fastest(open_backend)
    return open_backend(None)

__all__ = ["AUTO_THREADS", "Backend", "BackendClosedError", "BackendOptions", "TensorSpec", "BACKENDS",
           "backend_class", "backend_status", "list_backends", "load_backend", "physical_cores", "resolve_artifact"]

"""The FORMATS table: every export target, what converts it, what verifies it, and what installs it.

The table drives the CLI's validation and `--help`, the dependency check done before anything is converted, and
the dispatch in `export()`. A converter is named as "module:function" and imported only when its format is
asked for, so reading the table costs nothing.

Every converter has one signature:
    convert(source, contract, out_path, precision, calib_batches) -> (written path, the artifact's contract)
where `source` is the eval-mode PyTorch model (source "torch") or the path of the fp32 ONNX that every
ONNX-derived artifact starts from (source "onnx"), `calib_batches` is a list of float32
NCHW [1, C, H, W] arrays preprocessed with `contract`, and the returned contract says what the artifact really
takes (its layout, tensor names, precision).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

from edge_irst.errors import InputError, MissingDependencyError, UnknownNameError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Format:
    """One export target.

    suffix: the file a runtime opens. companions: suffixes of files that must sit beside it (ncnn's .bin).
    converter: "module:function". source: "torch" or "onnx" (what the converter's first argument is).
    precisions: the precisions it writes. unsupported: precision -> why it cannot (reported, never silently
    dropped). extra: the pip extra that installs the converter. requires: modules the converter imports, checked
    before any conversion starts. backend: the runtime that verifies the artifact. dynamic: whether the artifact
    can take symbolic H/W (else --dynamic exports it at --imgsz).
    """

    name: str
    suffix: str
    converter: str
    source: str
    precisions: tuple[str, ...]
    extra: str
    requires: tuple[str, ...]
    backend: str
    dynamic: bool
    description: str
    companions: tuple[str, ...] = ()
    unsupported: dict = field(default_factory=dict)

    def load_converter(self) -> Callable:
        module, function = self.converter.split(":")
        return getattr(importlib.import_module(module), function)


# What every export needs (the PyTorch model), and what producing the fp32 ONNX hub needs.
TORCH_REQUIRES = ("torch",)
ONNX_HUB_REQUIRES = ("torch", "onnxscript", "onnx", "onnxslim")

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", "edge_irst.export.to_onnx:convert_onnx", "onnx", PRECISIONS, "export",
           ("onnx", "onnxruntime"), "onnxruntime", True,
           "ONNX opset 18, contract in metadata_props; fp16 keeps float32 I/O; int8 = static QDQ, per-channel"),
    Format("ncnn", ".param", "edge_irst.export.to_ncnn:convert_ncnn", "torch", PRECISIONS, "export",
           ("pnnx", "ncnn"), "ncnn", True,
           "ncnn .param/.bin through pnnx (fp32 or fp16 weights; int8 = int8 Convolutions, min-max calibrated)",
           companions=(".bin",)),
    Format("mnn", ".mnn", "edge_irst.export.to_mnn:convert_mnn", "onnx", PRECISIONS, "export", ("MNN",),
           "mnn", True, "MNN from the fp32 ONNX (fp16 weights; int8 = weight-only int8, float compute)"),
    Format("tflite", ".tflite", "edge_irst.export.to_tflite:convert_tflite", "torch", PRECISIONS, "export",
           ("tensorflow",), "tflite", True, "TFLite, NHWC-native (int8 = full-integer, int8 I/O)"),
)}


def parse_names(value: Union[str, Iterable[str]], valid: Iterable[str], kind: str) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (order kept, duplicates dropped); UnknownNameError for any other name."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = []
    valid = list(valid)
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        if item not in valid:
            raise UnknownNameError(kind, item, valid)
        if item not in names:
            names.append(item)
    if not names:
        raise InputError(f"no {kind} given; choose from {', '.join(valid)}")
    return names


def check_requirements(formats: Iterable[str]) -> None:
    """MissingDependencyError for the first module a requested format's converter needs and cannot import.

    Checked with find_spec (nothing is imported) so a missing converter is reported before minutes of work.
    """
    formats = [FORMATS[f] for f in formats]
    needed: dict[str, str] = {module: "export" for module in TORCH_REQUIRES}
    if any(f.source == "onnx" for f in formats):
        needed.update({module: "export" for module in ONNX_HUB_REQUIRES})
    for fmt in formats:
        needed.update({module: fmt.extra for module in fmt.requires})
    for module, extra in needed.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that fails to import, or a blocked module
            found = False
        if not found:
            users = [f.name for f in formats if module in f.requires] or ["every format"]
            raise MissingDependencyError(f"{module} (needed to export {', '.join(users)})", extra)


def format_help() -> str:
    """One line per format for `edge-irst export --help`."""
    lines = []
    for fmt in FORMATS.values():
        missing = "".join(f"; no {p}: {why}" for p, why in fmt.unsupported.items())
        lines.append(f"  {fmt.name:<7} {','.join(fmt.precisions):<15} [{fmt.extra}] {fmt.description}{missing}")
    return "\n".join(lines)

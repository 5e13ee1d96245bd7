"""The model contract: everything a runtime must know to feed an artifact and read its output.

It travels with every artifact (ONNX `metadata_props` key ``edge_irst.contract`` and a sidecar
``<artifact>.json``). Artifacts that carry none (the authors' published files) get `AUTHORS_CONTRACT`, the
documented default: 3-channel RGB, bilinear resize to 256x256, /255, ImageNet mean/std, NCHW, logits > 0.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .errors import ModelFileError

CONTRACT_KEY = "edge_irst.contract"
SIDECAR_SUFFIX = ".json"
CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class ModelContract:
    """Preprocessing and output conventions of one model artifact.

    input_size: (H, W) the artifact was exported for, or None when H and W are dynamic (multiples of `stride`).
    channel_order: "RGB" (frames are read as BGR by OpenCV and converted), "BGR" (a model trained on OpenCV's
    order: frames are not converted) or "GRAY" (one channel).
    scale, mean, std: tensor = (pixel * scale - mean) / std per channel, in `channel_order`.
    threshold: a pixel is target where logit > threshold (on logits, never on a sigmoid probability).
    """

    architecture: str = "lw_irstnet"
    input_name: str = "input"
    output_name: str = "output"
    input_size: Optional[tuple[int, int]] = (256, 256)
    layout: str = "NCHW"
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resize_interpolation: str = "bilinear"
    output_kind: str = "logits"
    threshold: float = 0.0
    stride: int = 8
    precision: str = "fp32"
    source: str = ""
    source_sha256: str = ""
    provenance: str = "edge-irst"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.channel_order not in CHANNEL_ORDERS:
            raise ModelFileError(f"model contract: channel_order {self.channel_order!r} is not one of "
                                f"{', '.join(CHANNEL_ORDERS)}")

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "GRAY" else 3

    @property
    def dynamic(self) -> bool:
        return self.input_size is None

    def replace(self, **changes) -> "ModelContract":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, where: str = "model contract") -> "ModelContract":
        """A contract from its JSON form, every field checked for type and range: a ModelFileError naming `where`
        (the sidecar file, the ONNX metadata key, the checkpoint) and the field, never a raw TypeError or a
        contract that would feed the model garbage (a 3-value size, 2 means for 3 channels, stride 0)."""
        if not isinstance(d, dict):
            raise ModelFileError(f"{where}: the contract must be a JSON object, got {_json_type(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        kw = {k: v for k, v in d.items() if k in known}
        for key, value in kw.items():
            kw[key] = _FIELD_CHECKS[key](value, f"{where}: field {key!r}")
        order = kw.get("channel_order", cls.channel_order)
        channels = 1 if order == "GRAY" else 3
        for key in ("mean", "std"):
            count = len(kw.get(key, getattr(cls, key)))
            if count != channels:
                raise ModelFileError(f"{where}: field {key!r} has {count} value(s), but channel_order {order!r} "
                                     f"has {channels} channel(s): one value per channel")
        if unknown:  # newer writers may add fields: keep them visible rather than dropping them silently
            kw["extra"] = {**kw.get("extra", {}), **{k: d[k] for k in unknown}}
        return cls(**kw)


def _json_type(value) -> str:
    """How JSON names the type of a decoded value (for messages about a file)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r:.40})"


def _number(value, where: str, positive: bool = False) -> float:
    """A finite JSON number (bool excluded), > 0 where `positive`."""
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range (JSON allows any number of digits)
            pass
    if not math.isfinite(number):
        raise ModelFileError(f"{where} must be a finite number, got {_json_type(value)}")
    if positive and number <= 0:
        raise ModelFileError(f"{where} must be > 0, got {value!r}")
    return number


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelFileError(f"{where} must be a positive integer, got {_json_type(value)}")
    return value


def _numbers(value, where: str, positive: bool = False) -> tuple[float, ...]:
    """A non-empty JSON array of finite numbers (per channel)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ModelFileError(f"{where} must be an array of numbers (one per channel), got {_json_type(value)}")
    return tuple(_number(v, f"{where}[{i}]", positive) for i, v in enumerate(value))


def _input_size(value, where: str) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ModelFileError(f"{where} must be null (dynamic) or [height, width], got {_json_type(value)}")
    return tuple(_positive_int(v, f"{where}[{i}]") for i, v in enumerate(value))


def _one_of(choices: tuple[str, ...]) -> Callable:
    def check(value, where: str) -> str:
        if value not in choices:
            raise ModelFileError(f"{where} must be one of {', '.join(choices)}, got {_json_type(value)}")
        return value
    return check


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise ModelFileError(f"{where} must be a string, got {_json_type(value)}")
    return value


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ModelFileError(f"{where} must be an object, got {_json_type(value)}")
    return value


# field -> check(value, where) returning the value in the dataclass's own type.
_FIELD_CHECKS: dict[str, Callable] = {
    "architecture": _text, "input_name": _text, "output_name": _text, "input_size": _input_size,
    "layout": _one_of(LAYOUTS), "channel_order": _one_of(CHANNEL_ORDERS),
    "scale": lambda value, where: _number(value, where, positive=True),
    "mean": _numbers, "std": lambda value, where: _numbers(value, where, positive=True),
    "resize_interpolation": _text, "output_kind": _text, "threshold": _number, "stride": _positive_int,
    "precision": _text, "source": _text, "source_sha256": _text, "provenance": _text, "extra": _object,
}


AUTHORS_CONTRACT = ModelContract(provenance="authors' default (no contract in the artifact)")


def sidecar_path(artifact: str | Path) -> Path:
    """`model.onnx` -> `model.onnx.json`; for ncnn pairs the sidecar sits beside the .param."""
    return Path(str(artifact) + SIDECAR_SUFFIX)


def read_sidecar(artifact: str | Path) -> Optional[dict]:
    """The whole sidecar document (contract + export report), or None when there is none."""
    path = sidecar_path(artifact)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"sidecar {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelFileError(f"sidecar {path}: expected a JSON object with a 'contract' object, got "
                             f"{_json_type(doc)}")
    return doc


def sidecar_contract(artifact: str | Path) -> Optional[ModelContract]:
    """The contract of the artifact's sidecar, checked field by field; None without a sidecar or contract."""
    doc = read_sidecar(artifact)
    if doc is None or "contract" not in doc:
        return None
    return ModelContract.from_dict(doc["contract"], f"sidecar {sidecar_path(artifact)}")


def write_sidecar(artifact: str | Path, contract: ModelContract, **report) -> Path:
    path = sidecar_path(artifact)
    doc = {"contract": contract.to_dict(), **report}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return path


def onnx_metadata_contract(metadata: dict) -> Optional[ModelContract]:
    """Contract from an artifact's embedded metadata (ONNX metadata_props, TFLite metadata) as {key: value}, or None."""
    raw = metadata.get(CONTRACT_KEY)
    if not raw:
        return None
    where = f"the artifact's embedded metadata {CONTRACT_KEY!r}"
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{where} is not valid JSON: {exc}") from exc
    return ModelContract.from_dict(doc, where)


def resolve_contract(artifact: str | Path, metadata: Optional[dict] = None) -> tuple[ModelContract, str]:
    """(contract, where it came from): the sidecar JSON first, then embedded metadata, else the authors'
    default. The origin names the file or key, for messages about a contract that contradicts the artifact."""
    found = sidecar_contract(artifact)
    if found is not None:
        return found, f"sidecar {sidecar_path(artifact)}"
    if metadata:
        found = onnx_metadata_contract(metadata)
        if found is not None:
            return found, f"the contract embedded in {Path(artifact).name} ({CONTRACT_KEY!r})"
    return AUTHORS_CONTRACT, "the authors' default contract (the artifact carries none)"


def contract_for(artifact: str | Path, metadata: Optional[dict] = None) -> ModelContract:
    """Resolve an artifact's contract: sidecar JSON first, then embedded metadata, else the authors' default."""
    return resolve_contract(artifact, metadata)[0]

"""The model contract: everything a runtime must know to feed an artifact and read its output.

It travels with every artifact (ONNX `metadata_props` key ``edge_irst.contract`` and a sidecar
``<artifact>.json``). Artifacts that carry none (the authors' published files) get `AUTHORS_CONTRACT`, the
documented default: 3-channel RGB, bilinear resize to 256x256, /255, ImageNet mean/std, NCHW, logits > 0.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import ModelFileError

CONTRACT_KEY = "edge_irst.contract"
SIDECAR_SUFFIX = ".json"
CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")


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
    def from_dict(cls, d: dict) -> "ModelContract":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("input_size") is not None:
            kw["input_size"] = tuple(int(v) for v in kw["input_size"])
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
        if unknown:  # newer writers may add fields: keep them visible rather than dropping them silently
            kw["extra"] = {**kw.get("extra", {}), **{k: d[k] for k in unknown}}
        return cls(**kw)


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
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"sidecar {path} is not valid JSON: {exc}") from exc


def write_sidecar(artifact: str | Path, contract: ModelContract, **report) -> Path:
    path = sidecar_path(artifact)
    doc = {"contract": contract.to_dict(), **report}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return path


def onnx_metadata_contract(metadata: dict) -> Optional[ModelContract]:
    """Contract from an ONNX model's metadata_props (as a {key: value} dict), or None."""
    raw = metadata.get(CONTRACT_KEY)
    if not raw:
        return None
    try:
        return ModelContract.from_dict(json.loads(raw))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFileError(f"ONNX metadata {CONTRACT_KEY!r} is not a valid contract: {exc}") from exc


def contract_for(artifact: str | Path, metadata: Optional[dict] = None) -> ModelContract:
    """Resolve an artifact's contract: sidecar JSON first, then embedded metadata, else the authors' default."""
    doc = read_sidecar(artifact)
    if doc and "contract" in doc:
        return ModelContract.from_dict(doc["contract"])
    if metadata:
        found = onnx_metadata_contract(metadata)
        if found is not None:
            return found
    return AUTHORS_CONTRACT

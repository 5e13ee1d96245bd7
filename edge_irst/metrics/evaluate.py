"""The dataset-level evaluation loop, shared by `edge-irst eval` (saved predictions or a model) and training
validation.

The loop consumes `EvalItem`s (stem, label, prediction map, kind); where the predictions come from is the
caller's business: `prediction_folder()` reads saved maps, a model pipeline supplies a `predict_fn`.

    from edge_irst.datasets import IrstdDataset
    from edge_irst.metrics import evaluate, prediction_folder
    report = evaluate(IrstdDataset("../shared/data/sirst", "idx_427/test.txt"), prediction_folder("preds/"))
    print(report.table())
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np

from ..errors import InputError
from ..progress import Progress
from .base import Metric, jsonable
from .inputs import Frame, make_frame, read_map, single_map
from .irstd import IrstdMetrics, IrstdResult

PREDICTION_SUFFIXES = (".npy", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class EvalItem:
    """One image to evaluate.

    label: HxW (or HxWxC) label, any non-zero pixel is target.
    prediction: HxW map at the label's resolution (see `resize_labels`): probabilities in [0, 1], 8-bit /
        16-bit probability images, 0/1 masks, or logits.
    kind: "logits", "probabilities" or "mask" as declared (an integer map declared "probabilities" is read as
        levels even where its maximum is 1), or None: read from the map (edge_irst.metrics.inputs).
    image: optional HxW grey or HxWx3 BGR frame, for metrics that look at intensities (mNoCoAP).
    """

    stem: str
    label: np.ndarray
    prediction: np.ndarray
    kind: Optional[str] = None
    image: Optional[np.ndarray] = None


# predict_fn(sample, image) -> (prediction map, kind); sample is an edge_irst.datasets.Sample, image as stored
PredictFn = Callable[[object, np.ndarray], tuple]


@dataclass
class EvaluationReport:
    """What a dataset evaluation produced: one result per metric, and what happened to the data on the way."""

    results: dict  # metric name -> its result object (IrstdResult, BoxAPResult, NoCoAPResult)
    stems: list = field(default_factory=list)
    size_mismatches: list = field(default_factory=list)  # dicts: stem, image_shape, mask_shape, action
    labels_resized: list = field(default_factory=list)  # stems whose label was resized to the prediction
    repeated_stems: list = field(default_factory=list)  # stems the split listed more than once (evaluated once)

    @property
    def images(self) -> int:
        return len(self.stems)

    def table(self, per_distance: bool = False) -> str:
        parts = []
        for result in self.results.values():
            parts.append(result.table(per_distance) if isinstance(result, IrstdResult) else result.table())
        if self.labels_resized:
            parts.append(f"labels resized (centre-aligned nearest) to the prediction size: "
                         f"{len(self.labels_resized)} images")
        if self.repeated_stems:
            parts.append(f"stems listed more than once in the split, each evaluated once: "
                         f"{len(self.repeated_stems)} ({', '.join(self.repeated_stems[:5])})")
        if self.size_mismatches:
            parts.append("mask/image size mismatches (dataset rule: same aspect -> nearest resize, else skip):")
            parts += [f"  {m['stem']}: image {m['image_shape']}, mask -> {m['mask_shape']}: {m['action']}"
                      for m in self.size_mismatches]
        return "\n".join(parts)

    def to_dict(self) -> dict:
        return {"images": self.images, "results": {name: r.to_dict() for name, r in self.results.items()},
                "size_mismatches": jsonable(self.size_mismatches), "labels_resized": list(self.labels_resized),
                "repeated_stems": list(self.repeated_stems), "stems": list(self.stems)}


def evaluate_items(items: Iterable[EvalItem], metrics: Optional[Sequence[Metric]] = None, *,
                   total: Optional[int] = None, resize_labels: bool = False, chunk: int = 32,
                   progress: Optional[bool] = None) -> EvaluationReport:
    """Feed every item to every metric (in chunks, so a metric's thread pool sees several images at once).

    metrics: metric objects (default: one IrstdMetrics()); they are reset first.
    resize_labels: a label whose size differs from its prediction is resized to it (centre-aligned
        nearest-neighbour, as PIL's NEAREST), the authors' LW-IRSTNet protocol at 256x256; without it a size
        difference is an error.
    progress: a bar on stderr; None draws it only when stderr is a TTY.
    """
    metrics = list(metrics) if metrics is not None else [IrstdMetrics()]
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise InputError(f"two metrics share a name among {names}: pass one metric of each kind")
    for metric in metrics:
        metric.reset()
    stems, resized, frames = [], [], []
    bar = Progress(total, desc="eval", enabled=progress)

    def flush():
        for metric in metrics:
            metric.add_frames(frames)
        bar.update(len(frames))
        frames.clear()

    try:
        for item in items:
            frames.append(_frame(item, resize_labels, resized))
            stems.append(item.stem)
            if len(frames) >= chunk:
                flush()
        if frames:
            flush()
    finally:
        bar.close()
    if not stems:
        raise InputError("nothing to evaluate: the dataset yielded no image with a label")
    return EvaluationReport({m.name: m.get() for m in metrics}, stems, labels_resized=resized)


def evaluate(dataset, predict_fn: PredictFn, metrics: Optional[Sequence[Metric]] = None, *,
             resize_labels: bool = False, with_images: bool = False, chunk: int = 32,
             progress: Optional[bool] = None) -> EvaluationReport:
    """Evaluate predict_fn on an `edge_irst.datasets.IrstdDataset` (or anything with `samples`, `load(i)` and
    `size_mismatches`, and optionally `repeated_stems`). Samples whose mask the dataset skipped (size rule) are left
    out and listed; so are the stems its split repeated (each evaluated once).

    predict_fn(sample, image) -> (prediction map, kind): image as stored (uint8 HxW / HxWx3 BGR); the map must be
    at the mask's resolution unless resize_labels. with_images: pass the frames on (needed by NoCoAP).
    """
    report = evaluate_items(dataset_items(dataset, predict_fn, with_images), metrics, total=len(dataset.samples),
                            resize_labels=resize_labels, chunk=chunk, progress=progress)
    report.size_mismatches = [dict(stem=m.stem, image_shape=list(m.image_shape),
                                   mask_shape=None if m.mask_shape is None else list(m.mask_shape), action=m.action)
                              for m in dataset.size_mismatches]
    report.repeated_stems = list(getattr(dataset, "repeated_stems", []))
    return report


def dataset_items(dataset, predict_fn: PredictFn, with_images: bool = False) -> Iterator[EvalItem]:
    """EvalItems of a dataset, predictions from predict_fn; samples without a usable mask are skipped."""
    for i, sample in enumerate(dataset.samples):
        image, mask = dataset.load(i)
        if mask is None:
            continue
        prediction, kind = predict_fn(sample, image)
        yield EvalItem(sample.stem, mask, prediction, kind, image if with_images else None)


MAP_READINGS = ("auto", "probabilities", "mask")


def prediction_folder(folder, logits: bool = False, maps: str = "auto") -> PredictFn:
    """predict_fn reading saved maps `<folder>/<stem>.npy` (float probabilities, or logits with logits=True) or
    `<stem>.png|bmp|tif` (8/16-bit probability images or 0/1 masks; never logits).

    maps: how the folder's integer maps are read, one way for all of them: "probabilities" (levels / 255, or /
    65535 for 16-bit), "mask" (0/1), or "auto": masks if every integer map in the folder stays <= 1, else
    probabilities (found by reading each map once up front). The folder's reading is the predict_fn's `reading`;
    its `integer_maps` says whether "auto" found any integer map (None where `maps` was declared).
    """
    folder = Path(folder)
    if maps not in MAP_READINGS:
        raise InputError(f"prediction maps {maps!r}: expected one of {', '.join(MAP_READINGS)}")
    if not folder.is_dir():
        raise InputError(f"prediction folder not found: {folder}")
    priority = {suffix: rank for rank, suffix in enumerate(PREDICTION_SUFFIXES)}
    index: dict = {}
    for path in sorted(folder.iterdir(), key=lambda p: priority.get(p.suffix.lower(), len(priority))):
        if path.suffix.lower() in priority:
            index.setdefault(path.stem, path)  # a stem saved twice: .npy (full precision) wins over images
    if not index:
        raise InputError(f"no prediction maps ({', '.join(PREDICTION_SUFFIXES)}) in {folder}")
    reading, integer_maps = maps, None
    if maps == "auto":
        # Decided for the folder, not map by map: an 8-bit probability map whose highest level is 1 (a frame with
        # nothing in it but faint noise) would read as a mask, its level-1 pixels as targets.
        reading, integer_maps = "probabilities", False
        for path in index.values():
            highest = _integer_maximum(path)
            integer_maps = integer_maps or highest >= 0
            if highest > 1:  # one probability image settles it for the folder
                reading = "probabilities"
                break
            if highest >= 0:
                reading = "mask"

    def predict(sample, image) -> tuple:
        path = index.get(sample.stem)
        if path is None:
            raise InputError(f"no prediction for {sample.stem!r} in {folder} (expected {sample.stem}.npy or "
                             f"{sample.stem}.png; {len(index)} maps there)")
        is_logit_map = logits and path.suffix.lower() == ".npy"
        return read_map(path), "logits" if is_logit_map else reading

    predict.reading = reading
    predict.integer_maps = integer_maps
    return predict


def _integer_maximum(path: Path) -> int:
    """The largest value of an integer map file, or -1 for a float (or bool) map."""
    array = read_map(path, mmap=True)
    if not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        return -1
    return int(array.max())


def _frame(item: EvalItem, resize_labels: bool, resized: list) -> Frame:
    label, image = item.label, item.image
    prediction = single_map(item.prediction, f"{item.stem}: prediction")
    pred_hw = prediction.shape[:2]
    if label.shape[:2] != pred_hw:
        if not resize_labels:
            raise InputError(f"{item.stem}: label {label.shape[:2]} and prediction {pred_hw} differ in size: save "
                             f"predictions at the label's size, or resize labels (resize_labels=True, CLI "
                             f"--resize-labels: nearest-neighbour, the authors' 256x256 protocol)")
        size = (int(pred_hw[1]), int(pred_hw[0]))
        # centre-aligned nearest (PIL's NEAREST): it keeps the label on the image that INTER_LINEAR resized;
        # cv2.INTER_NEAREST samples top-left and shifts small targets (LW-IRSTNet on SIRST test: IoU 0.611
        # instead of 0.688)
        label = cv2.resize((np.asarray(label) != 0).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT)
        if image is not None:
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        resized.append(item.stem)
    try:
        return make_frame(label, prediction, item.kind, image)
    except InputError as exc:
        raise InputError(f"{item.stem}: {exc}") from exc

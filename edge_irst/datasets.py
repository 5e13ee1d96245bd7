"""IRSTD datasets on disk: `images/<stem>.<ext>` paired with `masks/<stem>.<ext>`, optional split lists.

Layouts read: the SIRST / NUDT-SIRST layout of ../shared/data (images/, masks/, split files of stems, one per
line) and any plain pair of folders (`images=` and `masks=` given explicitly). Any non-zero mask pixel is target.
A mask may also carry the official NUAA-SIRST release's suffix, `masks/<stem>_pixels0.png`. A stem a split lists
more than once is read once, at its first place, with a warning, and listed in `dataset.repeated_stems` (the
evaluation report and its JSON list it too), so that no image weighs twice in the metrics.

Mask/image size mismatch rule (SIRST's Misc_111 ships a 592x400 mask for a 325x220 image): when the aspect ratios
agree within 2 % the mask is resized to the image with nearest-neighbour and the stem is reported; otherwise the
sample is skipped and reported. Either way the stem is listed in `dataset.size_mismatches`; never silently
misaligned.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from .errors import InputError
from .preprocess import read_image

log = logging.getLogger(__name__)
IMAGE_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIX = "_pixels0"  # the official NUAA-SIRST release names the mask of <stem>.png <stem>_pixels0.png


@dataclass(frozen=True)
class Sample:
    stem: str
    image_path: Path
    mask_path: Optional[Path]


@dataclass(frozen=True)
class SizeMismatch:
    stem: str
    image_shape: tuple
    mask_shape: tuple
    action: str  # "resized" or "skipped"


def read_split(path: str | Path) -> list[str]:
    """Stems listed one per line (blank lines ignored; the last line may lack its newline; a UTF-8 byte order mark,
    as Windows editors write one, is not part of the first stem)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"split file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def resolve_split(split: str | Path, root: Path | None) -> Path:
    """The split file `split` names: an absolute path, or one starting with ./ or ../, as given; any other
    relative path under `root` first (where both exist, root's), then as given (relative to the working
    directory). InputError naming every place looked in when none holds it."""
    path = Path(split)
    explicit = str(split).startswith(("./", "../", ".\\", "..\\"))
    if path.is_absolute() or explicit or root is None:
        candidates = [path]
    else:
        candidates = [root / path, path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise InputError(f"split file not found: {' nor '.join(str(c) for c in candidates)} (a relative split is "
                         f"looked up under the dataset root first, then in the working directory)")
    return found


def _index(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS}


def _mask_index(folder: Path) -> dict[str, Path]:
    """stem -> mask file, <stem>.<ext> or NUAA-SIRST's <stem>_pixels0.<ext> (the plain name wins where both exist)."""
    masks = _index(folder)
    suffixed = {stem[:-len(MASK_SUFFIX)]: p for stem, p in masks.items() if stem.endswith(MASK_SUFFIX)}
    return {**suffixed, **masks}


def _mask_naming_hint(stems: list[str], masks: dict[str, Path]) -> str:
    """'; masks here are named like ...' when a mask's name is a stem that lacks a mask plus a suffix (f00_mask.png
    for f00, not f10.png for f1), else ''."""
    for stem in stems:
        named = next((p.name for mask_stem, p in masks.items() if len(mask_stem) > len(stem)
                      and mask_stem.startswith(stem) and not mask_stem[len(stem)].isalnum()), None)
        if named is not None:
            return (f"; the masks here are named like {named} (for {stem}): a mask must be <stem>.<ext> or "
                    f"NUAA-SIRST's <stem>{MASK_SUFFIX}.<ext>")
    return ""


class IrstdDataset:
    """A list of (image, mask) samples. `load(i)` -> (image as stored: uint8 HxW/HxWx3 or uint16, mask bool HxW).

    split: a file of stems, relative to `root` unless absolute or ./-prefixed (see resolve_split); None: every image.
    """

    def __init__(self, root: str | Path | None = None, split: str | Path | None = None, *,
                 images: str | Path | None = None, masks: str | Path | None = None, require_masks: bool = True):
        if root is None and images is None:
            raise InputError("give a dataset root (with images/ and masks/) or an images= folder")
        self.root = Path(root) if root is not None else None
        image_dir = Path(images) if images is not None else self.root / "images"
        mask_dir = Path(masks) if masks is not None else (self.root / "masks" if self.root else None)
        if not image_dir.is_dir():
            raise InputError(f"image folder not found: {image_dir}")
        image_index = _index(image_dir)
        mask_index = _mask_index(mask_dir) if mask_dir is not None and mask_dir.is_dir() else {}
        if require_masks and mask_dir is None:
            raise InputError("no mask folder: with images= and no dataset root, give masks= (CLI: --masks DIR)")
        if require_masks and not mask_index:
            raise InputError(f"mask folder not found or empty: {mask_dir}")
        self.repeated_stems: list[str] = []  # stems the split lists more than once: each is read once
        if split is not None:
            split_path = resolve_split(split, self.root)
            listed = read_split(split_path)
            stems = list(dict.fromkeys(listed))  # the first place of each stem, in the split's order
            self.split_name = split_path.name
            if len(stems) < len(listed):
                listings = Counter(listed)
                self.repeated_stems = [stem for stem in stems if listings[stem] > 1]
                log.warning("%s lists %d stems more than once (e.g. %s); each is read once, at its first place",
                            split_path, len(self.repeated_stems), ", ".join(self.repeated_stems[:3]))
        else:
            stems = list(image_index)
            self.split_name = "all"
        missing = [s for s in stems if s not in image_index]
        if missing:
            raise InputError(f"{len(missing)} stems of the split have no image in {image_dir} "
                             f"(e.g. {', '.join(missing[:3])})")
        if require_masks:
            no_mask = [s for s in stems if s not in mask_index]
            if no_mask:
                raise InputError(f"{len(no_mask)} images have no mask in {mask_dir} (e.g. {', '.join(no_mask[:3])})"
                                 f"{_mask_naming_hint(no_mask, _index(mask_dir))}")
        self.samples = [Sample(s, image_index[s], mask_index.get(s)) for s in stems]
        self.size_mismatches: list[SizeMismatch] = []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Image as stored and its boolean mask (None when the sample has no mask, or it was skipped)."""
        sample = self.samples[i]
        image = read_image(sample.image_path)
        if sample.mask_path is None:
            return image, None
        stored = read_image(sample.mask_path)
        # any non-zero value of a colour channel (alpha aside) is target: a grey conversion would drop a 16-bit 0/1
        # mask (scaled to 8 bits) and a faint blue or red target
        mask = (stored[:, :, :3] != 0).any(axis=2) if stored.ndim == 3 else stored != 0
        if mask.shape != image.shape[:2]:
            mask = self._reconcile(sample.stem, image.shape[:2], mask)
        return image, mask

    def _reconcile(self, stem: str, image_hw: tuple, mask: np.ndarray) -> Optional[np.ndarray]:
        ratio_image = image_hw[1] / image_hw[0]
        ratio_mask = mask.shape[1] / mask.shape[0]
        if abs(ratio_image / ratio_mask - 1.0) <= 0.02:
            action = "resized"
            mask = cv2.resize(mask.astype(np.uint8), (image_hw[1], image_hw[0]),
                              interpolation=cv2.INTER_NEAREST_EXACT) > 0
        else:
            action, mask = "skipped", None
        if not any(m.stem == stem for m in self.size_mismatches):
            self.size_mismatches.append(SizeMismatch(stem, tuple(image_hw), None if mask is None else mask.shape,
                                                     action))
            log.warning("%s: mask size differs from image %s; mask %s (rule: same aspect -> nearest resize, "
                        "else skip)", stem, image_hw, action)
        return mask

    def __iter__(self) -> Iterator[tuple[Sample, np.ndarray, Optional[np.ndarray]]]:
        for i, sample in enumerate(self.samples):
            image, mask = self.load(i)
            yield sample, image, mask



"""The frames an export is calibrated (int8) and verified on.

In order of preference: the images of `--calib DIR`; the authors' five sample frames when the research data sits
beside a source checkout (../shared); otherwise deterministic synthetic IR frames (edge_irst.synthetic), so an
export on a user's machine is still verified on target-like content.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from edge_irst.errors import InputError
from edge_irst.preprocess import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "lw_irstnet_authors" / "samples" / "images"
SYNTHETIC_COUNT = 8


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _calibration_files(calib: str) -> tuple[list[Path], str]:
    """Images of a folder, or of a dataset split given as ROOT:SPLIT (ROOT holding images/, SPLIT a stem list) —
    so int8 is calibrated on a training list, never on the frames it is scored on."""
    root, sep, split = calib.partition(":")
    if sep and Path(root, "images").is_dir():
        from edge_irst.datasets import IrstdDataset

        dataset = IrstdDataset(root, split, require_masks=False)
        return [sample.image_path for sample in dataset.samples], calib
    folder = Path(calib)
    if not folder.is_dir():
        raise InputError(f"--calib {folder}: not a folder nor ROOT:SPLIT; pass a folder of calibration images "
                         f"({', '.join(IMAGE_SUFFIXES)}) or a dataset split such as data/sirst:idx_427/train.txt")
    files = image_files(folder)
    if not files:
        raise InputError(f"--calib {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return files, str(folder)


def check_limit(limit) -> int:
    """`limit` when it is a whole number >= 1, else InputError (0 would keep no frame to calibrate or verify on)."""
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise InputError(f"calib_limit {limit!r}: expected a whole number >= 1 (the most calibration images used)")
    return int(limit)


def calibration_frames(calib: Optional[Path], limit: int = 64) -> tuple[list[np.ndarray], str]:
    """(frames as read: uint8 grey HxW or BGR HxWx3, or uint16 raw; a description of where they came from).

    More than `limit` (>= 1) images in `calib` are thinned to `limit`, evenly spaced in name order (deterministic).
    """
    limit = check_limit(limit)
    if calib is not None:
        files, folder = _calibration_files(str(calib))
        if len(files) > limit:
            files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
        return [read_image(p) for p in files], f"{len(files)} images from {folder}"
    if SAMPLES.is_dir() and image_files(SAMPLES):
        files = image_files(SAMPLES)
        return [read_image(p) for p in files], f"the authors' {len(files)} sample frames ({SAMPLES})"
    from edge_irst.synthetic import synthetic_frames

    frames = [f.image for f in synthetic_frames(SYNTHETIC_COUNT, seed=0)]
    return frames, f"{len(frames)} synthetic IR frames (seed 0; pass --calib DIR for real ones)"

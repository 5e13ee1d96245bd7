"""Training-time augmentation on RGB uint8 images and boolean masks (numpy/OpenCV, seeded Generator).

The paper's recipe: random horizontal flip, random scale then crop to the training size, Gaussian blur. Optional
synthetic small targets: Gaussian point-spread blobs pasted onto real backgrounds, with the mask updated, to show
the net more (and fainter) targets than the datasets hold.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    size: int = 256
    scale_range: tuple[float, float] = (0.5, 2.0)  # of the base size, applied to the long side
    flip: bool = True
    blur_prob: float = 0.5
    synthetic_targets_prob: float = 0.0
    synthetic_targets_max: int = 3


def random_scale_crop(image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator):
    """Resize so the long side is size * U(scale_range), zero-pad to at least size, random crop size x size."""
    size = cfg.size
    h, w = mask.shape
    long_side = int(size * rng.uniform(*cfg.scale_range))
    if h > w:
        nh, nw = long_side, max(1, int(round(w * long_side / h)))
    else:
        nw, nh = long_side, max(1, int(round(h * long_side / w)))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
    pad_h, pad_w = max(size - nh, 0), max(size - nw, 0)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
    y0 = int(rng.integers(0, mask.shape[0] - size + 1))
    x0 = int(rng.integers(0, mask.shape[1] - size + 1))
    return image[y0:y0 + size, x0:x0 + size], mask[y0:y0 + size, x0:x0 + size] > 0


def paste_synthetic_targets(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, max_targets: int):
    """Add 1..max_targets Gaussian blobs (sigma 0.6..2.0 px, contrast 20..120 grey levels) on the background.

    The mask marks the pixels where the blob adds at least 25 % of its peak (a point target's visible core).
    """
    image = image.astype(np.float32)
    mask = mask.copy()
    h, w = mask.shape
    for _ in range(int(rng.integers(1, max_targets + 1))):
        sigma = rng.uniform(0.6, 2.0)
        radius = int(np.ceil(3 * sigma))
        cy, cx = rng.uniform(radius, h - radius - 1), rng.uniform(radius, w - radius - 1)
        y0, y1 = int(cy) - radius, int(cy) + radius + 1
        x0, x1 = int(cx) - radius, int(cx) + radius + 1
        if mask[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2].any():
            continue  # keep synthetic targets apart from real ones
        yy, xx = np.mgrid[y0:y1, x0:x1]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        image[y0:y1, x0:x1] += rng.uniform(20, 120) * blob[:, :, None]
        mask[y0:y1, x0:x1] |= blob >= 0.25
    return np.clip(image, 0, 255).astype(np.uint8), mask


def augment(image: np.ndarray, mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator):
    """image uint8 HxWx3 (contract channel order), mask bool HxW -> cropped size x size pair."""
    image, mask = random_scale_crop(image, mask, cfg, rng)
    if cfg.flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if cfg.synthetic_targets_prob and rng.random() < cfg.synthetic_targets_prob:
        image, mask = paste_synthetic_targets(image, mask, rng, cfg.synthetic_targets_max)
    if cfg.blur_prob and rng.random() < cfg.blur_prob:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.1, 1.0))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)

"""The one verification step every exported artifact goes through, whatever its format.

The artifact is loaded through the backend layer (`edge_irst.backends.load_backend`, the same code that runs it
in production) with fp32 runtime options (ncnn, for one, would otherwise pick fp16 arithmetic on CPUs that have
it), run on the verification frames and compared with the PyTorch model on the same tensors:
- fp32: every |logit diff| <= 1e-3 + 1e-4 * (the frame's largest |PyTorch logit|) and >= 99.9 % identical
  `logit > threshold` pixels, else the export fails;
- fp16 / int8: the figures are reported; the artifact is marked verified only when the IoU of its target mask
  with PyTorch's fp32 mask reaches 0.98 (fp16) / 0.90 (int8), and only when PyTorch's masks hold at least
  MIN_REFERENCE_TARGET_PIXELS target pixels over the frames: on frames without targets both masks are empty, the
  IoU reads 1.0 whatever the artifact computes (an int8 calibrated on blank frames that misses every real target
  passed that way), so such frames verify nothing. No logit bound for them: far from the threshold their logits
  differ from PyTorch's by whole units that change no pixel (an int8 ONNX with IoU 0.96 on the sample frames
  at 256x256: max |diff| 38.5), so a bound loose enough to pass good artifacts would catch no collapse that
  the IoU on frames with targets misses.
Logits of LW-IRSTNet span about [-200, 60]: on most frames 1e-3 absolute is float32 reordering noise (3e-4
measured for ONNX, MNN and ncnn at 256x256), but a frame whose logits reach |150| carries activations large enough
for the same noise to reach a few 1e-3 anywhere in it (5.5e-3 at a logit of 15 on a SIRST frame whose largest
|logit| is 127, at 320x480, on ONNX, ncnn and MNN alike, masks identical); hence the term scaled by the frame.
The bugs seen so far (fp16 weights, a mis-folded pad) are 0.1 and more at every magnitude.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edge_irst.contract import ModelContract
from edge_irst.errors import EdgeIrstError, MissingDependencyError, UnknownNameError
from edge_irst.preprocess import preprocess


@dataclass(frozen=True)
class Tolerance:
    max_abs_diff: Optional[float] = None  # |diff| <= max_abs_diff + rel_diff * (frame's max |PyTorch logit|)
    rel_diff: float = 0.0
    min_mask_agreement: Optional[float] = None
    min_mask_iou: Optional[float] = None


TOLERANCES = {
    "fp32": Tolerance(max_abs_diff=1e-3, rel_diff=1e-4, min_mask_agreement=0.999),
    "fp16": Tolerance(min_mask_iou=0.98),
    "int8": Tolerance(min_mask_iou=0.90),
}
# Fewest target pixels (logit > threshold) PyTorch's masks must hold over the verification frames for a mask IoU to
# judge an artifact: a few small targets' worth; with fewer, a handful of pixels decides the IoU (none: always 1).
MIN_REFERENCE_TARGET_PIXELS = 20
# A dynamic-H/W artifact is also checked at this non-square size (multiples of 8), besides the export size.
DYNAMIC_CHECK_SIZE = (320, 480)


class Reference:
    """The verification frames, preprocessed at a given size, and PyTorch's logits on them (cached per size).

    frames: as read (uint8 grey/BGR or uint16 raw). model: eval-mode PyTorch module.
    """

    def __init__(self, model, frames: Sequence[np.ndarray], contract: ModelContract):
        self.model, self.frames, self.contract = model, list(frames), contract
        self._batches: dict = {}
        self._logits: dict = {}

    def batches(self, size: tuple[int, int]) -> list[np.ndarray]:
        """One float32 NCHW [1, C, H, W] array per frame, resized to `size` (H, W)."""
        size = tuple(size)
        if size not in self._batches:
            self._batches[size] = [preprocess(f, self.contract, size=size) for f in self.frames]
        return self._batches[size]

    def logits(self, size: tuple[int, int]) -> np.ndarray:
        """float32 [N, 1, H, W] PyTorch logits on `batches(size)`."""
        size = tuple(size)
        if size not in self._logits:
            import torch

            with torch.no_grad():
                self._logits[size] = np.concatenate(
                    [self.model(torch.from_numpy(b)).numpy() for b in self.batches(size)])
        return self._logits[size]


@dataclass
class Verification:
    """What running the artifact showed. `ran` is False when no runtime could load it (then nothing is known)."""

    ran: bool
    verified: bool
    reason: Optional[str] = None
    max_abs_diff: Optional[float] = None
    tolerance_used: Optional[float] = None  # the largest |diff| / its bound over all pixels: <= 1 passes
    mask_agreement: Optional[float] = None
    mask_iou_vs_fp32: Optional[float] = None
    frames: int = 0
    sizes: list = field(default_factory=list)
    io: dict = field(default_factory=dict)
    options_in_effect: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _tolerance_used(precision: str, got: np.ndarray, expected: np.ndarray) -> Optional[float]:
    """max over pixels of |got - expected| / (atol + rtol * the frame's max |expected|), or None when `precision`
    has no bound. got, expected: [N, C, H, W]."""
    tol = TOLERANCES[precision]
    if tol.max_abs_diff is None:
        return None
    scale = np.abs(expected.astype(np.float64)).max(axis=(1, 2, 3), keepdims=True)
    bound = tol.max_abs_diff + tol.rel_diff * scale
    return float((np.abs(got.astype(np.float64) - expected) / bound).max())


def _judge(precision: str, diff: float, used: Optional[float], agreement: float, iou: float,
           reference_pixels: int) -> Optional[str]:
    """None when the figures pass `precision`'s tolerance, else the reason they do not. reference_pixels: target
    pixels in PyTorch's masks over every frame and size."""
    tol = TOLERANCES[precision]
    problems = []
    if tol.min_mask_iou is not None and reference_pixels < MIN_REFERENCE_TARGET_PIXELS:
        problems.append(f"the verification frames hold too few targets to judge it: PyTorch's fp32 masks have "
                        f"{reference_pixels} target pixels in all, the mask IoU needs at least "
                        f"{MIN_REFERENCE_TARGET_PIXELS}; verify on frames with targets: --calib a folder or ROOT:SPLIT "
                        f"of real IR frames (e.g. a training list), or no --calib (the authors' sample frames, else "
                        f"synthetic frames with targets), at a larger --imgsz if need be")
    if used is not None and not used <= 1.0:
        problems.append(f"logit diff beyond {tol.max_abs_diff:g} + {tol.rel_diff:g}*max|logit| ({used:.3g}x the bound; "
                        f"max |logit diff| {diff:.3g})")
    if tol.min_mask_agreement is not None and not agreement >= tol.min_mask_agreement:
        problems.append(f"mask agreement {agreement:.4%} < {tol.min_mask_agreement:.1%}")
    if tol.min_mask_iou is not None and not iou >= tol.min_mask_iou:
        problems.append(f"mask IoU vs fp32 {iou:.4f} < {tol.min_mask_iou}")
    return "; ".join(problems) or None


def verify_artifact(path: Path, backend: str, precision: str, contract: ModelContract, reference: Reference,
                    size: tuple[int, int], threads: Optional[int] = None) -> Verification:
    """Run `path` on `backend` over the reference frames at `size` (and at DYNAMIC_CHECK_SIZE too when the
    contract is dynamic) and judge the figures against PyTorch by TOLERANCES[precision]."""
    from edge_irst.backends import load_backend

    sizes = [tuple(size)]
    if contract.input_size is None and tuple(size) != DYNAMIC_CHECK_SIZE:
        sizes.append(DYNAMIC_CHECK_SIZE)
    try:
        runtime = load_backend(path, backend=backend, contract=contract, threads=threads, precision="fp32")
    except (MissingDependencyError, UnknownNameError) as exc:
        return Verification(ran=False, verified=False, reason=f"not run: {exc}")
    except EdgeIrstError as exc:  # the runtime refused the artifact: that is a broken artifact
        return Verification(ran=True, verified=False, reason=f"{backend} cannot load it: {exc}")
    diff, used, same, pixels, inter, union, reference_pixels = 0.0, None, 0, 0, 0, 0, 0
    with runtime:
        for hw in sizes:
            expected = reference.logits(hw)
            try:
                got = np.concatenate([runtime.run(b) for b in reference.batches(hw)])
            except EdgeIrstError as exc:
                return Verification(ran=True, verified=False, sizes=[list(s) for s in sizes],
                                    reason=f"{backend} failed to run it at {hw[0]}x{hw[1]}: {exc}")
            if got.shape != expected.shape:
                return Verification(ran=True, verified=False, sizes=[list(s) for s in sizes],
                                    reason=f"{backend} returned shape {got.shape}, PyTorch {expected.shape}")
            diff = max(diff, float(np.abs(got - expected).max()))
            here = _tolerance_used(precision, got, expected)
            if here is not None:
                used = here if used is None else max(used, here)
            mine, theirs = got > contract.threshold, expected > contract.threshold
            same += int(np.count_nonzero(mine == theirs))
            pixels += mine.size
            inter += int(np.count_nonzero(mine & theirs))
            union += int(np.count_nonzero(mine | theirs))
            reference_pixels += int(np.count_nonzero(theirs))
        io = {"inputs": [s.to_dict() for s in runtime.inputs], "outputs": [s.to_dict() for s in runtime.outputs]}
        effect = runtime.options_in_effect()
    agreement = same / pixels
    iou = 1.0 if union == 0 else inter / union  # pooled over every frame and size; both masks empty -> 1
    reason = _judge(precision, diff, used, agreement, iou, reference_pixels)
    return Verification(ran=True, verified=reason is None, reason=reason, max_abs_diff=diff, tolerance_used=used,
                        mask_agreement=agreement, mask_iou_vs_fp32=iou, frames=len(reference.frames),
                        sizes=[list(s) for s in sizes], io=io, options_in_effect=effect)

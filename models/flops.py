"""Parameter and FLOP counting under two named conventions.

- "thop": the count the LW-IRSTNet paper quotes (thop 0.1.1), kept for comparability. Per layer:
  Conv2d and ConvTranspose2d = output elements x (input channels / groups) x kernel area (for a transposed conv this
  over-counts: it charges every output pixel with the whole kernel); BatchNorm2d (affine) = 4 x input elements;
  PReLU = 1 per input element (in eval mode); ReLU, pooling, dropout and the residual additions = 0.
- "macs": true multiply-accumulates of the deployed graph: BatchNorm folded into the convolutions (0), Conv2d =
  output elements x (input channels / groups) x kernel area, ConvTranspose2d = input elements x (output channels /
  groups) x kernel area (each input pixel scatters one kernel per output channel).

Written here rather than depending on thop (unmaintained since 2022, and a torch dependency of the runtime side);
tests pin the thop-convention figure to thop's own 303.53 M.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ComplexityReport:
    parameters: int
    thop_flops: int
    conv_macs: int
    input_shape: tuple

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("parameters", f"{self.parameters:,}"),
            ("input", "x".join(map(str, self.input_shape[1:]))),
            ("FLOPs (thop convention, as the paper quotes)", f"{self.thop_flops / 1e6:.2f} M"),
            ("MACs (true, BN folded, transposed conv exact)", f"{self.conv_macs / 1e6:.2f} M"),
        ]


def _thop_ops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        kernel = module.weight.shape[2] * module.weight.shape[3]
        return out.numel() * (inp.shape[1] // module.groups) * kernel
    if isinstance(module, nn.BatchNorm2d):
        return 4 * inp.numel() if module.affine else 2 * inp.numel()
    if isinstance(module, nn.PReLU):
        return inp.numel()
    return 0


def _true_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        kernel = module.weight.shape[2] * module.weight.shape[3]
        return inp.numel() * (module.out_channels // module.groups) * kernel
    if isinstance(module, nn.Conv2d):
        kernel = module.weight.shape[2] * module.weight.shape[3]
        return out.numel() * (module.in_channels // module.groups) * kernel
    return 0


def count_complexity(model: nn.Module, input_shape=(1, 3, 256, 256)) -> ComplexityReport:
    """Parameters used in forward and the two FLOP conventions for one forward pass at `input_shape` (NCHW)."""
    totals = {"thop": 0, "macs": 0}
    used: set[int] = set()

    def hook(module, inputs, output):
        used.add(id(module))
        totals["thop"] += _thop_ops(module, inputs[0], output)
        totals["macs"] += _true_macs(module, inputs[0], output)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            parameter = next(model.parameters(), None)  # the input goes where the model is (a GPU-loaded one)
            model(torch.zeros(input_shape, device=None if parameter is None else parameter.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for m in leaves if id(m) in used for p in m.parameters(recurse=False))
    return ComplexityReport(params, totals["thop"], totals["macs"], tuple(input_shape))

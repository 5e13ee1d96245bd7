"""Grey-input folding: an LW-IRSTNet that takes the IR frame as one channel, computing what the 3-channel model
computes on that frame replicated into R, G and B.

Why: an IR frame is grey, and the RGB-trained network sees it as three copies normalised with three ImageNet
means and deviations. Folding the per-channel normalisation (and the stem's BatchNorm) into the stem's weights
lets the artifact take g = pixel * scale as its only channel: a third of the input to preprocess, copy and read,
and a max-pool over one plane instead of three. On the bundled weights (ncnn 1.0.20261020, one thread, AMD EPYC
Zen 5, 256x256, interleaved rounds, ad hoc script) the int8 artifact ran 1.04x faster grey than RGB with the same
quantiser (16 rounds); the fp32 one 0.99x and 1.02x in two runs, no gain beyond the noise.

Exactness: the 3x3 stride-2 stem convolution pads its input with zeros, and a zero of the normalised channel c is
the grey level m_c, a different one per channel. So the folded convolution reads two planes: g, with weights
sum_c w_c / s_c, and a plane of ones that is zero in the padding, with weights -sum_c w_c m_c / s_c: inside the
frame the two add up to sum_c w_c (g - m_c) / s_c, and in the padding both are zero, as in the original. The
plane of ones is a 1x1 convolution of g with weight 0 and bias 1 (ncnn pads it with zeros like any blob). Not a
Clip(g, 1, 1): in ncnn's default light mode an in-place layer on the input blob crashed the ncnn 1.0.20261020
wheel (segfault, reproduced here). The max-pool commutes with the normalisation (an increasing map per channel),
so each pooled channel is a 1x1 affine of one max-pooled plane, the stem BatchNorm folded in.

Inference only: the BatchNorm is folded with its running statistics. The result matches the RGB model to float
rounding (export verifies that on its frames); on a colour frame it is the model applied to the grey conversion.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from .lw_irstnet import InitialBlock


class GreyInputStem(nn.Module):
    """An InitialBlock (3x3 stride-2 conv + max-pool, concatenated, BatchNorm, PReLU) for 1-channel input g, the
    BatchNorm and the per-channel normalisation (g - mean_c) / std_c of the replicated channels folded in."""

    def __init__(self, stem: InitialBlock, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        weight = stem.conv.weight.detach().double()  # [K, C, 3, 3]
        convolved, channels = weight.shape[:2]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"grey input: the stem reads {channels} channels, but {len(mean)} means and "
                             f"{len(std)} deviations were given")
        mean = torch.tensor(mean, dtype=torch.float64)
        std = torch.tensor(std, dtype=torch.float64)
        bn = stem.bn
        gain = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.detach().double() - bn.running_mean.double() * gain
        per_channel = weight / std[None, :, None, None]
        grey_taps = per_channel.sum(1, keepdim=True) * gain[:convolved, None, None, None]
        mean_taps = (per_channel * mean[None, :, None, None]).sum(1, keepdim=True) * gain[:convolved, None, None, None]
        self.ones = nn.Conv2d(1, 1, 1)  # the plane of ones, 0 in the stem's zero padding (see the module text)
        nn.init.zeros_(self.ones.weight)
        nn.init.ones_(self.ones.bias)
        self.conv = nn.Conv2d(2, convolved, 3, stride=2, padding=1)
        self.conv.weight.data = torch.cat((grey_taps, -mean_taps), 1).float()
        self.conv.bias.data = shift[:convolved].float()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        pooled_gain = gain[convolved:] / std
        self.spread = nn.Conv2d(1, channels, 1)  # max-pooled plane -> the BatchNorm'd pooled channel of each mean
        self.spread.weight.data = pooled_gain.float().view(-1, 1, 1, 1)
        self.spread.bias.data = (shift[convolved:] - pooled_gain * mean).float()
        self.act = copy.deepcopy(stem.act)
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def forward(self, g):
        planes = torch.cat((g, self.ones(g)), 1)
        return self.act(torch.cat((self.conv(planes), self.spread(self.pool(g))), 1))


def fold_grey_input(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """A copy of `model` (eval mode) whose input is one channel g = pixel * scale, for a model that normalised
    (g - mean_c) / std_c per RGB channel. Networks whose `stem` is not an InitialBlock (LW-IRSTNet's) are refused."""
    stem = getattr(model, "stem", None)
    if not isinstance(stem, InitialBlock):
        raise ValueError(f"grey input: {type(model).__name__} has no LW-IRSTNet InitialBlock stem to fold; only "
                         f"LW-IRSTNet-style models can take a one-channel input this way")
    folded = copy.deepcopy(model).eval()
    folded.stem = GreyInputStem(folded.stem, mean, std).eval()
    return folded

"""Wide ResNets (Zagoruyko & Komodakis 2016, "Wide Residual Networks", table 1): WRN-d-k.

Pre-activation blocks (BN-ReLU-conv-BN-ReLU-conv), depth d = 6n+4, three stages of n blocks with
widths 16k, 32k, 64k after a 16-channel 3x3 stem, then a final BN-ReLU, global pooling and fc.
Parameter names follow RepDistiller's ``wrn.py`` (``block1.layer.0.bn1.weight``,
``block2.layer.0.convShortcut.weight``, ``bn1``, ``fc``) so its checkpoints load with strict=True.

Features, as RepDistiller and mdistiller define them for this pre-activation net: a stage output
is a plain residual sum (no activation follows it inside the stage), so ``feats`` are the raw
stage outputs and ``preact_feats`` are those after the BN that precedes the next ReLU
(``block2.layer.0.bn1``, ``block3.layer.0.bn1``, final ``bn1``), the Overhaul "BN before ReLU".
"""
from __future__ import annotations

import math

import torch.nn as nn

from wdistill.models.registry import register
from wdistill.models.taps import TapSpec


class BasicBlock(nn.Module):
    """out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut, the shortcut being ``x`` when the
    width is unchanged, else a strided 1x1 conv of the activated ``relu(bn1(x))``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        # Not in-place: bn1's output of a stage's first block is tapped as the previous
        # stage's pre-activation.
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``n`` blocks in ``self.layer``, the first one changing width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()  # not in-place: bn1's output is the last pre-activation
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        # He init with fan_out, as the reference implementation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        return TapSpec(
            feats=["conv1", "block1", "block2", "block3"],
            preact=["conv1", "block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"],
            embed="fc:in",
        )


@register
def wrn_16_1(**kw): return WideResNet(16, 1, **kw)
@register
def wrn_16_2(**kw): return WideResNet(16, 2, **kw)
@register
def wrn_40_1(**kw): return WideResNet(40, 1, **kw)
@register
def wrn_40_2(**kw): return WideResNet(40, 2, **kw)

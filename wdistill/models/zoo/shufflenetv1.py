"""ShuffleNet V1 for CIFAR (Zhang et al. 2018, "ShuffleNet", section 3.2 and table 1), groups 3,
stage widths 240/480/960, 4/8/4 units, as RepDistiller's ``ShuffleV1``.

Stem: 1x1 conv to 24 channels, BN, ReLU (no stride: CIFAR). Unit: group 1x1 conv to width/4,
BN, ReLU, channel shuffle, 3x3 depthwise conv (stride 2 in a stage's first unit), BN, group 1x1
conv, BN; then add the identity or, for stride 2, concatenate a 3x3 average-pooled shortcut;
final ReLU. The first group conv of the net (24 input channels) is ungrouped.
Parameter names follow RepDistiller's ``ShuffleNetv1.py`` (``layer1.0.conv1.weight``, ``linear``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wdistill.models.registry import register
from wdistill.models.taps import TapSpec


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> view [N, g, c, H, W] -> transpose g and c -> [N, c*g, H, W]."""
    n, ch, h, w = x.shape
    return x.view(n, groups, ch // groups, h, w).transpose(1, 2).reshape(n, ch, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ShuffleBlock(g)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, 2, 1)) if stride == 2 else nn.Sequential()
        self.out_relu = nn.ReLU()  # own module: its input is the tapped pre-activation

    def forward(self, x):
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return self.out_relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    def __init__(self, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups: int = 3,
                 num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)
        self.num_blocks = tuple(num_blocks)

    def _make_layer(self, out_planes: int, n: int, groups: int) -> nn.Sequential:
        # The first unit concatenates its input, so its own branch outputs the difference.
        layers = [Bottleneck(self.in_planes, out_planes - self.in_planes, 2, groups)]
        layers += [Bottleneck(out_planes, out_planes, 1, groups) for _ in range(1, n)]
        self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        stages = ["layer1", "layer2", "layer3"]
        return TapSpec(
            feats=["relu"] + stages,
            preact=["bn1"] + [f"{s}.{n - 1}.out_relu:in" for s, n in zip(stages, self.num_blocks)],
            embed="linear:in",
        )


@register
def ShuffleV1(**kw): return ShuffleNetV1(**kw)

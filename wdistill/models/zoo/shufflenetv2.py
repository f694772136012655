"""ShuffleNet V2 1x for CIFAR (Ma et al. 2018, "ShuffleNet V2", fig. 3(c)(d) and table 5),
stage widths 116/232/464, 3/7/3 basic units after each down-sampling unit, 1x1 conv to 1024,
as RepDistiller's ``ShuffleV2``.

Stem: 1x1 conv to 24 channels, BN, ReLU (no stride, no max-pool: CIFAR). Down-sampling unit
(fig. 3d): left dw3x3/2-BN, 1x1-BN-ReLU; right 1x1-BN-ReLU, dw3x3/2-BN, 1x1-BN-ReLU; concat,
shuffle. Basic unit (fig. 3c): split channels in half; the second half goes 1x1-BN-ReLU,
dw3x3-BN, 1x1-BN-ReLU; concat with the first half, shuffle.
Parameter names follow RepDistiller's ``ShuffleNetv2.py`` (``layer1.0.conv4.weight``,
``layer1.1.bn3.running_var``, ``conv2``, ``bn2``, ``linear``).

Pre-activation of a stage, as RepDistiller: concat(first half, branch before its final ReLU),
before the shuffle (so its channel order differs from the stage output's).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wdistill.models.registry import register
from wdistill.models.taps import TapSpec
from wdistill.models.zoo.shufflenetv1 import ShuffleBlock


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock(2)
        # The unit's input is the output of a unit (ReLU outputs, concatenated and shuffled), so
        # its first half is >= 0 and relu(cat(x1, y)) == cat(x1, relu(y)) exactly: one ReLU
        # module on the concatenation makes the reference pre-activation tappable at its input.
        self.out_relu = nn.ReLU()

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        return self.shuffle(self.out_relu(torch.cat([x1, out], 1)))


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        self.conv1 = nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock(2)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3),
                 num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        c = 24
        for i in range(3):
            blocks = [DownBlock(c, out_channels[i])]
            blocks += [BasicBlock(out_channels[i]) for _ in range(num_blocks[i])]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c = out_channels[i]
        self.conv2 = nn.Conv2d(c, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.num_blocks = tuple(num_blocks)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        stages = ["layer1", "layer2", "layer3"]
        # Index n: a stage holds its down-sampling unit then n basic units.
        return TapSpec(
            feats=["relu"] + stages,
            preact=["bn1"] + [f"{s}.{n}.out_relu:in" for s, n in zip(stages, self.num_blocks)],
            embed="linear:in",
        )


@register
def ShuffleV2(**kw): return ShuffleNetV2(**kw)

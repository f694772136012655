"""MobileNetV2 for CIFAR (Sandler et al. 2018, table 2), width 0.5, expansion 6, as used by
RepDistiller ("mobile_half", from "Knowledge Distillation via Route Constrained Optimization").

Stem: 3x3 stride-2 conv-BN-ReLU; seven stages of inverted residual blocks
(pw 1x1 expand-BN-ReLU, dw 3x3-BN-ReLU, pw 1x1 linear-BN, identity shortcut when stride 1 and
widths match); 1x1 conv-BN-ReLU to 1280; global pooling; linear classifier.
Unlike torchvision, every block keeps its expansion conv, even at expansion 1.
Parameter names follow RepDistiller's ``mobilenetv2.py`` (``conv1.0.weight``,
``blocks.0.0.conv.0.weight``, ``conv2.1.weight``, ``classifier.0.weight``).

Features as RepDistiller: stem, then the outputs of stages 1, 2, 4, 6. Stage outputs are linear
bottlenecks (no ReLU follows them), so their pre-activation is the stage output itself.
"""
from __future__ import annotations

import math

import torch.nn as nn

from wdistill.models.registry import register
from wdistill.models.taps import TapSpec

# expansion t, output channels c, blocks n, first stride s (before width scaling)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, inplace: bool = True):
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=inplace))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_res_connect = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Cifar(nn.Module):
    def __init__(self, expand: int = 6, width_mult: float = 0.5, num_classes: int = 100,
                 in_channels: int = 3):
        super().__init__()
        c = int(32 * width_mult)
        # Stem ReLU not in-place: the stem's BN output is tapped as its pre-activation.
        self.conv1 = _conv_bn_relu(in_channels, c, 3, 2, inplace=False)
        self.blocks = nn.ModuleList()
        for t, ch, n, s in SETTINGS:
            t = expand if t != 1 else 1
            out = int(ch * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(c, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(self.avgpool(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        stages = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
        return TapSpec(feats=["conv1"] + stages, preact=["conv1.2:in"] + stages,
                       embed="classifier:in")


@register
def MobileNetV2(**kw): return MobileNetV2Cifar(6, 0.5, **kw)

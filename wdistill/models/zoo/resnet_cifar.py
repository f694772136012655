"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, BasicBlocks, three stages.

Parameter names follow RepDistiller's ``resnet.py`` so its checkpoints load with strict=True.
"""
from __future__ import annotations

import torch.nn as nn

from wdistill.models.registry import register
from wdistill.models.taps import TapSpec


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        # Its own module, not in-place, so a hook at its input sees the pre-activation.
        self.out_relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.out_relu(out + identity)


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, widths: list[int], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()  # not in-place: bn1's output is tapped as a pre-activation
        self.layer1 = self._make_layer(widths[1], n, 1)
        self.layer2 = self._make_layer(widths[2], n, 2)
        self.layer3 = self._make_layer(widths[3], n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_blocks = n
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        last = self.num_blocks - 1
        stages = ["layer1", "layer2", "layer3"]
        return TapSpec(
            feats=["relu"] + stages,
            preact=["bn1"] + [f"{s}.{last}.out_relu:in" for s in stages],
            embed="fc:in",
        )


def _resnet(depth, widths, **kw):
    return ResNetCifar(depth, widths, **kw)


@register
def resnet8(**kw): return _resnet(8, [16, 16, 32, 64], **kw)
@register
def resnet14(**kw): return _resnet(14, [16, 16, 32, 64], **kw)
@register
def resnet20(**kw): return _resnet(20, [16, 16, 32, 64], **kw)
@register
def resnet32(**kw): return _resnet(32, [16, 16, 32, 64], **kw)
@register
def resnet44(**kw): return _resnet(44, [16, 16, 32, 64], **kw)
@register
def resnet56(**kw): return _resnet(56, [16, 16, 32, 64], **kw)
@register
def resnet110(**kw): return _resnet(110, [16, 16, 32, 64], **kw)
@register
def resnet8x4(**kw): return _resnet(8, [32, 64, 128, 256], **kw)
@register
def resnet32x4(**kw): return _resnet(32, [32, 64, 128, 256], **kw)

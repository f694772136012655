"""ResNets with four stages (He et al. 2016, "Deep Residual Learning", table 1).

- ``ResNet50``: the CIFAR variant of RepDistiller's ``resnetv2.py`` (3x3 stride-1 stem, no
  max-pool, bottleneck stages 3/4/6/3 of widths 64..512 x4). Names: ``layer1.0.shortcut.0.weight``,
  ``linear``.
- ``resnet18``, ``resnet34``, ``resnet50``: ImageNet ResNets with torchvision's parameter names
  (``conv1``, ``bn1``, ``layer1.0.downsample.0.weight``, ``fc``), stride in the 3x3 conv of a
  bottleneck (v1.5), so torchvision checkpoints load with strict=True.

A block computes relu(branch(x) + shortcut(x)); its final ReLU is its own non-in-place module
``out_relu`` so the sum before it can be tapped as the stage's pre-activation.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from wdistill.models.registry import register
from wdistill.models.taps import TapSpec
from wdistill.models.zoo.resnet_cifar import BasicBlock


def _init_he(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _stage_spec(stem_pre: str, blocks: list[int], embed: str) -> TapSpec:
    stages = [f"layer{i + 1}" for i in range(len(blocks))]
    return TapSpec(feats=["relu"] + stages,
                   preact=[stem_pre] + [f"{s}.{n - 1}.out_relu:in" for s, n in zip(stages, blocks)],
                   embed=embed)


# --- CIFAR ResNet50 (RepDistiller resnetv2.py names) -------------------------------------------

class CifarBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False),
                                          nn.BatchNorm2d(out))
        self.out_relu = nn.ReLU()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.out_relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks: list[int], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()  # not in-place: bn1's output is the stem pre-activation
        for i, (planes, n) in enumerate(zip([64, 128, 256, 512], blocks)):
            setattr(self, f"layer{i + 1}", self._make_layer(planes, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * CifarBottleneck.expansion, num_classes)
        self.blocks = list(blocks)
        _init_he(self)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(CifarBottleneck(self.in_planes, planes, s))
            self.in_planes = planes * CifarBottleneck.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        return _stage_spec("bn1", self.blocks, "linear:in")


@register
def ResNet50(**kw): return CifarResNet([3, 4, 6, 3], **kw)


# --- ImageNet ResNets (torchvision names) ------------------------------------------------------
# BasicBlock is the CIFAR one: torchvision uses the same parameter names.

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.out_relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.out_relu(out + identity)


class ImageNetResNet(nn.Module):
    def __init__(self, block, blocks: list[int], num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()  # not in-place: bn1's output is the stem pre-activation
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, n) in enumerate(zip([64, 128, 256, 512], blocks)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.blocks = list(blocks)
        _init_he(self)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        # Stem taken before the max-pool, as mdistiller's ImageNet ResNets.
        return _stage_spec("bn1", self.blocks, "fc:in")


@register
def resnet18(**kw): return ImageNetResNet(BasicBlock, [2, 2, 2, 2], **kw)
@register
def resnet34(**kw): return ImageNetResNet(BasicBlock, [3, 4, 6, 3], **kw)
@register
def resnet50(**kw): return ImageNetResNet(Bottleneck, [3, 4, 6, 3], **kw)

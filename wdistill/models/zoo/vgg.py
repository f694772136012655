"""VGG with batch norm for CIFAR (Simonyan & Zisserman 2015, table 1; FC head replaced by one
linear layer on globally pooled features, as in RepDistiller).

Five conv blocks; within a block each 3x3 conv is followed by BN and ReLU, except that the last
ReLU of a block is applied outside it, so a block's output is its pre-activation. Max-pooling
(2x2) follows blocks 0-2; block 3 is pooled only for inputs of height >= 64 (RepDistiller pools it
only for 64x64 Tiny-ImageNet inputs, so 32x32 CIFAR maps stay 4x4 in blocks 3 and 4).
Parameter names follow RepDistiller's ``vgg.py`` (``block0.0.weight``, ``block0.1.running_mean``,
``classifier.weight``), batch-norm variant.
"""
from __future__ import annotations

import math

import torch.nn as nn

from wdistill.models.registry import register
from wdistill.models.taps import TapSpec

CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(widths: list[int], in_planes: int) -> nn.Sequential:
    """conv3x3-BN-ReLU per width, minus the final ReLU (the net applies it, so it can be tapped)."""
    layers = []
    for w in widths:
        layers += [nn.Conv2d(in_planes, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_planes = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        ins = [in_channels] + [c[-1] for c in cfg[:-1]]
        for i, (widths, c_in) in enumerate(zip(cfg, ins)):
            setattr(self, f"block{i}", _block(widths, c_in))
            # One ReLU module per block, not in-place: its input is the tapped pre-activation.
            setattr(self, f"relu{i}", nn.ReLU())
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        pool_block3 = x.shape[2] >= 64
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if pool_block3:
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(self.pool4(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        return TapSpec(
            feats=[f"relu{i}" for i in range(5)],
            preact=[f"block{i}" for i in range(5)],
            embed="classifier:in",
        )


@register
def vgg8(**kw): return VGG(CFG["vgg8"], **kw)
@register
def vgg11(**kw): return VGG(CFG["vgg11"], **kw)
@register
def vgg13(**kw): return VGG(CFG["vgg13"], **kw)
@register
def vgg16(**kw): return VGG(CFG["vgg16"], **kw)
@register
def vgg19(**kw): return VGG(CFG["vgg19"], **kw)

"""MobileNetV1 for ImageNet (Howard et al. 2017, "MobileNets", table 1), width 1.0, as the
ResNet50 -> MobileNetV1 student of mdistiller and WKD.

``model``: a 3x3 stride-2 conv-BN-ReLU to 32 channels, then 13 depthwise-separable units
(dw3x3-BN-ReLU, pw1x1-BN-ReLU), then global pooling; ``fc`` to the classes.
Parameter names follow mdistiller's ``imagenet/mobilenetv1.py`` (``model.0.0.weight``,
``model.1.3.weight`` for a unit's pointwise conv, ``fc.weight``); index 14 of ``model`` is the
pooling layer (no parameters), here adaptive so any input size works.

Features as mdistiller: the stem, then the outputs of units 3, 5, 11 and 13 (stride 4, 8, 16,
32); pre-activations at the input of those units' last ReLU.
"""
from __future__ import annotations

import torch.nn as nn

from wdistill.models.registry import register
from wdistill.models.taps import TapSpec

# (output channels, stride) of the 13 depthwise-separable units
UNITS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
         (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
STAGE_ENDS = [3, 5, 11, 13]


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # Not in-place: the BN output is tapped as the stem pre-activation.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


def _conv_dw(c_in: int, c_out: int, stride: int, tapped: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=not tapped),  # a stage's last ReLU keeps its input for the tap
    )


class MobileNetV1Net(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        layers = [_conv_bn(in_channels, 32, 2)]
        c = 32
        for i, (out, stride) in enumerate(UNITS, start=1):
            layers.append(_conv_dw(c, out, stride, tapped=i in STAGE_ENDS))
            c = out
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.model(x).flatten(1))

    def tap_spec(self) -> TapSpec:
        return TapSpec(feats=["model.0"] + [f"model.{i}" for i in STAGE_ENDS],
                       preact=["model.0.2:in"] + [f"model.{i}.5:in" for i in STAGE_ENDS],
                       embed="fc:in")


@register
def MobileNetV1(**kw): return MobileNetV1Net(**kw)

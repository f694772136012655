"""The model zoo, one file per architecture family; each constructor registers itself by name.

Parameter names follow the reference codebases (RepDistiller, mdistiller, torchvision), so their
published checkpoints load with ``strict=True``.
"""
from wdistill.models.zoo import (  # noqa: F401
                                 mobilenetv1,
                                 mobilenetv2,
                                 resnet_cifar,
                                 resnet_imagenet,
                                 shufflenetv1,
                                 shufflenetv2,
                                 vgg,
                                 wrn,
)

"""MobileNet (v1) of Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", with a CIFAR stem.

Layout (Table 1 of the paper), channel counts at ``width_mult=1``::

    stem      conv3x3(in, 32, stride 1 here, 2 on ImageNet) - BN - ReLU
    blocks.0  dw3x3(32)  - BN - ReLU, pw1x1(32 -> 64)  - BN - ReLU    stride 1
    blocks.1  ... 64 -> 128, stride 2          blocks.2   128 -> 128
    blocks.3  128 -> 256, stride 2             blocks.4   256 -> 256
    blocks.5  256 -> 512, stride 2             blocks.6-10 512 -> 512 (five times)
    blocks.11 512 -> 1024, stride 2            blocks.12  1024 -> 1024
    pool      global average pool
    classifier Linear(1024, num_classes)

Module names read like the paper: ``blocks.3.depthwise.conv``, ``blocks.3.pointwise.bn``, ``classifier``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ajpq_env.models._checks import check_builder_args, init_mobilenet_

__all__ = ["MOBILENET_V1_BLOCKS", "MobileNetV1", "mobilenet_v1"]

#: (output channels, stride) of the 13 depthwise-separable blocks, at ``width_mult=1``; the stem has 32 channels.
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
_STEM_CHANNELS = 32


def _scaled(channels: int, width_mult: float, divisor: int = 8) -> int:
    """``channels * width_mult`` rounded to the nearest multiple of ``divisor`` (torchvision's rule: at least
    ``divisor``, and never more than 10% below the exact product)."""
    value = channels * width_mult
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(inplace=True),
        )
    )


class DepthwiseSeparable(nn.Sequential):
    """One MobileNet block: ``depthwise`` (3x3 per-channel conv, carries the stride) then ``pointwise`` (1x1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            OrderedDict(
                depthwise=_conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels),
                pointwise=_conv_bn_relu(in_channels, out_channels, 1, 1),
            )
        )


class MobileNetV1(nn.Module):
    """MobileNet v1: ``stem`` -> 13 ``blocks`` -> ``pool`` -> ``classifier``.

    Args:
        num_classes: number of output logits. Default 10.
        width_mult: the paper's width multiplier alpha, applied to every layer; channels rounded to multiples
            of 8. Default 1.0.
        in_channels: input image channels. Default 3.
        stem_stride: stride of the stem conv: 1 for 32x32 inputs (CIFAR), 2 for ImageNet. Default 1.
    """

    def __init__(
        self, num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3, stem_stride: int = 1
    ) -> None:
        super().__init__()
        check_builder_args(num_classes, width_mult, in_channels)
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 (CIFAR) or 2 (ImageNet), got {stem_stride!r}")
        channels = _scaled(_STEM_CHANNELS, width_mult)
        self.stem = _conv_bn_relu(in_channels, channels, 3, stem_stride)
        blocks = []
        for out_channels, stride in MOBILENET_V1_BLOCKS:
            out_channels = _scaled(out_channels, width_mult)
            blocks.append(DepthwiseSeparable(channels, out_channels, stride))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_mobilenet_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def mobilenet_v1(num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> nn.Module:
    """MobileNet v1 (Howard et al. 2017) with a CIFAR stem (stride 1): total stride 16, 2x2 final map on 32x32.

    Args:
        num_classes: number of output logits. Default 10.
        width_mult: width multiplier alpha; channels rounded to multiples of 8. Default 1.0.
        in_channels: input image channels: 3 for RGB, 1 for MNIST. Default 3.

    Returns:
        A randomly initialised :class:`MobileNetV1` (Kaiming-normal convs, fan_out).

    >>> import torch
    >>> mobilenet_v1()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, in_channels=in_channels, stem_stride=1)

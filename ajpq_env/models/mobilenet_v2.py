"""MobileNetV2 (Sandler et al. 2018): torchvision's network with a CIFAR stem, and the ImageNet original.

The CIFAR variant keeps torchvision's module names (``features.0.0`` is the stem conv, ``features.N`` the
inverted-residual blocks, ``classifier.1`` the Linear layer) so recipes and state dicts stay comparable with the
ImageNet model; only the stem conv changes (stride 1 instead of 2, ``in_channels`` inputs).
"""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models import MobileNet_V2_Weights

from ajpq_env.models._checks import check_builder_args

__all__ = ["mobilenet_v2", "mobilenet_v2_imagenet"]


def mobilenet_v2(num_classes: int = 10, width_mult: float = 1.0, in_channels: int = 3) -> nn.Module:
    """MobileNetV2 for small images (CIFAR-10 32x32, MNIST 28x28): torchvision's model with a stride-1 stem.

    On a 32x32 input the total stride is 16 (instead of 32 on ImageNet), so the last feature map is 2x2.

    Args:
        num_classes: number of output logits. Default 10.
        width_mult: channel multiplier applied to every layer except the last 1x1 conv (1280 channels when
            ``width_mult <= 1``), channels rounded to multiples of 8 as in torchvision. Default 1.0.
        in_channels: input image channels: 3 for RGB, 1 for MNIST. Default 3.

    Returns:
        A randomly initialised ``torchvision.models.MobileNetV2`` (Kaiming-normal convs, fan_out).

    >>> import torch
    >>> mobilenet_v2(width_mult=0.5, in_channels=1)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    check_builder_args(num_classes, width_mult, in_channels)
    model = torchvision.models.MobileNetV2(num_classes=num_classes, width_mult=float(width_mult))
    old = model.features[0][0]
    stem = nn.Conv2d(in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out")  # as torchvision initialises every other conv
    model.features[0][0] = stem
    return model


def mobilenet_v2_imagenet(weights: MobileNet_V2_Weights | str | None = None) -> nn.Module:
    """torchvision's ImageNet MobileNetV2 (224x224 inputs, 1000 classes), the paper's setting.

    Args:
        weights: ``None`` (default) for random initialisation, or a ``torchvision.models.MobileNet_V2_Weights``
            member or its name (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``, ``"DEFAULT"``). Weights are read from the torch hub cache
            (``$TORCH_HOME/hub/checkpoints``) and **downloaded** into it when absent, so pass them only when a
            download is acceptable or the file is already cached.

    Returns:
        ``torchvision.models.MobileNetV2`` (3,504,872 parameters).
    """
    if isinstance(weights, str):
        try:
            weights = MobileNet_V2_Weights[weights]
        except KeyError:
            valid = ", ".join(MobileNet_V2_Weights.__members__)
            raise ValueError(f"unknown MobileNetV2 weights {weights!r}; expected None or one of: {valid}") from None
    return torchvision.models.mobilenet_v2(weights=weights)

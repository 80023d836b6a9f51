"""Argument checks and initialisation shared by the model builders."""

from __future__ import annotations

from torch import nn

__all__ = ["check_builder_args", "init_mobilenet_"]


def check_builder_args(num_classes: int, width_mult: float = 1.0, in_channels: int = 3) -> None:
    """Raise ``ValueError`` when a builder argument is out of range.

    Args:
        num_classes: number of output logits; a positive integer.
        width_mult: channel multiplier (MobileNet's alpha); a positive float. Default 1.0.
        in_channels: channels of the input image (1 for MNIST, 3 for RGB); a positive integer. Default 3.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or not width_mult > 0:
        raise ValueError(f"width_mult must be a positive number such as 0.5 or 1.0, got {width_mult!r}")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer (1 for grayscale, 3 for RGB), got {in_channels!r}")


def init_mobilenet_(module: nn.Module) -> None:
    """Initialise ``module`` in place the way torchvision initialises MobileNetV2.

    Conv2d: Kaiming normal (fan_out), zero bias. BatchNorm: weight 1, bias 0. Linear: N(0, 0.01), zero bias.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

"""Model registry: every builder by name, for tasks, configs and command lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ajpq_env.models.mobilenet_v1 import mobilenet_v1
from ajpq_env.models.mobilenet_v2 import mobilenet_v2, mobilenet_v2_imagenet
from ajpq_env.models.resnet_cifar import resnet20
from ajpq_env.models.skynet import skynet

__all__ = ["MODELS", "build_model"]

#: Builder of every model by name. Builders take keyword arguments only and return a randomly initialised
#: model (``mobilenet_v2_imagenet`` can load torchvision weights).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_imagenet": mobilenet_v2_imagenet,
    "resnet20": resnet20,
    "skynet": skynet,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``.

    Args:
        name: a key of :data:`MODELS`, e.g. ``"mobilenet_v2"``.
        **kwargs: passed to the builder, e.g. ``num_classes=10, width_mult=0.5, in_channels=1``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).

    >>> build_model("resnet20", num_classes=100).linear.out_features
    100
    """
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(MODELS))}") from None
    return builder(**kwargs)

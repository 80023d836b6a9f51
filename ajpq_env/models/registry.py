"""Model registry: every builder by name, for tasks, configs and command lines."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ajpq_env.fileio import check_int
from ajpq_env.models.mobilenet_v1 import mobilenet_v1
from ajpq_env.models.mobilenet_v2 import mobilenet_v2, mobilenet_v2_imagenet
from ajpq_env.models.resnet_cifar import resnet20
from ajpq_env.models.skynet import skynet

__all__ = ["MAX_INPUT_SIDE", "MAX_IN_CHANNELS", "MAX_NUM_CLASSES", "MAX_WIDTH_MULT", "MODELS", "NO_DOWNLOAD_KWARGS",
           "build_model", "check_architecture"]

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


#: Limits of an architecture read from a file (an artefact's header, a fine-tuned checkpoint): room above every
#: task of the package, small enough that building and tracing the network fits in memory.
MAX_NUM_CLASSES = 10_000
MAX_WIDTH_MULT = 4.0
MAX_IN_CHANNELS = 16
MAX_INPUT_SIDE = 1024
#: builder arguments that would make a builder fetch weights: a file never makes a loader download anything
NO_DOWNLOAD_KWARGS = ("weights", "pretrained", "progress")


def check_architecture(builder: object, kwargs: object, input_shape: object, source: str) -> None:
    """Check an architecture read from a file before anything is built from it: ``ValueError`` naming ``source``,
    the field and what is expected (instead of a ``TypeError`` from the builder or a tracing ``RuntimeError``).

    :param builder: a key of :data:`MODELS`
    :param kwargs: the builder's keyword arguments: parameters of the builder, within the limits above
    :param input_shape: one sample's shape ``(C, H, W)``, C the channels the builder's first layer takes
    """
    if builder not in MODELS:
        raise ValueError(f"{source}: unknown builder {builder!r}; expected one of {sorted(MODELS)}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{source}: builder_kwargs must be a JSON object, got {type(kwargs).__name__}")
    accepted = inspect.signature(MODELS[builder]).parameters
    unknown = sorted(str(k) for k in kwargs if k not in accepted)
    if unknown:
        raise ValueError(f"{source}: builder {builder!r} takes no argument {', '.join(unknown)} (it takes "
                         f"{', '.join(accepted) or 'none'})")
    for key in NO_DOWNLOAD_KWARGS:
        if kwargs.get(key) not in (None, False):
            raise ValueError(f"{source}: builder argument {key}={kwargs[key]!r} is refused: a file never makes "
                             "the loader fetch weights")
    if "num_classes" in kwargs:
        check_int(kwargs["num_classes"], 1, MAX_NUM_CLASSES, "builder_kwargs.num_classes", source)
    if "in_channels" in kwargs:
        check_int(kwargs["in_channels"], 1, MAX_IN_CHANNELS, "builder_kwargs.in_channels", source)
    if "width_mult" in kwargs:
        w = kwargs["width_mult"]
        if isinstance(w, bool) or not isinstance(w, int | float) or not (0 < w <= MAX_WIDTH_MULT):
            raise ValueError(f"{source}: builder_kwargs.width_mult must be in (0, {MAX_WIDTH_MULT}], got {w!r}")
    if not (isinstance(input_shape, Sequence) and not isinstance(input_shape, str) and len(input_shape) == 3):
        raise ValueError(f"{source}: input_shape must be [C, H, W], got {input_shape!r}")
    channels = check_int(input_shape[0], 1, MAX_IN_CHANNELS, "input_shape channels", source)
    for side in input_shape[1:]:
        check_int(side, 1, MAX_INPUT_SIDE, "input_shape height/width", source)
    takes = kwargs.get("in_channels", accepted["in_channels"].default if "in_channels" in accepted else 3)
    if channels != takes:
        raise ValueError(f"{source}: input_shape has {channels} channels, but {builder!r} with these arguments "
                         f"takes {takes}")

"""Base models of the AJPQ tasks: MobileNet v1/v2 with CIFAR stems, CIFAR ResNet-20, ImageNet MobileNetV2, SkyNet.

>>> from ajpq_env.models import build_model
>>> model = build_model("mobilenet_v2", num_classes=10, width_mult=0.5, in_channels=1)
"""

from ajpq_env.models.mobilenet_v1 import MobileNetV1, mobilenet_v1
from ajpq_env.models.mobilenet_v2 import mobilenet_v2, mobilenet_v2_imagenet
from ajpq_env.models.registry import MODELS, build_model
from ajpq_env.models.resnet_cifar import ResNetCifar, load_resnet20_weights, resnet20
from ajpq_env.models.skynet import SKYNET_ANCHORS, SkyNet, load_skynet_weights, skynet

__all__ = [
    "MODELS",
    "SKYNET_ANCHORS",
    "MobileNetV1",
    "ResNetCifar",
    "SkyNet",
    "build_model",
    "load_resnet20_weights",
    "load_skynet_weights",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v2_imagenet",
    "resnet20",
    "skynet",
]

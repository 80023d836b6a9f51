"""ResNet-20 for CIFAR-10 (He et al. 2015, "Deep Residual Learning for Image Recognition", section 4.2).

Three stages of three basic blocks (16, 32, 64 channels; 6n+2 = 20 layers with n = 3) and option-A shortcuts:
when a block halves the resolution and doubles the channels, the shortcut subsamples ``x[:, :, ::2, ::2]`` and
zero-pads the channel dimension by ``planes // 4`` on each side, so it has no parameters. Parameter names are
exactly those of akamaster/pytorch_resnet_cifar10 (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``linear``), so
its published checkpoints load with ``strict=True`` (:func:`load_resnet20_weights`). The model was trained with
ImageNet mean/std input normalisation (``ajpq_env.tasks.data.NORMALIZATION["cifar10"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ajpq_env.models._checks import check_builder_args

__all__ = ["BasicBlock", "PadShortcut", "ResNetCifar", "load_resnet20_weights", "resnet20"]


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by 2 and zero channels, ``pad`` on each side. No parameters.

    Args:
        pad: zero channels added before and after the input channels (``planes // 4``).
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv (2 at the start of stages 2 and 3). Default 1.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet (6n+2 layers): stem conv, three stages of ``num_blocks`` basic blocks, average pool, linear.

    Args:
        num_blocks: basic blocks per stage; ``(3, 3, 3)`` is ResNet-20, ``(9, 9, 9)`` ResNet-56.
        num_classes: number of output logits. Default 10.
    """

    def __init__(self, num_blocks: tuple[int, int, int] = (3, 3, 3), num_classes: int = 10) -> None:
        super().__init__()
        check_builder_args(num_classes)
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # akamaster's _weights_init: Kaiming normal (fan_in), PyTorch defaults elsewhere
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10) -> nn.Module:
    """ResNet-20 for 32x32 RGB inputs: 269,722 parameters with 10 classes.

    Args:
        num_classes: number of output logits. Default 10.

    >>> import torch
    >>> resnet20()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return ResNetCifar((3, 3, 3), num_classes=num_classes)


def load_resnet20_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a ResNet-20 checkpoint into ``model`` in place (``strict=True``) and return the model.

    Accepts akamaster's ``resnet20-12fca82f.th`` (``{'best_prec1', 'state_dict'}`` with ``module.``-prefixed
    keys, saved from ``nn.DataParallel``), a ``{'state_dict': ...}`` dict without prefix such as
    ``resnet20-cifar10jpeg-ft2ep.pt``, or a bare state dict. Read with ``torch.load(weights_only=True)``, so no
    code in the file is executed.

    Args:
        model: a model built by :func:`resnet20`.
        path: the checkpoint file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no state dict.
        RuntimeError: the keys or shapes do not match ``model`` (from ``load_state_dict``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ResNet-20 weights not found at {path}; pass the path of resnet20-12fca82f.th (akamaster/"
            "pytorch_resnet_cifar10, pretrained_models/) or of a checkpoint written by benchmarks/pretrain.py"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} holds no state dict: expected a dict of tensors or a dict with a 'state_dict' key")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True)
    return model

"""Tests of ajpq_env.models: shapes, parameter counts recomputed independently, names, registry, weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from ajpq_env.models import (
    MODELS,
    build_model,
    load_resnet20_weights,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v2_imagenet,
    resnet20,
)
from ajpq_env.models.mobilenet_v1 import MOBILENET_V1_BLOCKS
from ajpq_env.models.resnet_cifar import PadShortcut


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("name", "kwargs", "input_shape", "classes"),
    [
        ("mobilenet_v1", {}, (2, 3, 32, 32), 10),
        ("mobilenet_v1", {"width_mult": 0.25, "in_channels": 1, "num_classes": 7}, (2, 1, 28, 28), 7),
        ("mobilenet_v2", {}, (2, 3, 32, 32), 10),
        ("mobilenet_v2", {"width_mult": 0.5, "in_channels": 1}, (2, 1, 28, 28), 10),
        ("resnet20", {}, (2, 3, 32, 32), 10),
        ("resnet20", {"num_classes": 100}, (1, 3, 32, 32), 100),
        ("mobilenet_v2_imagenet", {}, (1, 3, 224, 224), 1000),
    ],
)
def test_output_shape(name: str, kwargs: dict, input_shape: tuple[int, ...], classes: int) -> None:
    model = build_model(name, **kwargs).eval()
    with torch.inference_mode():
        assert model(torch.randn(input_shape)).shape == (input_shape[0], classes)


def test_registry_covers_every_builder() -> None:
    assert set(MODELS) == {"mobilenet_v1", "mobilenet_v2", "mobilenet_v2_imagenet", "resnet20", "skynet"}


def test_build_model_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg16'") as info:
        build_model("vgg16")
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"width_mult": 0}, {"width_mult": -0.5}, {"num_classes": 0}, {"in_channels": 0}, {"num_classes": 2.5}]
)
@pytest.mark.parametrize("builder", [mobilenet_v1, mobilenet_v2])
def test_builders_reject_bad_arguments(builder, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be a positive"):
        builder(**kwargs)


def test_mobilenet_v2_imagenet_rejects_unknown_weights_name() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        mobilenet_v2_imagenet(weights="IMAGENET_V9")


# ----------------------------------------------------------------------------------------- parameter counts


def resnet_cifar_params(num_blocks: int = 3, num_classes: int = 10) -> int:
    """Parameters of a CIFAR ResNet from its definition: 3x3 convs without bias, BN weight+bias, linear."""
    total = 3 * 16 * 9 + 2 * 16
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(num_blocks):
            total += in_planes * planes * 9 + planes * planes * 9 + 4 * planes
            in_planes = planes
    return total + 64 * num_classes + num_classes


def mobilenet_v1_params(num_classes: int, width_mult: float, in_channels: int) -> int:
    """Parameters of MobileNet v1 from the paper's Table 1 (channel counts exact multiples of 8 here)."""
    channels = int(32 * width_mult)
    total = in_channels * channels * 9 + 2 * channels
    for out_channels, _ in MOBILENET_V1_BLOCKS:
        out_channels = int(out_channels * width_mult)
        total += channels * 9 + 2 * channels  # depthwise 3x3 + BN
        total += channels * out_channels + 2 * out_channels  # pointwise 1x1 + BN
        channels = out_channels
    return total + channels * num_classes + num_classes


def test_resnet20_param_count() -> None:
    assert count_params(resnet20()) == resnet_cifar_params() == 269_722


@pytest.mark.parametrize(
    ("num_classes", "width_mult", "in_channels"), [(10, 1.0, 3), (10, 0.5, 3), (10, 0.25, 1), (1000, 1.0, 3)]
)
def test_mobilenet_v1_param_count(num_classes: int, width_mult: float, in_channels: int) -> None:
    model = mobilenet_v1(num_classes=num_classes, width_mult=width_mult, in_channels=in_channels)
    assert count_params(model) == mobilenet_v1_params(num_classes, width_mult, in_channels)


def test_mobilenet_v1_imagenet_size_matches_paper() -> None:
    # Howard et al. 2017, Table 8: 1.0 MobileNet-224 has 4.2 million parameters (4,231,976 in the Keras reference)
    assert count_params(mobilenet_v1(num_classes=1000)) == 4_231_976


def test_mobilenet_v2_param_count_from_torchvision_metadata() -> None:
    imagenet = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["num_params"]  # 3,504,872
    assert count_params(mobilenet_v2_imagenet()) == imagenet
    assert count_params(mobilenet_v2(num_classes=1000)) == imagenet  # the stem changes stride, not size
    classifier_delta = (1280 + 1) * (1000 - 10)
    assert count_params(mobilenet_v2()) == imagenet - classifier_delta
    assert count_params(mobilenet_v2(in_channels=1)) == imagenet - classifier_delta - 2 * 32 * 3 * 3


# ------------------------------------------------------------------------------------- structure and names


def test_mobilenet_v2_keeps_torchvision_names_with_cifar_stem() -> None:
    model = mobilenet_v2(width_mult=0.5, in_channels=1)
    reference = torchvision.models.MobileNetV2(num_classes=10, width_mult=0.5)
    assert list(model.state_dict()) == list(reference.state_dict())
    stem = model.features[0][0]
    assert (stem.in_channels, stem.stride, stem.padding) == (1, (1, 1), (1, 1))
    assert model.get_submodule("classifier.1").out_features == 10
    # total stride 16: a 32x32 input leaves a 2x2 map (torchvision's ImageNet stem would leave 1x1)
    assert model.features(torch.zeros(1, 1, 32, 32)).shape[-2:] == (2, 2)


def test_mobilenet_v1_layout() -> None:
    model = mobilenet_v1()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 13
    assert convs[0].stride == (1, 1)  # CIFAR stem
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 13 and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert [c.stride[0] for c in depthwise] == [s for _, s in MOBILENET_V1_BLOCKS]
    assert model.get_submodule("blocks.12.pointwise.conv").out_channels == 1024
    assert model.classifier.in_features == 1024
    assert model.blocks(model.stem(torch.zeros(1, 3, 32, 32))).shape == (1, 1024, 2, 2)


def test_resnet20_parameter_names_match_akamaster() -> None:
    names = list(resnet20().state_dict())
    assert names[:2] == ["conv1.weight", "bn1.weight"]
    assert names[-2:] == ["linear.weight", "linear.bias"]
    for stage in (1, 2, 3):
        for block in range(3):
            for conv in ("conv1", "conv2"):
                assert f"layer{stage}.{block}.{conv}.weight" in names
    assert not any("shortcut" in name for name in names)  # option A: parameter-free shortcuts


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(pad=8)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet20"])
def test_initialisation_is_seeded_and_kaiming(name: str) -> None:
    torch.manual_seed(0)
    a = build_model(name)
    torch.manual_seed(0)
    b = build_model(name)
    for (key, value), other in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(value, other), key


def test_mobilenet_v2_new_stem_is_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    stem = mobilenet_v2().features[0][0]
    expected = (2 / (stem.out_channels * 3 * 3)) ** 0.5  # 0.083, as torchvision inits its convs
    assert abs(stem.weight.std().item() - expected) < 0.01  # PyTorch's default init would give 0.111


# -------------------------------------------------------------------------------------------------- weights


def test_load_resnet20_weights_strips_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = resnet20()
    for container, prefix in (({"best_prec1": 91.7}, "module."), ({}, "")):
        path = tmp_path / f"checkpoint{prefix}.th"
        torch.save({**container, "state_dict": {prefix + k: v for k, v in source.state_dict().items()}}, path)
        target = load_resnet20_weights(resnet20(), path)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key


def test_load_resnet20_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resnet20-12fca82f.th"):
        load_resnet20_weights(resnet20(), tmp_path / "absent.th")
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": mobilenet_v1().state_dict()}, wrong)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_resnet20_weights(resnet20(), wrong)


@pytest.mark.data
def test_resnet20_reference_accuracy_on_cifar10_jpeg_copy() -> None:
    """ResNet-20 (akamaster) scores 81.03% on the JPEG copy of CIFAR-10 test (see shared/data/SOURCES.md)."""
    from ajpq_env.tasks.data import NORMALIZATION, load_cifar10, to_tensor

    data, weights = os.environ.get("AJPQ_DATA"), os.environ.get("AJPQ_WEIGHTS")
    if not data:
        pytest.skip("set AJPQ_DATA to a CIFAR-10 root (e.g. shared/data/cifar10) to run this check")
    if not weights or not (Path(weights) / "resnet20-12fca82f.th").is_file():
        pytest.skip("set AJPQ_WEIGHTS to a directory holding resnet20-12fca82f.th to run this check")
    images, labels = load_cifar10(data, "test")
    model = load_resnet20_weights(resnet20(), Path(weights) / "resnet20-12fca82f.th").eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), 1000):
            logits = model(to_tensor(images[start : start + 1000], *NORMALIZATION["cifar10"]))
            correct += int((logits.argmax(1).numpy() == labels[start : start + 1000]).sum())
    assert 0.80 <= correct / len(labels) <= 0.82

"""Smoke tests of benchmarks/pretrain.py with tiny budgets, and a check of the shipped embedded-default weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ajpq_env.models import build_model
from ajpq_env.tasks.data import NORMALIZATION, load_mnist_5k, stratified_split, to_tensor
from benchmarks import pretrain

WEIGHTS = Path(pretrain.__file__).resolve().parents[1] / "ajpq_env" / "tasks" / "weights"


def check_outputs(out: Path, task: str) -> dict:
    metadata = json.loads((out / f"{task}.json").read_text())
    payload = (out / f"{task}.pt").read_bytes()
    assert metadata["sha256"] == hashlib.sha256(payload).hexdigest()
    assert metadata["file_bytes"] == len(payload)
    state_dict = torch.load(out / f"{task}.pt", weights_only=True)
    model = build_model(metadata["model"]["name"], **metadata["model"]["kwargs"])
    model.load_state_dict(state_dict, strict=True)
    assert metadata["params"] == sum(p.numel() for p in model.parameters())
    assert 0.0 <= metadata["accuracy"]["test"] <= 1.0 and 0.0 <= metadata["accuracy"]["search"] <= 1.0
    assert metadata["command"].startswith("python -m benchmarks.pretrain")
    return metadata


def test_pretrain_mnist_smoke(tmp_path: Path) -> None:
    argv = ["--task", "mnist-mobilenet_v2", "--epochs", "1", "--train-subset", "64", "--width-mult", "0.25",
            "--batch-size", "32", "--out", str(tmp_path), "--threads", "1"]
    metadata = pretrain.main(argv)
    assert check_outputs(tmp_path, "mnist-mobilenet_v2") == json.loads(json.dumps(metadata))
    assert metadata["model"]["kwargs"] == {"num_classes": 10, "in_channels": 1, "width_mult": 0.25}
    assert metadata["splits"]["sizes"] == {"train": 64, "search": 1000, "test": 1000}
    assert metadata["epochs"] == 1 and metadata["seed"] == 0


def test_pretrain_cifar_smoke_on_tiny_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 100), ("test", 20)):
        labels = np.repeat(np.arange(10), n // 10)
        np.savez(tmp_path / f"{split}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=labels)
    argv = ["--task", "cifar10-resnet20", "--data", str(tmp_path), "--epochs", "1", "--schedule", "cosine",
            "--out", str(tmp_path / "out")]
    metadata = pretrain.main(argv)
    check_outputs(tmp_path / "out", "cifar10-resnet20")
    assert metadata["splits"]["sizes"] == {"train": 90, "search": 10, "test": 20}
    assert metadata["data_root"] == str(tmp_path.resolve())


def test_pretrain_rejects_width_for_resnet(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--width-mult does not apply"):
        pretrain.main(["--task", "cifar10-resnet20", "--width-mult", "0.5", "--out", str(tmp_path)])


def test_augment_keeps_shape_and_pixels() -> None:
    images = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3)
    generator = torch.Generator().manual_seed(0)
    out = pretrain.augment(images, crop_pad=0, flip=True, generator=generator)
    for original, augmented in zip(images, out):
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(1))
    out = pretrain.augment(images, crop_pad=2, flip=False, generator=generator)
    assert out.shape == images.shape and out.dtype == torch.uint8


@pytest.mark.skipif(not (WEIGHTS / "mnist-mobilenet_v2.json").is_file(), reason="embedded weights not trained yet")
def test_shipped_mnist_weights_match_their_metadata() -> None:
    metadata = check_outputs(WEIGHTS, "mnist-mobilenet_v2")
    assert metadata["accuracy"]["test"] >= 0.97
    model = build_model(metadata["model"]["name"], **metadata["model"]["kwargs"])
    model.load_state_dict(torch.load(WEIGHTS / "mnist-mobilenet_v2.pt", weights_only=True))
    images, labels = load_mnist_5k()
    test = stratified_split(labels, {"train": 0.6, "search": 0.2, "test": 0.2}, seed=0)["test"]
    with torch.inference_mode():
        logits = model.eval()(to_tensor(images[test], *NORMALIZATION["mnist"]))
    accuracy = float((logits.argmax(1).numpy() == labels[test]).mean())
    assert accuracy == pytest.approx(metadata["accuracy"]["test"], abs=0.002)  # <= 2 of 1000 may flip

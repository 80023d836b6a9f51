"""Task registry: metadata recomputed from the shipped weights, splits, and clear errors for missing files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ajpq_env.compression import CompressionGraph, CostModel
from ajpq_env.models import build_model
from ajpq_env.tasks import TASKS, load_task, synthetic_task

PACKAGED = [name for name, spec in TASKS.items() if spec.meta.get("sha256")]


def _cifar_root() -> str:
    root = os.environ.get("AJPQ_DATA")
    if not root or not os.path.isdir(root):
        pytest.skip("set AJPQ_DATA to a CIFAR-10 root (e.g. ../shared/data/cifar10) to run this test")
    return root


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_metadata_is_recomputed(name):
    spec = TASKS[name]
    if spec.dataset == "cifar10":
        _cifar_root()
    task = load_task(name)
    meta = spec.meta
    assert sum(p.numel() for p in task.model.parameters()) == meta["params"]
    graph = CompressionGraph(task.model, task.example_input())
    assert CostModel(graph).fp32.macs == meta["macs"]
    # accuracies are ratios of counts and reproduce exactly; a mean IoU of float box outputs moves by ~1e-8 between
    # CPUs whose convolution kernels differ (AVX2 vs AVX-512 measured 1.4e-8 on embedded-skynet's search split)
    tolerance = 1e-9 if spec.metric == "top1" else 1e-6
    assert task.evaluate(task.model, "test") == pytest.approx(meta["fp32_test"], abs=tolerance)
    assert task.evaluate(task.model, "search") == pytest.approx(meta["fp32_search"], abs=tolerance)


def test_embedded_default_is_shipped():
    assert "mnist5k-mobilenet_v2" in PACKAGED, "the embedded default's weights must ship inside the package"
    task = load_task("mnist5k-mobilenet_v2")
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 3000, "search": 1000, "test": 1000}
    assert TASKS["mnist5k-mobilenet_v2"].meta["fp32_test"] >= 0.97
    # the splits are disjoint and stratified: every class is in every split
    for split in task.splits.values():
        assert set(split.labels.tolist()) == set(range(10))


def test_search_size_limits_search_split():
    task = load_task("mnist5k-mobilenet_v2", search_size=100)
    assert len(task.splits["search"]) == 100
    # a class-balanced subset (the split's indices are class-sorted: a prefix held two classes), nested in larger ones
    counts = np.bincount(task.splits["search"].labels.numpy(), minlength=10)
    assert counts.tolist() == [10] * 10
    smaller = load_task("mnist5k-mobilenet_v2", search_size=50).splits["search"]
    images = {bytes(image) for image in task.splits["search"].images}
    assert all(bytes(image) in images for image in smaller.images)


@pytest.mark.data
def test_cifar10_resnet20_task():
    root = _cifar_root()
    weights = os.environ.get("AJPQ_WEIGHTS")
    if not weights or not os.path.isfile(os.path.join(weights, TASKS["cifar10-resnet20"].weights)):
        pytest.skip("set AJPQ_WEIGHTS to a folder holding resnet20-cifar10jpeg-ft2ep.pt (../shared/data/weights)")
    task = load_task("cifar10-resnet20", data_root=root)
    # the weights saw all 50,000 training images: search and test are the two halves of the test images
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 50000, "search": 5000, "test": 5000}
    meta = TASKS["cifar10-resnet20"].meta
    search, test = task.evaluate(task.model, "search"), task.evaluate(task.model, "test")
    assert search == pytest.approx(meta["fp32_search"], abs=2e-4) and test == pytest.approx(meta["fp32_test"], abs=2e-4)
    # SOURCES.md: 87.35% on the whole test split of the JPEG copy, the mean of the two halves
    assert (search + test) / 2 == pytest.approx(0.8735, abs=1e-4)


def test_missing_weights_and_data_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("AJPQ_WEIGHTS", raising=False)
    monkeypatch.delenv("AJPQ_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"no weights file 'resnet20-cifar10jpeg-ft2ep.pt'; looked in .*AJPQ_WEIGHTS"):
        load_task("cifar10-resnet20")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("mnist5k-mobilenet_v2", weights=tmp_path / "nope.pt")
    monkeypatch.setenv("AJPQ_WEIGHTS", str(tmp_path))
    (tmp_path / "mnist-mobilenet_v2.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a readable weights file"):
        load_task("mnist5k-mobilenet_v2", weights=tmp_path / "mnist-mobilenet_v2.pt")
    torch.save({"state_dict": build_model("resnet20").state_dict()}, tmp_path / "resnet20-cifar10jpeg-ft2ep.pt")
    with pytest.raises(FileNotFoundError, match="AJPQ_DATA"):
        load_task("cifar10-resnet20", data_root=tmp_path / "no-cifar")


def test_unknown_task():
    with pytest.raises(ValueError, match=r"unknown task 'x'; expected one of \["):
        load_task("x")


def test_synthetic_task_is_deterministic():
    a, b = synthetic_task(seed=3), synthetic_task(seed=3)
    x = a.example_input().repeat(2, 1, 1, 1)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
    assert np.array_equal(a.splits["search"].images, b.splits["search"].images)

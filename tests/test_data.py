"""Tests of ajpq_env.tasks.data: loaders, caches, splits, CIFAR-10 formats and normalisation."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ajpq_env.tasks import data
from ajpq_env.tasks.data import (
    CIFAR10_CLASSES,
    NORMALIZATION,
    balanced_subset,
    cache_dir,
    load_cifar10,
    load_imagefolder_imagenet,
    load_mnist_5k,
    stratified_split,
    to_tensor,
)


def tiny_cifar(n_per_class: int = 3, classes: tuple[int, ...] = (0, 3, 9), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(classes, dtype=np.int64), n_per_class)
    return rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels


# ------------------------------------------------------------------------------------------------------ cache


def test_cache_dir_follows_ajpq_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AJPQ_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AJPQ_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "ajpq"


# ------------------------------------------------------------------------------------------------------ MNIST


def test_load_mnist_5k() -> None:
    images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(10))
    assert np.all(np.bincount(labels) == 500)
    assert images.max() == 255 and images.mean() > 20  # real digits, not blank
    assert (cache_dir() / "mnist_5k.npz").is_file()
    cached_images, cached_labels = load_mnist_5k()
    assert np.array_equal(cached_images, images) and np.array_equal(cached_labels, labels)


def test_load_mnist_5k_without_writable_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("AJPQ_CACHE", str(blocker / "cache"))  # cannot be created, even by root
    with pytest.warns(RuntimeWarning, match="could not write the data cache"):
        images, labels = load_mnist_5k()
    assert images.shape == (5000, 28, 28) and len(labels) == 5000


# ----------------------------------------------------------------------------------------------------- splits


def test_stratified_split_is_deterministic_disjoint_and_stratified() -> None:
    _, labels = load_mnist_5k()
    fractions = {"train": 0.6, "search": 0.2, "test": 0.2}
    split = stratified_split(labels, fractions, seed=0)
    again = stratified_split(labels, fractions, seed=0)
    other = stratified_split(labels, fractions, seed=1)
    assert list(split) == ["train", "search", "test"]
    for name in split:
        assert np.array_equal(split[name], again[name])
        assert split[name].dtype == np.int64
    assert not np.array_equal(split["test"], other["test"])
    everything = np.concatenate(list(split.values()))
    assert len(np.unique(everything)) == len(everything) == len(labels)
    assert {name: len(idx) for name, idx in split.items()} == {"train": 3000, "search": 1000, "test": 1000}
    for name, idx in split.items():
        assert np.all(np.bincount(labels[idx], minlength=10) == round(500 * fractions[name]))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    fractions=st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_properties(counts: list[int], fractions: list[float], seed: int) -> None:
    total = sum(fractions)
    parts = {f"p{i}": f / max(total, 1.0) for i, f in enumerate(fractions)}  # sum <= 1
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    split = stratified_split(labels, parts, seed=seed)
    everything = np.concatenate(list(split.values()))
    assert len(np.unique(everything)) == len(everything)  # disjoint
    for name, idx in split.items():
        assert np.all(np.diff(idx) > 0)
        per_class = np.bincount(labels[idx], minlength=len(counts))
        assert np.all(np.abs(per_class - np.array(counts) * parts[name]) <= 1.0 + 1e-9)  # within one sample
    if sum(parts.values()) > 1 - 1e-12:
        assert len(everything) == len(labels)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [({"a": 0.7, "b": 0.5}, "sum to 1.2"), ({"a": -0.1}, r"in \(0, 1\]"), ({}, "fractions is empty")],
)
def test_stratified_split_rejects_bad_fractions(fractions: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stratified_split(np.zeros(10, dtype=int), fractions, seed=0)


# --------------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_npz_directory_round_trip(tmp_path: Path) -> None:
    train, test = tiny_cifar(seed=1), tiny_cifar(n_per_class=2, seed=2)
    np.savez(tmp_path / "train.npz", x=train[0], y=train[1])
    np.savez(tmp_path / "test.npz", x=test[0], y=test[1])
    for split, (x, y) in (("train", train), ("test", test)):
        images, labels = load_cifar10(tmp_path, split)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        assert np.array_equal(images, x) and np.array_equal(labels, y)


def test_cifar10_single_npz_file(tmp_path: Path) -> None:
    x, y = tiny_cifar()
    both = tmp_path / "both.npz"
    np.savez(both, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    assert len(load_cifar10(both, "train")[1]) == len(y)
    assert len(load_cifar10(both, "test")[1]) == 2
    single = tmp_path / "single.npz"
    np.savez(single, x=x, y=y)
    assert np.array_equal(load_cifar10(single, "test")[0], x)
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=x)
    with pytest.raises(ValueError, match="expected x and y"):
        load_cifar10(bad, "train")
    np.savez(bad, x=x[:, :16], y=y)
    with pytest.raises(ValueError, match=r"expected uint8 \(N, 32, 32, 3\)"):
        load_cifar10(bad, "train")


def test_cifar10_python_batches_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {name: tiny_cifar(n_per_class=1, seed=i) for i, name in enumerate(
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"])}
    for name, (x, y) in batches.items():  # the official format: channel-major rows of 3072 bytes
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": y.tolist()}, f)
    images, labels = load_cifar10(tmp_path, "train")  # the parent of cifar-10-batches-py works too
    assert np.array_equal(images, np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]))
    assert np.array_equal(labels, np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]))
    images, labels = load_cifar10(folder, "test")
    assert np.array_equal(images, batches["test_batch"][0])


def write_image_folder(root: Path, split: str, x: np.ndarray, y: np.ndarray, suffix: str = ".png") -> None:
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / split / CIFAR10_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img{i}{suffix}")  # img10 must sort after img9


def test_cifar10_image_folder_round_trip_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = tiny_cifar(n_per_class=12)
    write_image_folder(tmp_path, "train", x, y)
    images, labels = load_cifar10(tmp_path, "train")
    assert np.array_equal(images, x) and np.array_equal(labels, y)  # PNG is lossless; order is natural
    assert len(list(cache_dir().glob("cifar10-train-*.npz"))) >= 1

    def no_decoding(path: str) -> np.ndarray:
        raise AssertionError(f"decoded {path} although the cache holds it")

    monkeypatch.setattr(data, "_decode_rgb", no_decoding)
    cached_images, cached_labels = load_cifar10(str(tmp_path), "train")
    assert np.array_equal(cached_images, x) and np.array_equal(cached_labels, y)


def test_cifar10_image_folder_cache_is_replaced_when_files_change(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AJPQ_CACHE", str(tmp_path / "cache"))
    x, y = tiny_cifar(n_per_class=2)
    write_image_folder(tmp_path, "train", x, y)
    load_cifar10(tmp_path, "train")
    first = next(tmp_path.glob("train/*/*.png"))
    changed = np.zeros((32, 32, 3), dtype=np.uint8)
    Image.fromarray(changed).save(first)
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # a newer file, as a new copy
    images, _ = load_cifar10(tmp_path, "train")
    assert any(np.array_equal(image, changed) for image in images)  # decoded again, not read from the old entry
    assert len(list(cache_dir().glob("cifar10-train-*.npz"))) == 1  # the entry was replaced, not doubled
    entry = next(cache_dir().glob("cifar10-train-*.npz"))
    with np.load(entry) as archive:
        np.savez(entry, x=archive["x"], y=archive["y"], signature=np.array(["garbled", "signature"]))
    again, _ = load_cifar10(tmp_path, "train")  # a garbled signature is a stale entry: decoded again, no traceback
    assert np.array_equal(again, images)


def test_cifar10_image_folder_jpeg_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.full((2, 32, 32, 3), 200, dtype=np.uint8)
    write_image_folder(tmp_path / "cifar10", "test", x, np.array([1, 8]), suffix=".jpg")
    monkeypatch.setenv("AJPQ_DATA", str(tmp_path))  # a parent holding cifar10/ is accepted too
    images, labels = load_cifar10(split="test")
    assert np.abs(images.astype(int) - 200).max() <= 2 and labels.tolist() == [1, 8]


def test_cifar10_image_folder_rejects_unknown_classes_and_sizes(tmp_path: Path) -> None:
    (tmp_path / "train" / "unicorn").mkdir(parents=True)
    with pytest.raises(ValueError, match="unicorn"):
        load_cifar10(tmp_path, "train")
    folder = tmp_path / "test" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "0.png")
    with pytest.raises(ValueError, match="32x32"):
        load_cifar10(tmp_path, "test")


def test_cifar10_missing_data_explains_how_to_provide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="AJPQ_DATA") as info:
        load_cifar10(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(FileNotFoundError, match="AJPQ_DATA") as info:
        load_cifar10(tmp_path, "test")  # exists, but holds no split
    assert str(tmp_path / "test") in str(info.value)
    monkeypatch.delenv("AJPQ_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="AJPQ_DATA environment variable is not set"):
        load_cifar10(None, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_cifar10(tmp_path, "val")


def test_imagenet_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="AJPQ_DATA"):
        load_imagefolder_imagenet(tmp_path, "val")


# ------------------------------------------------------------------------------------------------- tensors


def test_to_tensor_grayscale_and_rgb() -> None:
    gray = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)  # (1, 2, 2)
    out = to_tensor(gray, (0.5,), (0.25,))
    assert out.shape == (1, 1, 2, 2) and out.dtype == torch.float32
    assert torch.allclose(out[0, 0], (torch.tensor([[0, 255], [51, 102]]) / 255 - 0.5) / 0.25)

    rgb = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    mean, std = NORMALIZATION["cifar10"]
    out = to_tensor(rgb, mean, std)
    assert out.shape == (2, 3, 4, 5) and out.is_contiguous()
    for c in range(3):
        assert torch.allclose(out[:, c], torch.full((2, 4, 5), ((c == 1) - mean[c]) / std[c]))
    assert torch.equal(to_tensor(torch.from_numpy(rgb), mean, std), out)


def test_to_tensor_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((1, 2, 2), dtype=np.float32), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="1 channel"):
        to_tensor(np.zeros((1, 2, 2), dtype=np.uint8), *NORMALIZATION["cifar10"])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        to_tensor(np.zeros((2, 2), dtype=np.uint8), (0.0,), (1.0,))


def test_normalization_table() -> None:
    assert NORMALIZATION["mnist"] == ((0.1307,), (0.3081,))
    assert NORMALIZATION["cifar10"] == NORMALIZATION["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_balanced_subset_keeps_class_shares_and_is_nested() -> None:
    labels = np.repeat(np.arange(10), 500)  # class-sorted, like CIFAR-10 read from its image folders
    small, large = balanced_subset(labels, 1000), balanced_subset(labels, 2000)
    assert len(small) == 1000 and np.all(np.diff(small) > 0)
    assert set(small.tolist()) <= set(large.tolist())
    assert np.bincount(labels[small], minlength=10).tolist() == [100] * 10
    uneven = np.array([0] * 90 + [1] * 10)
    assert np.bincount(uneven[balanced_subset(uneven, 20)]).tolist() == [18, 2]
    assert not np.array_equal(balanced_subset(labels, 100, seed=0), balanced_subset(labels, 100, seed=1))
    boxes = np.zeros((30, 4), dtype=np.float32)
    assert len(set(balanced_subset(boxes, 10).tolist())) == 10

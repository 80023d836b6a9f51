"""Single-object detection: box decoding, IoU against hand-computed boxes, the region loss, the detection data
sets (embedded, Pascal VOC, DAC-SDC layout) and float box targets in a Split."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ajpq_env.models import SKYNET_ANCHORS
from ajpq_env.tasks import Split
from ajpq_env.tasks.boxes import box_iou, decode_boxes, region_loss
from ajpq_env.tasks.detection import (
    DETECTION_NORMALIZATION,
    load_dacsdc,
    load_voc_folder,
    make_embedded_set,
    read_voc_objects,
)
from ajpq_env.tasks.metrics import IoU, get_metric

RACCOON = Path(os.environ.get("AJPQ_DETECTION", "/nonexistent")) / "raccoon"


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _output(gh: int, gw: int, anchor: int, row: int, col: int, t: tuple[float, float, float, float]) -> torch.Tensor:
    """A detector map with one confident cell: tx, ty, tw, th = ``t`` at ``(anchor, row, col)``."""
    out = torch.zeros(1, 10, gh, gw)
    out[0, 4::5] = -8.0  # every conf low
    out[0, anchor * 5 : anchor * 5 + 4, row, col] = torch.tensor(t)
    out[0, anchor * 5 + 4, row, col] = 3.0
    return out


# ------------------------------------------------------------------------------------------------ boxes
def test_box_iou_against_hand_computed_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.5, 1.0]])
    # overlap 1 of union 4 + 4 - 1; identical; disjoint; half contained
    assert box_iou(a, b).tolist() == pytest.approx([1 / 7, 1.0, 0.0, 0.5])
    assert box_iou(torch.zeros(4), torch.zeros(4)).item() == 0.0  # empty boxes: 0, not NaN


def test_decode_matches_the_reference_formula():
    # anchor 1, row 2, col 3 on a 4x8 grid: sigmoid(0) = 0.5, exp(0) = 1
    boxes, conf = decode_boxes(_output(4, 8, 1, 2, 3, (0.0, 0.0, 0.0, math.log(0.5))), SKYNET_ANCHORS)
    aw, ah = SKYNET_ANCHORS[1]
    cx, cy, w, h = 3.5 / 8, 2.5 / 4, aw / 8, 0.5 * ah / 4
    assert boxes[0].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], abs=1e-6)
    assert conf.item() == pytest.approx(1 / (1 + math.exp(-3.0)))


def test_iou_metric_scores_the_decoded_box_against_hand_computed_targets():
    metric = get_metric("iou")
    assert isinstance(metric, IoU)
    output = _output(4, 8, 0, 1, 1, (0.0, 0.0, 0.0, 0.0))  # centre (1.5/8, 1.5/4), size anchor 0
    aw, ah = SKYNET_ANCHORS[0]
    box = [1.5 / 8 - aw / 16, 1.5 / 4 - ah / 8, 1.5 / 8 + aw / 16, 1.5 / 4 + ah / 8]
    exact = torch.tensor([box])
    assert metric.scores(output, exact) == pytest.approx([1.0])
    left_half = torch.tensor([[box[0], box[1], (box[0] + box[2]) / 2, box[3]]])
    assert metric.scores(output, left_half) == pytest.approx([0.5])
    assert metric.scores(output.numpy(), np.array([[0.9, 0.9, 1.0, 1.0]], np.float32)) == pytest.approx([0.0])
    assert metric.agreement(output, output) == 1.0
    assert metric.agreement(output, _output(4, 8, 0, 3, 7, (0.0, 0.0, 0.0, 0.0))) == 0.0


def test_region_loss_is_small_at_the_target_and_trains_towards_it():
    aw, ah = SKYNET_ANCHORS[0]
    # object centred in cell (row 1, col 2) at fraction (0.25, 0.75) of it, the size of anchor 0 scaled by 1.2
    gx, gy, gw, gh = 2.25, 1.75, 1.2 * aw, 1.2 * ah
    target = torch.tensor([[(gx - gw / 2) / 8, (gy - gh / 2) / 4, (gx + gw / 2) / 8, (gy + gh / 2) / 4]])
    perfect = _output(4, 8, 0, 1, 2, (_logit(0.25), _logit(0.75), math.log(1.2), math.log(1.2)))
    perfect[0, 4, 1, 2] = 12.0  # conf ~ 1 = the IoU of a perfect box
    assert region_loss(perfect, target, SKYNET_ANCHORS).item() < 1e-3
    shifted = _output(4, 8, 0, 1, 2, (0.0, 0.0, 0.0, 0.0))
    assert region_loss(shifted, target, SKYNET_ANCHORS).item() > 0.01
    # a few gradient steps on the raw map reduce the loss and raise the IoU of the decoded box
    output = torch.zeros(1, 10, 4, 8, requires_grad=True)
    optimizer = torch.optim.SGD([output], lr=1.0)
    first = None
    for _ in range(100):
        loss = region_loss(output, target, SKYNET_ANCHORS)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 10
    assert get_metric("iou").scores(output.detach(), target)[0] > 0.9


def test_region_loss_refuses_a_map_of_the_wrong_width():
    with pytest.raises(ValueError, match="expected 2 anchors x 5"):
        region_loss(torch.zeros(1, 12, 4, 8), torch.zeros(1, 4), SKYNET_ANCHORS)


# ------------------------------------------------------------------------------------------------ data
def test_split_keeps_float_boxes_and_int_labels():
    images = np.zeros((3, 8, 8, 3), np.uint8)
    boxes = Split(images, np.array([[0, 0, 1, 1]] * 3, np.float32), DETECTION_NORMALIZATION)
    assert boxes.labels.dtype == torch.float32 and boxes.batch(np.arange(2))[1].shape == (2, 4)
    assert Split(images, np.array([1, 2, 3]), DETECTION_NORMALIZATION).labels.dtype == torch.int64
    with pytest.raises(ValueError, match=r"boxes of shape \(N, 4\)"):
        Split(images, np.zeros((3, 2), np.float32), DETECTION_NORMALIZATION)


def test_embedded_set_is_identical_for_one_seed_and_differs_for_another(tmp_path, monkeypatch):
    monkeypatch.setenv("AJPQ_CACHE", str(tmp_path / "a"))
    x1, y1 = make_embedded_set("test", (64, 128), seed=3, count=12)
    monkeypatch.setenv("AJPQ_CACHE", str(tmp_path / "b"))  # made again from scratch, not read from a cache
    x2, y2 = make_embedded_set("test", (64, 128), seed=3, count=12)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x3, _ = make_embedded_set("test", (64, 128), seed=4, count=12)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (12, 64, 128, 3) and x1.dtype == np.uint8 and y1.dtype == np.float32
    assert np.all((y1 >= 0) & (y1 <= 1)) and np.all(y1[:, 2:] > y1[:, :2])
    heights = (y1[:, 3] - y1[:, 1]) * 64  # digits 8..24 px high: small objects, as seen from a drone
    assert heights.min() >= 4 and heights.max() <= 24
    train, _ = make_embedded_set("train", (64, 128), seed=3, count=12)
    assert not np.array_equal(train, x1)


def test_embedded_box_encloses_the_pasted_digit(tmp_path, monkeypatch):
    monkeypatch.setenv("AJPQ_CACHE", str(tmp_path))
    images, boxes = make_embedded_set("search", (64, 128), seed=0, count=6)
    for image, box in zip(images.astype(np.float64), boxes):
        x0, y0, x1, y1 = np.round(box * [128, 64, 128, 64]).astype(int)
        inside = image[y0:y1, x0:x1].reshape(-1, 3)
        ring = np.concatenate([image[max(y0 - 3, 0) : y0].reshape(-1, 3), image[y1 : y1 + 3].reshape(-1, 3)])
        # the digit's ink contrasts with the texture: the box holds pixels far from the surrounding colour
        assert np.abs(inside - ring.mean(0)).sum(1).max() > 120


def _write_voc(path: Path, size: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> None:
    objects = "".join(f"<object><name>drone</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                      f"<ymax>{d}</ymax></bndbox></object>" for a, b, c, d in boxes)
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth>"
                    f"</size>{objects}</annotation>")


def test_dacsdc_layout_loader(tmp_path):
    rng = np.random.default_rng(0)
    for category in ("boat1", "car2"):
        folder = tmp_path / category
        folder.mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
            _write_voc(folder / f"{i}.xml", (64, 36), [(8 * i, 4, 8 * i + 16, 20)])
    images, boxes, groups = load_dacsdc(tmp_path, (16, 32))
    assert images.shape == (6, 16, 32, 3) and groups.tolist() == [0, 0, 0, 1, 1, 1]
    assert boxes[1].tolist() == pytest.approx([8 / 64, 4 / 36, 24 / 64, 20 / 36])
    _write_voc(tmp_path / "car2" / "1.xml", (64, 36), [(0, 0, 4, 4), (5, 5, 9, 9)])
    with pytest.raises(ValueError, match="has 2 objects"):
        load_dacsdc(tmp_path, (16, 32))


def test_voc_reader_and_bad_annotations(tmp_path):
    note = tmp_path / "a.xml"
    _write_voc(note, (100, 50), [(10, 5, 30, 25)])
    assert read_voc_objects(note) == ((100, 50), [("drone", 10.0, 5.0, 30.0, 25.0)])
    note.write_text("<annotation><object>")
    with pytest.raises(ValueError, match="not a VOC XML annotation"):
        read_voc_objects(note)
    with pytest.raises(FileNotFoundError, match="expected images/ and annotations/"):
        load_voc_folder(tmp_path, None, (32, 64))


@pytest.mark.skipif(not RACCOON.is_dir(), reason="needs $AJPQ_DETECTION/raccoon (the benchmark data's detection/)")
def test_raccoon_voc_folder_splits():
    train_x, train_y = load_voc_folder(RACCOON, "train", (32, 64))
    test_x, test_y = load_voc_folder(RACCOON, "test", (32, 64))
    # the author's 160/40 split by image, less the images with two or three raccoons (16 of 200)
    assert len(train_x) + len(test_x) == 184 and 140 <= len(train_x) <= 160 and 30 <= len(test_x) <= 40
    assert train_x.shape[1:] == (32, 64, 3)
    assert np.all(train_y[:, 2:] > train_y[:, :2]) and np.all((test_y >= 0) & (test_y <= 1))

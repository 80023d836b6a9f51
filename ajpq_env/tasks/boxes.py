"""Single-object box detection with a YOLO-style anchor grid: decoding, IoU, and the training loss.

Boxes are ``(x_min, y_min, x_max, y_max)`` as fractions of the image width and height (so one box format
serves every input size); :func:`to_pixels` scales them, e.g. to the 640x360 DAC-SDC frame.

A detector output ``(N, A * 5, G_h, G_w)`` holds, for anchor ``a`` and grid cell ``(row, col)``, channels
``a * 5 + {0: tx, 1: ty, 2: tw, 3: th, 4: conf}`` (SkyNet, YOLOv2). :func:`decode_boxes` is the reference
decoder of SkyNet's ``GPU/run.py``: the one box of the anchor and cell with the highest ``sigmoid(conf)``, centre
``((sigmoid(tx) + col) / G_w, (sigmoid(ty) + row) / G_h)``, size ``(exp(tw) * anchor_w / G_w,
exp(th) * anchor_h / G_h)`` with anchors in grid cells. :func:`region_loss` is the loss SkyNet was trained with
(``GPU/region_loss.py``, YOLOv2's region loss), vectorised. Written here by hand: torchvision's box ops cover
IoU but not anchor-grid decoding or this loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["box_iou", "decode_boxes", "region_loss", "to_pixels"]

#: The reference's loss weights: coordinates, object confidence, no-object confidence, and the IoU above which
#: a predicted box counts as "already on the object" and pays no no-object penalty.
COORD_SCALE, OBJECT_SCALE, NOOBJECT_SCALE, IGNORE_IOU = 1.0, 5.0, 1.0, 0.6


def _split(output: torch.Tensor, anchors: int) -> torch.Tensor:
    n, c, gh, gw = output.shape
    if c != anchors * 5:
        raise ValueError(f"detector output has {c} channels; expected {anchors} anchors x 5 (tx, ty, tw, th, conf)")
    return output.reshape(n, anchors, 5, gh, gw)


def decode_boxes(
    output: torch.Tensor | np.ndarray, anchors: Sequence[Sequence[float]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The single best box per image: ``(boxes (N, 4) as image fractions, conf (N,))``.

    :param output: detector output ``(N, len(anchors) * 5, G_h, G_w)``
    :param anchors: ``(width, height)`` of each anchor in grid cells
    """
    out = _split(torch.as_tensor(output, dtype=torch.float32), len(anchors))
    n, a, _, gh, gw = out.shape
    conf = out[:, :, 4].reshape(n, -1)  # index = anchor * G_h * G_w + row * G_w + col
    best = conf.argmax(1)  # sigmoid is monotonic: the argmax of the logits is that of sigmoid(conf)
    anchor, cell = best // (gh * gw), best % (gh * gw)
    row, col = cell // gw, cell % gw
    t = out[torch.arange(n), anchor, :, row, col]  # (N, 5)
    size = torch.as_tensor(anchors, dtype=torch.float32)[anchor]
    cx = (torch.sigmoid(t[:, 0]) + col) / gw
    cy = (torch.sigmoid(t[:, 1]) + row) / gh
    w = torch.exp(t[:, 2]) * size[:, 0] / gw
    h = torch.exp(t[:, 3]) * size[:, 1] / gh
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    return boxes, torch.sigmoid(t[:, 4])


def box_iou(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Element-wise IoU of boxes ``(..., 4)`` in ``(x_min, y_min, x_max, y_max)``; 0 where the union is empty."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area = lambda box: (box[..., 2] - box[..., 0]).clamp(min=0) * (box[..., 3] - box[..., 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-30), torch.zeros_like(union))


def to_pixels(boxes: torch.Tensor | np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes as image fractions -> pixels of a ``width`` x ``height`` image (float64 ``(N, 4)``)."""
    return np.asarray(boxes, dtype=np.float64) * np.array([width, height, width, height], dtype=np.float64)


def region_loss(output: torch.Tensor, target: torch.Tensor, anchors: Sequence[Sequence[float]]) -> torch.Tensor:
    """YOLOv2 region loss of SkyNet's training (one object per image), averaged over the batch.

    For each image, the object's centre falls in cell ``(j, i)`` and is assigned to the anchor whose shape
    (centred at the origin) has the highest IoU with the box. With ``x, y = sigmoid(tx), sigmoid(ty)``:

    * box regression at that anchor and cell: ``(x - (g_x - i))^2 + (y - (g_y - j))^2 +
      (tw - log(g_w / a_w))^2 + (th - log(g_h / a_h))^2``, halved (``g`` in grid cells);
    * objectness there: ``5 * (sigmoid(conf) - IoU(predicted box, object))^2 / 2``, the IoU taken as a constant;
    * no-object: ``(sigmoid(conf))^2 / 2`` at every other anchor and cell whose predicted box overlaps the object
      by IoU <= 0.6 (boxes already on the object are not pushed down).

    The reference sums over the batch; dividing by the batch size keeps the learning rate independent of it.

    :param output: detector output ``(N, len(anchors) * 5, G_h, G_w)``
    :param target: float boxes ``(N, 4)`` as image fractions ``(x_min, y_min, x_max, y_max)``
    """
    out = _split(output, len(anchors))
    n, a, _, gh, gw = out.shape
    target = torch.as_tensor(target, dtype=torch.float32, device=output.device).reshape(n, 4)
    anchor_wh = torch.as_tensor(anchors, dtype=torch.float32, device=output.device)  # (A, 2)
    x, y = torch.sigmoid(out[:, :, 0]), torch.sigmoid(out[:, :, 1])
    tw, th, conf = out[:, :, 2], out[:, :, 3], torch.sigmoid(out[:, :, 4])

    gx = (target[:, 0] + target[:, 2]) / 2 * gw
    gy = (target[:, 1] + target[:, 3]) / 2 * gh
    gwid = ((target[:, 2] - target[:, 0]) * gw).clamp(min=1e-6)
    ghei = ((target[:, 3] - target[:, 1]) * gh).clamp(min=1e-6)
    with torch.no_grad():  # predicted boxes in grid cells, for the ignore mask and the objectness target
        cols = torch.arange(gw, device=output.device).view(1, 1, 1, gw)
        rows = torch.arange(gh, device=output.device).view(1, 1, gh, 1)
        pw = torch.exp(tw) * anchor_wh[:, 0].view(1, a, 1, 1)
        ph = torch.exp(th) * anchor_wh[:, 1].view(1, a, 1, 1)
        pred = torch.stack([x + cols - pw / 2, y + rows - ph / 2, x + cols + pw / 2, y + rows + ph / 2], -1)
        gt = torch.stack([gx - gwid / 2, gy - ghei / 2, gx + gwid / 2, gy + ghei / 2], -1).view(n, 1, 1, 1, 4)
        iou = box_iou(pred, gt).to(torch.float32)  # (N, A, G_h, G_w)
        shape_iou = torch.minimum(anchor_wh[None, :, 0], gwid[:, None]) * torch.minimum(anchor_wh[None, :, 1], ghei[:, None])
        shape_iou = shape_iou / (anchor_wh[None, :, 0] * anchor_wh[None, :, 1] + (gwid * ghei)[:, None] - shape_iou)
        best = shape_iou.argmax(1)  # (N,) first anchor on ties, as the reference's strict ">"
        gi = gx.floor().long().clamp(0, gw - 1)
        gj = gy.floor().long().clamp(0, gh - 1)
        weight = (iou <= IGNORE_IOU).to(torch.float32) * NOOBJECT_SCALE
        index = torch.arange(n, device=output.device)
        weight[index, best, gj, gi] = OBJECT_SCALE
        tconf = torch.zeros_like(conf)
        tconf[index, best, gj, gi] = iou[index, best, gj, gi]
    at = (index, best, gj, gi)
    coord = ((x[at] - (gx - gi)) ** 2 + (y[at] - (gy - gj)) ** 2
             + (tw[at] - torch.log(gwid / anchor_wh[best, 0])) ** 2
             + (th[at] - torch.log(ghei / anchor_wh[best, 1])) ** 2)
    objectness = (weight * (conf - tconf) ** 2).sum()
    return (COORD_SCALE * coord.sum() + objectness) / (2 * n)

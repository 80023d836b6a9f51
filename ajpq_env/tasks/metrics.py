"""Task metrics: how a model's outputs are scored and trained, one small class per kind of task.

A :class:`Metric` turns a batch of model outputs and targets into a training loss (fine-tuning, pretraining)
and into per-sample scores whose mean is the task's metric (search reward, test report). Every consumer
(the env's evaluator, ``ajpq finetune``, ``ajpq evaluate``, ``benchmarks/pretrain.py``) goes through
:meth:`Metric.loss` and :meth:`Metric.scores`, so a new kind of task (detection: mean IoU) only adds a class
here and a name in :data:`METRICS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from ajpq_env.models.skynet import SKYNET_ANCHORS
from ajpq_env.tasks.boxes import box_iou, decode_boxes, region_loss

__all__ = ["METRICS", "IoU", "Metric", "Top1", "get_metric", "register_metric"]


class Metric(ABC):
    """Scores model outputs against targets; the task's metric is the mean of :meth:`scores` over a split.

    :cvar name: registry key (``TaskSpec.metric``)
    :cvar higher_is_better: always ``True`` for the metrics used as rewards
    """

    name: str = ""
    higher_is_better: bool = True

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Differentiable scalar training loss of a batch."""

    @abstractmethod
    def scores(self, output: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> np.ndarray:
        """One score per sample (float64); the metric of a split is their mean."""

    def fragile(self, output: torch.Tensor | np.ndarray) -> np.ndarray:
        """Per sample, whether its score hangs on a near-tie that float rounding (another summation order, another
        thread count) could flip; the metric of a split is reproducible within ``fragile.sum() / n``."""
        return np.zeros(len(output), dtype=bool)

    def agreement(self, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
        """How often two runtimes' outputs lead to the same decision (1.0 = always)."""
        a, b = np.asarray(a), np.asarray(b)
        return float((a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1)).mean())


class Top1(Metric):
    """Top-1 accuracy of class logits ``(N, classes)`` against integer labels ``(N,)``; cross-entropy loss."""

    name = "top1"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def scores(self, output: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> np.ndarray:
        return (np.asarray(output).argmax(1) == np.asarray(target)).astype(np.float64)

    def fragile(self, output: torch.Tensor | np.ndarray) -> np.ndarray:
        """The two largest logits within ``1e-5`` of the largest magnitude (float32 summation noise is ~1e-7)."""
        logits = np.asarray(output, dtype=np.float64)
        if logits.shape[1] < 2:
            return np.zeros(len(logits), dtype=bool)
        top2 = np.sort(logits, axis=1)[:, -2:]
        return (top2[:, 1] - top2[:, 0]) <= 1e-5 * np.maximum(np.abs(logits).max(axis=1), 1e-12)


class IoU(Metric):
    """Mean IoU of the single decoded box per image against its one ground-truth box (the DAC-SDC score).

    Outputs are anchor-grid detector maps ``(N, A * 5, G_h, G_w)`` (SkyNet); the box is the reference decoder's
    (:func:`~ajpq_env.tasks.boxes.decode_boxes`: highest confidence over anchors and cells), clipped to the
    image; targets are float boxes ``(N, 4)`` as image fractions ``(x_min, y_min, x_max, y_max)``. The training
    loss is SkyNet's YOLOv2 region loss (:func:`~ajpq_env.tasks.boxes.region_loss`: box regression and
    objectness at the anchor and cell holding the box centre, no-object confidence elsewhere). Two runtimes
    agree on an image when their decoded boxes overlap by IoU >= 0.9.

    :param anchors: ``(width, height)`` of each anchor in grid cells (default: SkyNet's two)
    """

    name = "iou"

    def __init__(self, anchors: tuple[tuple[float, float], ...] | None = None) -> None:
        self.anchors = tuple(tuple(float(v) for v in a) for a in (anchors or SKYNET_ANCHORS))

    def boxes(self, output: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The decoded box of every image, clipped to the image, as fractions ``(N, 4)``."""
        return decode_boxes(output, self.anchors)[0].clamp(0.0, 1.0)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return region_loss(output, target, self.anchors)

    def scores(self, output: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return box_iou(self.boxes(output), torch.as_tensor(np.asarray(target), dtype=torch.float32)).numpy()

    def agreement(self, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
        with torch.no_grad():
            return float((box_iou(self.boxes(a), self.boxes(b)) >= 0.9).double().mean())

    def fragile(self, output: torch.Tensor | np.ndarray) -> np.ndarray:
        """The two highest confidence logits (over anchors and cells) within ``1e-5`` of the largest magnitude:
        the decoded box could jump to the runner-up under another summation order."""
        out = np.asarray(output, dtype=np.float64)
        conf = out.reshape(len(out), len(self.anchors), 5, -1)[:, :, 4].reshape(len(out), -1)
        if conf.shape[1] < 2:
            return np.zeros(len(out), dtype=bool)
        top2 = np.sort(conf, axis=1)[:, -2:]
        return (top2[:, 1] - top2[:, 0]) <= 1e-5 * np.maximum(np.abs(conf).max(axis=1), 1e-12)


#: Every metric by name.
METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` under its name (replacing one of the same name); return it."""
    if not metric.name:
        raise ValueError(f"{type(metric).__name__} has no name")
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The metric called ``name``; ``ValueError`` lists the valid names."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; expected one of {sorted(METRICS)}") from None


register_metric(Top1())
register_metric(IoU())

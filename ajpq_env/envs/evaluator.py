"""Measure the metric of a compressed model: physically compress, recalibrate BatchNorm, fine-tune, evaluate.

The result is a pure function of the policy (fixed calibration and fine-tuning samples, fixed seeds), so it
is cached by the policy's hash: a replayed recipe gets the same number without paying for it again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ajpq_env.compression import CompressionGraph, Policy, compress
from ajpq_env.compression.qat import freeze, prepare_qat
from ajpq_env.tasks import Task

__all__ = ["EvalResult", "Evaluator", "recalibrate_batchnorm"]


@dataclass(frozen=True)
class EvalResult:
    """Metric of one policy on the search split, how long it took, and whether it came from the cache."""

    metric: float
    seconds: float
    cache_hit: bool


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (cumulative average), then eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


class Evaluator:
    """Evaluates policies on a task's search split.

    :param task: the loaded task
    :param graph: its compression graph
    :param bn_calibration_batches: training batches used to recalibrate BatchNorm (0 = keep FP32 statistics)
    :param calibration_batch_size: samples per calibration batch
    :param finetune_steps: SGD steps of quantization-aware fine-tuning before evaluation (0 = none)
    :param finetune_lr: learning rate of those steps
    :param eval_batch_size: batch size of the evaluation forward passes
    :param cache_size: number of policies whose results are kept (LRU); 0 disables the cache
    """

    def __init__(
        self,
        task: Task,
        graph: CompressionGraph,
        *,
        bn_calibration_batches: int = 1,
        calibration_batch_size: int = 64,
        finetune_steps: int = 0,
        finetune_lr: float = 1e-3,
        eval_batch_size: int = 250,
        cache_size: int = 4096,
    ) -> None:
        for label, value in (
            ("bn_calibration_batches", bn_calibration_batches),
            ("finetune_steps", finetune_steps),
            ("cache_size", cache_size),
        ):
            if value < 0:
                raise ValueError(f"{label} must be >= 0, got {value}")
        for label, value in (("calibration_batch_size", calibration_batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        self.task = task
        self.graph = graph
        self.finetune_steps = finetune_steps
        self.finetune_lr = finetune_lr
        self.eval_batch_size = eval_batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, float] = OrderedDict()
        train = task.splits["train"]
        # A fixed sample of the training split: the metric is then a function of the policy alone.
        rng = np.random.default_rng(0)
        n_calib = min(len(train), bn_calibration_batches * calibration_batch_size)
        order = rng.permutation(len(train))
        self._calibration = [
            train.batch(np.sort(order[i : i + calibration_batch_size]))[0]
            for i in range(0, n_calib, calibration_batch_size)
        ]
        self._finetune_order = order
        self._finetune_batch = calibration_batch_size
        task.splits["search"].tensor()  # hold the search split in memory once

    def __call__(self, policy: Policy) -> EvalResult:
        key = policy.digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return EvalResult(self._cache[key], 0.0, True)
        start = time.perf_counter()
        model = self.compressed_model(policy)
        metric = self.task.evaluate(model, "search", self.eval_batch_size)
        seconds = time.perf_counter() - start
        if self.cache_size:
            self._cache[key] = metric
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return EvalResult(metric, seconds, False)

    def compressed_model(self, policy: Policy) -> nn.Module:
        """The physically compressed model the reward is measured on (fine-tuned, then calibrated)."""
        if self.finetune_steps:
            model = prepare_qat(self.task.model, self.graph, policy)
            self._finetune(model)
            freeze(model)
        else:
            model = compress(self.task.model, self.graph, policy, validate=False)
        recalibrate_batchnorm(model, self._calibration)
        return model

    def _finetune(self, model: nn.Module) -> None:
        """``finetune_steps`` of straight-through quantization-aware SGD on fixed training batches."""
        train = self.task.splits["train"]
        optimizer = torch.optim.SGD(model.parameters(), lr=self.finetune_lr, momentum=0.9)
        model.train()
        n = len(self._finetune_order)
        for step in range(self.finetune_steps):
            start = (step * self._finetune_batch) % n
            x, y = train.batch(np.sort(self._finetune_order[start : start + self._finetune_batch]))
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()

"""Measure the metric of a policy's deployed network on the search split (the env's reward).

The network is built by the engine's :class:`~ajpq_env.compression.pipeline.Compressor` (the one way a policy is
built, shared with ``ajpq export`` and ``ajpq finetune``): physically pruned and quantized, optionally fine-tuned
for a few steps, BatchNorm recalibrated and folded, activations calibrated and quantized. The result is a pure
function of the policy (fixed calibration and fine-tuning samples, fixed seeds), so it is cached by the policy's
hash: a replayed recipe gets the same number without paying for it again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ajpq_env.compression import CompressionGraph, Policy
from ajpq_env.compression.pipeline import Compressor, DeploySettings, calibration_indices, recalibrate_batchnorm
from ajpq_env.tasks import Task

__all__ = ["EvalResult", "Evaluator", "recalibrate_batchnorm"]


@dataclass(frozen=True)
class EvalResult:
    """Metric of one policy on the search split, how long it took, whether it came from the cache, and how many
    samples were decided by a near-tie (their outcome may differ under another float summation order)."""

    metric: float
    seconds: float
    cache_hit: bool
    fragile: int = 0


class Evaluator:
    """Evaluates policies on a task's search split.

    :param task: the loaded task
    :param graph: its compression graph
    :param settings: how a policy's network is built (:class:`~ajpq_env.compression.pipeline.DeploySettings`:
        activation bits, calibration batches and batch size, quantization-aware fine-tuning steps and rate)
    :param eval_batch_size: batch size of the evaluation forward passes
    :param cache_size: number of policies whose results are kept (LRU); 0 disables the cache
    """

    def __init__(
        self,
        task: Task,
        graph: CompressionGraph,
        settings: DeploySettings | None = None,
        *,
        eval_batch_size: int = 100,
        cache_size: int = 4096,
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be an int >= 1, got {eval_batch_size!r}")
        self.task, self.graph = task, graph
        self.settings = settings or DeploySettings()
        self.eval_batch_size = eval_batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, EvalResult] = OrderedDict()
        train = task.splits["train"]
        s = self.settings
        # A fixed sample of the training split: the metric is then a function of the policy alone.
        batches = calibration_indices(len(train), s.bn_calibration_batches, s.calibration_batch_size)
        calibration = [train.batch(index)[0] for index in batches]
        order = np.random.default_rng(0).permutation(len(train))

        def train_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            start = (step * s.calibration_batch_size) % len(order)
            return train.batch(np.sort(order[start : start + s.calibration_batch_size]))

        self.compressor = Compressor(task.model, graph, calibration, s, train_batch=train_batch,
                                     loss=task.metric.loss)
        task.splits["search"].tensor()  # hold the search split in memory once

    @property
    def finetune_steps(self) -> int:
        return self.settings.finetune_steps

    def __call__(self, policy: Policy) -> EvalResult:
        key = policy.digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            cached = self._cache[key]
            return EvalResult(cached.metric, 0.0, True, cached.fragile)
        start = time.perf_counter()
        model = self.compressed_model(policy)
        metric, fragile = self.task.measure(model, "search", self.eval_batch_size)
        result = EvalResult(metric, time.perf_counter() - start, False, fragile)
        if self.cache_size:
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    def compressed_model(self, policy: Policy) -> nn.Module:
        """The deployed network the reward is measured on (see the module docstring)."""
        return self.compressor.deploy(policy)

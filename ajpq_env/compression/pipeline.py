"""One place that builds the network a policy deploys to, for the env's reward and for every deploy command.

:class:`Compressor` runs the engine's steps in order: physical pruning and weight quantization
(:func:`~ajpq_env.compression.simulate.compress`), optional quantization-aware SGD steps
(:mod:`~ajpq_env.compression.qat`), BatchNorm recalibration on a fixed calibration sample, then BatchNorm
folding and activation calibration (:func:`~ajpq_env.compression.integer.to_deployed`). The env's evaluator
measures its output on the search split; ``ajpq export`` writes the same network to disk; ``ajpq finetune``
ends with its last three steps. :class:`DeploySettings` are the knobs, stored in a recipe's ``meta`` so that a
recipe is always rebuilt the way it was measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ajpq_env.compression.actquant import check_a_bits
from ajpq_env.compression.graph import CompressionGraph
from ajpq_env.compression.integer import to_deployed
from ajpq_env.compression.policy import Policy
from ajpq_env.compression.qat import freeze, prepare_qat
from ajpq_env.compression.simulate import compress

__all__ = [
    "MAX_FINETUNE_STEPS",
    "Compressor",
    "DeploySettings",
    "Deployable",
    "calibration_indices",
    "qat_steps",
    "recalibrate_batchnorm",
]

#: Upper bound of ``finetune_steps`` (a recipe asking for more is refused rather than run for hours).
MAX_FINETUNE_STEPS = 10_000
#: Upper bound of calibration batches x batch size (samples held in memory for calibration).
MAX_CALIBRATION_SAMPLES = 65_536


@dataclass(frozen=True)
class DeploySettings:
    """How a policy's network is built (the env's arguments of the same names; kept in a recipe's ``meta``).

    :param a_bits: activation bit-width: 2..8 (integer activations), or 32 (float activations)
    :param bn_calibration_batches: training batches that recalibrate BatchNorm and set the activation ranges
    :param calibration_batch_size: samples per calibration batch (and per fine-tuning step)
    :param finetune_steps: quantization-aware SGD steps before calibration (0 = none), at most
        :data:`MAX_FINETUNE_STEPS`
    :param finetune_lr: learning rate of those steps
    """

    a_bits: int = 8
    bn_calibration_batches: int = 1
    calibration_batch_size: int = 64
    finetune_steps: int = 0
    finetune_lr: float = 1e-3

    def __post_init__(self) -> None:
        check_a_bits(self.a_bits)
        for name in ("bn_calibration_batches", "calibration_batch_size", "finetune_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.calibration_batch_size < 1:
            raise ValueError(f"calibration_batch_size must be >= 1, got {self.calibration_batch_size}")
        if self.a_bits <= 8 and self.bn_calibration_batches < 1:
            raise ValueError("bn_calibration_batches must be >= 1 when activations are quantized (a_bits <= 8): "
                             "the calibration batches set the activation ranges")
        if self.bn_calibration_batches * self.calibration_batch_size > MAX_CALIBRATION_SAMPLES:
            raise ValueError(f"bn_calibration_batches x calibration_batch_size must be <= {MAX_CALIBRATION_SAMPLES}, "
                             f"got {self.bn_calibration_batches} x {self.calibration_batch_size}")
        if self.finetune_steps > MAX_FINETUNE_STEPS:
            raise ValueError(f"finetune_steps must be <= {MAX_FINETUNE_STEPS}, got {self.finetune_steps}")
        lr = self.finetune_lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"finetune_lr must be a finite number >= 0, got {lr!r}")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, source: str = "the recipe") -> DeploySettings:
        """The settings stored in a recipe's ``meta`` (defaults where absent); ``ValueError`` names ``source``."""
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in meta.items() if k in names})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: bad deployment settings in its meta: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (cumulative average), then eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        model.eval()
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


def calibration_indices(n: int, batches: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """A fixed sample of ``batches`` batches from ``n`` training samples (sorted within each batch), so that
    calibration is a function of the settings alone."""
    order = np.random.default_rng(seed).permutation(n)[: batches * batch_size]
    return [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def qat_steps(
    model: nn.Module,
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    lr: float,
) -> None:
    """``steps`` of SGD (momentum 0.9) on ``loss(model(x), y)`` with ``(x, y) = batch(step)``; eval mode after."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for step in range(steps):
        x, y = batch(step)
        value = loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    model.eval()


class Compressor:
    """Builds the deployed network of any policy of one model, always the same way.

    :param model: the FP32 model (never modified)
    :param graph: its compression graph
    :param calibration: the calibration batches (inputs only), ``settings.bn_calibration_batches`` of them
    :param settings: :class:`DeploySettings`
    :param train_batch: ``step -> (x, y)`` training batches for ``settings.finetune_steps`` (required when > 0)
    :param loss: the task's training loss (required when ``settings.finetune_steps`` > 0)
    """

    def __init__(
        self,
        model: nn.Module,
        graph: CompressionGraph,
        calibration: list[torch.Tensor],
        settings: DeploySettings | None = None,
        *,
        train_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.graph = model, graph
        self.settings = settings or DeploySettings()
        self.calibration = calibration
        if self.settings.finetune_steps and (train_batch is None or loss is None):
            raise ValueError("finetune_steps > 0 needs train_batch and loss")
        self.train_batch, self.loss = train_batch, loss

    def compressed(self, policy: Policy) -> nn.Module:
        """The physically pruned model on the policy's grid (QAT steps applied), BatchNorm recalibrated."""
        settings = self.settings
        if settings.finetune_steps:
            model = prepare_qat(self.model, self.graph, policy)
            qat_steps(model, self.train_batch, self.loss, settings.finetune_steps, settings.finetune_lr)
            freeze(model)
        else:
            model = compress(self.model, self.graph, policy, validate=False)
        recalibrate_batchnorm(model, self.calibration)
        return model

    def deployable(self, policy: Policy) -> Deployable:
        """The compressed model of ``policy`` with its calibration batches."""
        return Deployable(self.compressed(policy), policy, self.settings.a_bits, self.calibration)

    def deploy(self, policy: Policy) -> fx.GraphModule:
        """The deployed network of ``policy``."""
        return self.deployable(policy).deployed(self.graph)


@dataclass
class Deployable:
    """A compressed model ready to deploy: physically pruned, weights on the recipe's grid, BatchNorm calibrated,
    with what sets its activation ranges (calibration batches, or the ranges themselves, stored).

    :param model: the compressed model (``Compressor.compressed`` or a fine-tuned one)
    :param policy: the recipe
    :param a_bits: activation bit-width it is deployed with
    :param calibration: input batches that set the activation ranges (when ``qparams`` is ``None``)
    :param qparams: stored ``(scale, zero point)`` of every activation quantizer, in graph order
    """

    model: nn.Module
    policy: Policy
    a_bits: int
    calibration: list[torch.Tensor] = field(default_factory=list)
    qparams: list[tuple[float, int]] | None = None

    def deployed(self, graph: CompressionGraph, a_bits: int | None = None) -> fx.GraphModule:
        """The deployed network (``a_bits=32``: the float-activation twin, e.g. for an ``fp32`` ONNX file)."""
        a_bits = self.a_bits if a_bits is None else a_bits
        qparams = self.qparams if a_bits == self.a_bits and a_bits <= 8 else None
        if a_bits <= 8 and qparams is None and not self.calibration:
            raise ValueError("quantized activations need calibration batches or stored ranges")
        return to_deployed(self.model, graph, self.policy, self.calibration, a_bits, qparams=qparams)

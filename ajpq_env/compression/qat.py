"""Straight-through fake quantization of a physically pruned network at a recipe's per-channel bit-widths.

:func:`prepare_qat` removes the recipe's 0-bit channels (the engine's :func:`~ajpq_env.compression.physically_prune`
on a copy), so pruned channels cannot come back: they no longer exist. Every compressible layer then gets a
:class:`FakeQuantize` parametrization (``torch.nn.utils.parametrize``): the forward pass sees
:func:`~ajpq_env.compression.quantize_weight` of the latent FP32 weight (one ``fake_quantize_per_channel_affine``
call, scale re-derived from ``max|w_c|`` every step), the backward pass is the identity (straight-through
estimator), and the optimiser updates the latent weight. :func:`freeze` writes the quantized values in place and
drops the parametrizations, so the model's weights lie exactly on the recipe's grid; :func:`grid_errors` checks it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ajpq_env.compression.graph import CompressionGraph
from ajpq_env.compression.policy import Policy
from ajpq_env.compression.quantize import quantize_weight
from ajpq_env.compression.simulate import physically_prune, pruned_indices

__all__ = ["FakeQuantize", "freeze", "grid_errors", "kept_bits", "prepare_qat"]


def kept_bits(policy: Policy, name: str) -> np.ndarray:
    """Bit-widths of the surviving channels of layer ``name``, in channel order."""
    bits = policy[name]
    return bits[bits > 0]


class FakeQuantize(nn.Module):
    """Parametrization: per-channel symmetric fake quantization with a straight-through gradient.

    :param bits: one bit-width per output channel, each in 2..8 (pruned channels are removed beforehand)
    """

    def __init__(self, bits: np.ndarray) -> None:
        super().__init__()
        bits = np.asarray(bits)
        if bits.ndim != 1 or bits.size == 0 or (bits < 2).any() or (bits > 8).any():
            raise ValueError(f"FakeQuantize needs one bit-width in 2..8 per kept channel, got {bits.tolist()}")
        self.register_buffer("bits", torch.as_tensor(bits.astype(np.int64)), persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        quantized = quantize_weight(weight, self.bits)
        return weight + (quantized - weight).detach()

    def extra_repr(self) -> str:
        return f"bits={sorted(set(self.bits.tolist()))}"


def prepare_qat(model: nn.Module, graph: CompressionGraph, policy: Policy) -> nn.Module:
    """A physically pruned copy of ``model`` whose compressible layers are fake-quantized at the policy's bits.

    :param model: the uncompressed FP32 model (left untouched)
    :param graph: its compression graph
    :param policy: the recipe (validated against ``graph`` by the caller)
    """
    work = copy.deepcopy(model)
    physically_prune(work, graph, pruned_indices(graph, policy))
    for layer in graph.layers:
        module = work.get_submodule(layer.name)
        bits = kept_bits(policy, layer.name)
        if module.weight.shape[0] != bits.size:
            raise RuntimeError(f"layer {layer.name!r} has {module.weight.shape[0]} channels after pruning, the "
                               f"policy keeps {bits.size}")
        parametrize.register_parametrization(module, "weight", FakeQuantize(bits))
    return work


def freeze(model: nn.Module) -> nn.Module:
    """Replace every :class:`FakeQuantize`-parametrized weight by its quantized value (in place); return ``model``."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, FakeQuantize) for p in module.parametrizations["weight"]
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


@torch.no_grad()
def grid_errors(model: nn.Module, graph: CompressionGraph, policy: Policy, rtol: float = 0.0) -> list[str]:
    """Why ``model`` (physically pruned) is not on the policy's quantization grid; empty when it is.

    Checked per compressible layer: the number of output channels equals the kept count, and re-quantizing the
    weight at the kept bit-widths changes no value by more than ``rtol`` times the layer's largest ``|w|``
    (0 = bit-exact; a float32 re-derived scale can differ from the original by one ulp).
    """
    problems: list[str] = []
    for layer in graph.layers:
        weight = model.get_submodule(layer.name).weight.detach()
        bits = kept_bits(policy, layer.name)
        if weight.shape[0] != bits.size:
            problems.append(f"{layer.name}: {weight.shape[0]} output channels, the recipe keeps {bits.size}")
            continue
        if not weight.numel():
            continue
        error = float((quantize_weight(weight, bits) - weight).abs().max())
        if error > rtol * float(weight.abs().max()):
            problems.append(f"{layer.name}: weights are off the {sorted(set(bits.tolist()))}-bit grid by {error:.3g}")
    return problems

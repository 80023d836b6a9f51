"""Apply a :class:`Policy` to a model: simulated (same architecture) or physically compressed.

* :func:`simulate` writes the quantized weights into a working copy once, so every later forward pass costs
  the same as the FP32 model (no per-forward fake-quant). A 0-bit channel is made to behave exactly like a
  removed one: its kernel, bias and BatchNorm affine shift are zeroed (a zeroed kernel alone would still emit
  the BatchNorm shift ``beta - gamma * mean / std``), and consumers' input slices of it are zeroed, so that
  their quantization scales are those of the physically pruned layer.
* :func:`compress` removes the 0-bit channels with torch-pruning's per-layer pruning functions (following
  the coupling plan of the :class:`CompressionGraph`), then quantizes what is left. Both give the same
  outputs up to float summation order.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ajpq_env.compression.graph import CompressionGraph
from ajpq_env.compression.policy import Policy
from ajpq_env.compression.quantize import quantize_weight

__all__ = ["compress", "physically_prune", "pruned_indices", "quantize_in_place", "simulate", "zero_channels"]


def pruned_indices(graph: CompressionGraph, policy: Policy) -> dict[int, list[int]]:
    """Pruned channel indices of every coupling group that loses at least one channel, keyed by group id."""
    out: dict[int, list[int]] = {}
    for group in graph.groups:
        idxs = policy.pruned(group.leader)
        if idxs.size:
            out[group.id] = idxs.tolist()
    return out


@torch.no_grad()
def zero_channels(model: nn.Module, graph: CompressionGraph, group_id: int, idxs: list[int]) -> None:
    """Make channels ``idxs`` of group ``group_id`` behave as removed, keeping every tensor's shape."""
    index = torch.as_tensor(idxs, dtype=torch.long)
    for name, handler in graph.groups[group_id].plan:
        module = model.get_submodule(name)
        direction = handler.__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if direction != "prune_out_channels":
                continue
            if module.affine:
                module.weight[index] = 0.0
                module.bias[index] = 0.0
            if module.track_running_stats:
                module.running_mean[index] = 0.0
                module.running_var[index] = 1.0
        elif isinstance(module, nn.Conv2d | nn.Linear):
            depthwise = isinstance(module, nn.Conv2d) and module.groups == module.in_channels and module.groups > 1
            if direction == "prune_out_channels" or depthwise:
                module.weight[index] = 0.0
                if module.bias is not None:
                    module.bias[index] = 0.0
            elif isinstance(module, nn.Conv2d) and module.groups != 1:
                raise NotImplementedError(f"{name}: grouped (non-depthwise) convolutions are not supported")
            else:
                module.weight[:, index] = 0.0
        elif any(True for _ in module.parameters(recurse=False)):
            raise NotImplementedError(f"{name}: cannot zero channels of a {type(module).__name__}")


@torch.no_grad()
def quantize_in_place(model: nn.Module, graph: CompressionGraph, policy: Policy, *, physical: bool) -> None:
    """Overwrite every compressible layer's weight by its quantized value at the policy's bit-widths.

    :param physical: ``True`` when pruned channels were removed (use only the surviving channels' bits)
    """
    for layer in graph.layers:
        module = model.get_submodule(layer.name)
        bits = policy[layer.name]
        if physical:
            bits = bits[bits > 0]
        module.weight.copy_(quantize_weight(module.weight, bits))


def simulate(model: nn.Module, graph: CompressionGraph, policy: Policy, *, validate: bool = True) -> nn.Module:
    """A copy of ``model`` with the policy applied in place: pruned channels zeroed, weights quantized."""
    if validate:
        policy.validate(graph)
    work = copy.deepcopy(model)
    for group_id, idxs in pruned_indices(graph, policy).items():
        zero_channels(work, graph, group_id, idxs)
    quantize_in_place(work, graph, policy, physical=False)
    return work


def physically_prune(model: nn.Module, graph: CompressionGraph, pruned: dict[int, list[int]]) -> None:
    """Remove channels in place with torch-pruning's pruning functions, following each group's plan."""
    for group_id, idxs in pruned.items():
        for name, handler in graph.groups[group_id].plan:
            handler(model.get_submodule(name), list(idxs))


def compress(model: nn.Module, graph: CompressionGraph, policy: Policy, *, validate: bool = True) -> nn.Module:
    """A physically pruned, quantized copy of ``model`` (smaller tensors, fewer MACs)."""
    if validate:
        policy.validate(graph)
    work = copy.deepcopy(model)
    physically_prune(work, graph, pruned_indices(graph, policy))
    quantize_in_place(work, graph, policy, physical=True)
    return work


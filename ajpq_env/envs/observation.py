"""Observation features: the AMC/HAQ-style layer embedding and the importance-bucket matrix of a layer.

Static features are computed once per graph and min-max normalised over the network; dynamic features
(budget, previous action) are ratios that already lie in [0, 1]. Every value is clipped into [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ajpq_env.compression import CompressionGraph

__all__ = [
    "CHANNEL_FEATURES",
    "LAYER_FEATURES",
    "SENSITIVITY_FEATURES",
    "channel_matrices",
    "sensitivity_features",
    "static_layer_features",
]

#: Names of the entries of the ``layer`` observation, in order.
LAYER_FEATURES: tuple[str, ...] = (
    "index",
    "is_conv",
    "is_depthwise",
    "is_linear",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "feature_map",
    "log_params",
    "log_macs",
    "sparsity_locked",
    "spent",
    "remaining",
    "rest_minimum",
    "target",
    "prev_sparsity",
    "prev_bits",
    "inputs_kept",
)
_STATIC = 12  # the first 12 entries are static

#: Extra entries of the ``layer`` observation with ``observe_sensitivity=True`` (after the static ones): the loss
#: the layer alone adds at 2 and 4 bits, and its group adds when half pruned (:mod:`ajpq_env.envs.sensitivity`).
SENSITIVITY_FEATURES: tuple[str, ...] = ("sensitivity_2bit", "sensitivity_4bit", "sensitivity_prune")

#: Names of the columns of each row of the ``channels`` observation.
CHANNEL_FEATURES: tuple[str, ...] = (
    "mean_importance",
    "max_importance",
    "min_importance",
    "fraction",
    "mean_range",
    "mean_spread",
)


def _minmax(column: np.ndarray) -> np.ndarray:
    low, high = column.min(), column.max()
    return np.zeros_like(column) if high == low else (column - low) / (high - low)


def static_layer_features(graph: CompressionGraph) -> np.ndarray:
    """``(L, 12)`` static part of the layer embedding, min-max normalised over the network."""
    rows = []
    for layer in graph.layers:
        rows.append(
            [
                layer.index,
                layer.kind == "conv",
                layer.kind == "depthwise",
                layer.kind == "linear",
                layer.in_channels,
                layer.out_channels,
                layer.kernel[0],
                layer.stride,
                layer.in_hw[0],
                np.log1p(layer.params),
                np.log1p(layer.macs),
                bool(graph.sparsity_locked(layer.name)),
            ]
        )
    table = np.asarray(rows, dtype=np.float64)
    for column in (0, 4, 5, 6, 7, 8, 9, 10):
        table[:, column] = _minmax(table[:, column])
    return table


def channel_matrices(graph: CompressionGraph, model: nn.Module, buckets: int) -> np.ndarray:
    """``(L, buckets, 6)``: per layer, one row per importance bucket of its channels (most important first).

    Channels are ordered by their group's importance rank and split into near-equal buckets; a row holds the
    mean, max and min importance (layer's own criterion, over its maximum), the fraction of the layer's
    channels in the bucket, the mean ``max|w_c|`` over the layer's ``max|w|`` (quantization range) and the mean
    ``std(w_c) / max|w_c|`` (how much of its range a channel uses). Empty buckets are zero rows.
    """
    out = np.zeros((len(graph.layers), buckets, len(CHANNEL_FEATURES)))
    for layer in graph.layers:
        weight = model.get_submodule(layer.name).weight.detach().flatten(1).to(torch.float64)
        maxabs = weight.abs().amax(1).numpy()
        spread = np.where(maxabs > 0, weight.std(1, unbiased=False).numpy() / np.maximum(maxabs, 1e-30), 0.0)
        score = graph.layer_scores[layer.name]
        score = score / max(score.max(), 1e-30)
        layer_range = max(maxabs.max(), 1e-30)
        rank = graph.group_rank[layer.group]
        for b, idx in enumerate(np.array_split(rank, buckets)):
            if idx.size == 0:
                continue
            out[layer.index, b] = [
                score[idx].mean(),
                score[idx].max(),
                score[idx].min(),
                idx.size / layer.out_channels,
                maxabs[idx].mean() / layer_range,
                spread[idx].mean(),
            ]
    return np.clip(out, 0.0, 1.0)


def sensitivity_features(graph: CompressionGraph, sensitivity: object) -> np.ndarray:
    """``(L, 3)``: the per-layer probes of :class:`~ajpq_env.envs.sensitivity.Sensitivity` as features, each
    ``log1p`` of the added loss (0 when negative: noise) min-max normalised over the network; a layer's pruning
    sensitivity is its group's (0 for groups that cannot be pruned)."""
    quant = np.maximum(sensitivity.quant_drop, 0.0)
    bits = list(sensitivity.bits)
    prune = np.nan_to_num(np.maximum(sensitivity.prune_drop, 0.0), nan=0.0)
    rows = np.stack([quant[:, bits.index(2)], quant[:, bits.index(4)],
                     np.array([prune[layer.group] for layer in graph.layers])], axis=1)
    rows = np.log1p(rows)
    for column in range(rows.shape[1]):
        rows[:, column] = _minmax(rows[:, column])
    return rows

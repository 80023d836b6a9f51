"""Cost model of a policy, measured on the physically pruned network: storage, MACs and BitOPs.

Storage is exactly what :func:`ajpq_env.compression.packed.export` writes after its header:

* for every compressible layer, its surviving weights packed at their bit-widths into one byte-aligned block,
  ``ceil(sum_c b_c x kernel_size / 8)`` bytes, plus one float32 scale per surviving channel;
* every other floating-point tensor (biases, BatchNorm weight, bias, running mean and variance) in float32.

MACs count the multiply-accumulates of the Conv2d/Linear layers for one sample; BitOPs are
``sum_c MACs_c x b_c x a_bits``. The FP32 reference stores every float tensor in 4 bytes and has
``BitOPs = MACs x 32 x 32``. Budgets are ratios of these against the FP32 reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ajpq_env.compression.graph import CompressionGraph, LayerInfo
from ajpq_env.compression.policy import Policy

__all__ = ["RESOURCES", "Cost", "CostModel", "LayerCost"]

RESOURCES = ("size", "bitops", "macs")


@dataclass(frozen=True)
class LayerCost:
    """Cost of one compressed layer: packed weight bytes, scale bytes, MACs and BitOPs."""

    weight_bytes: int
    scale_bytes: int
    macs: int
    bitops: int
    params: int

    def resource(self, name: str) -> int:
        """The layer's share of resource ``name`` (size counts packed weights and scales)."""
        if name == "size":
            return self.weight_bytes + self.scale_bytes
        return self.macs if name == "macs" else self.bitops


@dataclass(frozen=True)
class Cost:
    """Whole-network cost. ``size_bytes`` equals the exported file's payload (header excluded)."""

    size_bytes: int
    macs: int
    bitops: int
    params: int

    def resource(self, name: str) -> int:
        if name not in RESOURCES:
            raise ValueError(f"unknown resource {name!r}; expected one of {RESOURCES}")
        return {"size": self.size_bytes, "macs": self.macs, "bitops": self.bitops}[name]

    def ratios(self, reference: Cost) -> dict[str, float]:
        """``{"size": ..., "macs": ..., "bitops": ...}`` ratios against ``reference`` (usually FP32)."""
        return {name: self.resource(name) / reference.resource(name) for name in RESOURCES}

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CostModel:
    """Costs of policies on one :class:`CompressionGraph`.

    :param graph: the model's compression graph
    :param a_bits: activation bit-width used in BitOPs (default 8)
    """

    def __init__(self, graph: CompressionGraph, a_bits: int = 8) -> None:
        if not 1 <= a_bits <= 32:
            raise ValueError(f"a_bits must be in 1..32, got {a_bits}")
        self.graph = graph
        self.a_bits = a_bits
        weights = sum(layer.params for layer in graph.layers)
        prunable_extra = sum(g.per_channel_extra * g.channels for g in graph.groups if not g.locked)
        # Float tensors that never shrink: biases/BN of locked groups and anything outside the groups.
        self.fixed_bytes = 4 * (graph.total_float_numel - weights - prunable_extra)
        self.fp32 = Cost(
            size_bytes=graph.fp32_bytes(),
            macs=sum(layer.macs for layer in graph.layers),
            bitops=sum(layer.macs for layer in graph.layers) * 32 * 32,
            params=weights,
        )

    def in_kept(self, layer: LayerInfo, pruned_per_group: dict[int, int]) -> int:
        """Input channels left to ``layer`` when its producer group lost ``pruned_per_group[producer]``."""
        if layer.producer is None:
            return layer.in_channels
        return layer.in_channels - pruned_per_group.get(layer.producer, 0)

    def layer_cost(self, layer: LayerInfo, kept_bits: np.ndarray, in_kept: int) -> LayerCost:
        """Cost of ``layer`` with surviving channels at ``kept_bits`` (no zeros) and ``in_kept`` inputs."""
        return self.layer_cost_sum(layer, int(kept_bits.size), int(kept_bits.sum(dtype=np.int64)), in_kept)

    def layer_cost_sum(self, layer: LayerInfo, kept: int, bit_sum: int, in_kept: int) -> LayerCost:
        """:meth:`layer_cost` from the number of surviving channels and the sum of their bit-widths."""
        area = layer.kernel[0] * layer.kernel[1]
        if layer.kind == "depthwise":
            per_channel = area
        elif layer.kind == "conv":
            per_channel = (in_kept // layer.groups) * area
        else:
            per_channel = in_kept
        macs_per_channel = layer.out_hw[0] * layer.out_hw[1] * per_channel
        return LayerCost(
            weight_bytes=(per_channel * bit_sum + 7) // 8,
            scale_bytes=4 * kept,
            macs=macs_per_channel * kept,
            bitops=macs_per_channel * bit_sum * self.a_bits,
            params=per_channel * kept,
        )

    def extra_bytes(self, group_id: int, kept: int) -> int:
        """float32 bytes of the biases/BatchNorm tensors of an unlocked group with ``kept`` channels."""
        group = self.graph.groups[group_id]
        return 0 if group.locked else 4 * group.per_channel_extra * kept

    def __call__(self, policy: Policy) -> Cost:
        """The cost of ``policy`` (which should be valid for the graph)."""
        pruned = {g.id: g.channels - policy.kept(g.leader) for g in self.graph.groups}
        size = self.fixed_bytes + sum(self.extra_bytes(g.id, g.channels - pruned[g.id]) for g in self.graph.groups)
        macs = bitops = params = 0
        for layer in self.graph.layers:
            bits = policy[layer.name]
            lc = self.layer_cost(layer, bits[bits > 0], self.in_kept(layer, pruned))
            size += lc.weight_bytes + lc.scale_bytes
            macs += lc.macs
            bitops += lc.bitops
            params += lc.params
        return Cost(size_bytes=size, macs=macs, bitops=bitops, params=params)

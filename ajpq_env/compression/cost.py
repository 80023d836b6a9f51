"""Cost model of a policy, measured on the physically pruned network: storage, MACs and BitOPs.

Storage is exactly what :func:`ajpq_env.compression.packed.export` writes after its header, i.e. what the
deployed network (:mod:`ajpq_env.compression.integer`: BatchNorm folded, integer activations) needs:

* for every compressible layer, its surviving weights packed at their bit-widths into one byte-aligned block,
  ``ceil(sum_c b_c x kernel_size / 8)`` bytes; its per-channel scales (BatchNorm folded in) as float16 plus one
  power-of-two exponent byte, ``1 + 2 k`` bytes for ``k`` surviving channels; and, when the layer has a bias
  or a folded BatchNorm, its per-channel biases in the same form, ``1 + 2 k`` bytes;
* for ``a_bits`` <= 8, one float32 scale and one uint8 zero point per activation quantizer (5 bytes each).

Nothing else stays float: BatchNorm parameters and running statistics disappear into the scales and biases.
MACs count the multiply-accumulates of the Conv2d/Linear layers for one sample; BitOPs are
``sum_c MACs_c x b_c x a_bits``. The FP32 reference is the model as trained: every float tensor (BatchNorm
included) in 4 bytes, ``BitOPs = MACs x 32 x 32``. Budgets are ratios of these against the FP32 reference.

Given a :class:`~ajpq_env.compression.latency.LatencyTable` (``ajpq profile``), the model also predicts
**latency** (microseconds, onnxruntime on the machine the table was measured on): the sum of the layers'
interpolated entries for their kept output and input channels and kernel class (int8 weights when every
surviving channel has 2..7 bits, uint8 weights when one has 8, float when ``a_bits=32``), plus the table's
constant for everything else. Its FP32 reference is the FP32 model measured whole. ``"latency"`` is then one
of :attr:`CostModel.resources`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ajpq_env.compression.actquant import check_a_bits
from ajpq_env.compression.graph import CompressionGraph, LayerInfo
from ajpq_env.compression.latency import LatencyTable, kernel_class
from ajpq_env.compression.policy import Policy

__all__ = ["LATENCY", "QUANTIZER_BYTES", "RESOURCES", "Cost", "CostModel", "LayerCost", "vector_bytes"]

#: Resources every cost model has; ``"latency"`` (:data:`LATENCY`) joins them when a latency table is given.
RESOURCES = ("size", "bitops", "macs")
LATENCY = "latency"


def _no_latency() -> ValueError:
    return ValueError("no latency figure: this cost model has no latency table; build one on this machine with "
                      "`ajpq profile --task NAME` and pass it (CostModel(..., latency=table), or the env's "
                      "latency_table argument)")


#: Bytes of one stored per-channel vector of ``k`` values: a power-of-two exponent byte and ``k`` float16.
def vector_bytes(k: int) -> int:
    return 1 + 2 * k


#: Bytes of one activation quantizer: float32 scale and uint8 zero point.
QUANTIZER_BYTES = 5


@dataclass(frozen=True)
class LayerCost:
    """Cost of one compressed layer: packed weight bytes, per-channel scale and bias bytes, MACs and BitOPs."""

    weight_bytes: int
    scale_bytes: int
    macs: int
    bitops: int
    params: int
    latency_us: float | None = None

    def resource(self, name: str) -> float:
        """The layer's share of resource ``name`` (size counts packed weights, scales and biases)."""
        if name == "size":
            return self.weight_bytes + self.scale_bytes
        if name == LATENCY:
            if self.latency_us is None:
                raise _no_latency()
            return self.latency_us
        return self.macs if name == "macs" else self.bitops


@dataclass(frozen=True)
class Cost:
    """Whole-network cost. ``size_bytes`` equals the exported file's payload (header excluded);
    ``latency_us`` is the predicted latency (``None`` without a latency table)."""

    size_bytes: int
    macs: int
    bitops: int
    params: int
    latency_us: float | None = None

    def resource(self, name: str) -> float:
        if name == LATENCY:
            if self.latency_us is None:
                raise _no_latency()
            return self.latency_us
        if name not in RESOURCES:
            raise ValueError(f"unknown resource {name!r}; expected one of {(*RESOURCES, LATENCY)}")
        return {"size": self.size_bytes, "macs": self.macs, "bitops": self.bitops}[name]

    def ratios(self, reference: Cost) -> dict[str, float]:
        """``{"size": ..., "macs": ..., "bitops": ...}`` ratios against ``reference`` (usually FP32), and
        ``"latency"`` when both have a latency figure."""
        names = RESOURCES + ((LATENCY,) if self.latency_us is not None and reference.latency_us is not None else ())
        return {name: self.resource(name) / reference.resource(name) for name in names}

    def to_dict(self) -> dict[str, float]:
        out = asdict(self)
        if self.latency_us is None:
            del out["latency_us"]
        return out


class CostModel:
    """Costs of policies on one :class:`CompressionGraph`.

    :param graph: the model's compression graph
    :param a_bits: activation bit-width (2..8, or 32 for float activations): BitOPs, and whether activation
        quantizers are stored
    :param latency: a latency table of this model (``ajpq profile``), checked against ``graph``; adds the
        ``"latency"`` resource
    """

    def __init__(self, graph: CompressionGraph, a_bits: int = 8, *, latency: LatencyTable | None = None) -> None:
        self.graph = graph
        self.a_bits = check_a_bits(a_bits)
        self.latency = latency
        if latency is not None:
            latency.check_graph(graph)
            latency.require(a_bits)
        weights = sum(layer.params for layer in graph.layers)
        #: bytes that do not depend on the policy: the activation quantizers
        self.fixed_bytes = QUANTIZER_BYTES * graph.deploy.quantizers if a_bits <= 8 else 0
        self.fp32 = Cost(
            size_bytes=graph.fp32_bytes(),
            macs=sum(layer.macs for layer in graph.layers),
            bitops=sum(layer.macs for layer in graph.layers) * 32 * 32,
            params=weights,
            latency_us=None if latency is None else latency.fp32_us,
        )

    @property
    def resources(self) -> tuple[str, ...]:
        """The resources this model can budget: :data:`RESOURCES`, plus ``"latency"`` with a table."""
        return RESOURCES + ((LATENCY,) if self.latency is not None else ())

    def fixed(self, resource: str) -> float:
        """The part of ``resource`` no policy changes: the activation quantizers' bytes, the latency of
        everything but the compressible layers; 0 for MACs and BitOPs."""
        if resource == "size":
            return float(self.fixed_bytes)
        if resource == LATENCY:
            if self.latency is None:
                raise _no_latency()
            return self.latency.constant(self.a_bits)
        return 0.0

    def in_kept(self, layer: LayerInfo, pruned_per_group: dict[int, int]) -> int:
        """Input channels left to ``layer`` when its producer group lost ``pruned_per_group[producer]``."""
        if layer.producer is None:
            return layer.in_channels
        return layer.in_channels - pruned_per_group.get(layer.producer, 0)

    def layer_cost(self, layer: LayerInfo, kept_bits: np.ndarray, in_kept: int) -> LayerCost:
        """Cost of ``layer`` with surviving channels at ``kept_bits`` (no zeros) and ``in_kept`` inputs."""
        return self.layer_cost_sum(layer, int(kept_bits.size), int(kept_bits.sum(dtype=np.int64)), in_kept,
                                   int(kept_bits.max()) if kept_bits.size else 0)

    def layer_cost_sum(
        self, layer: LayerInfo, kept: int, bit_sum: int, in_kept: int, max_bits: int | None = None
    ) -> LayerCost:
        """:meth:`layer_cost` from the number of surviving channels and the sum of their bit-widths.

        :param max_bits: the widest surviving channel's bit-width (the latency's kernel class); ``None``
            assumes 8 (the slower uint8-weight kernels: an upper bound)
        """
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
            scale_bytes=vector_bytes(kept) * (2 if layer.stored_bias else 1),
            macs=macs_per_channel * kept,
            bitops=macs_per_channel * bit_sum * self.a_bits,
            params=per_channel * kept,
            latency_us=None if self.latency is None else self.latency.layer_us(
                layer.name, kept, in_kept, kernel_class(8 if max_bits is None else max_bits, self.a_bits)
            ),
        )

    def __call__(self, policy: Policy) -> Cost:
        """The cost of ``policy`` (which should be valid for the graph)."""
        pruned = {g.id: g.channels - policy.kept(g.leader) for g in self.graph.groups}
        size = self.fixed_bytes
        macs = bitops = params = 0
        latency = None if self.latency is None else self.fixed(LATENCY)
        for layer in self.graph.layers:
            bits = policy[layer.name]
            lc = self.layer_cost(layer, bits[bits > 0], self.in_kept(layer, pruned))
            size += lc.weight_bytes + lc.scale_bytes
            macs += lc.macs
            bitops += lc.bitops
            params += lc.params
            if latency is not None:
                latency += lc.latency_us
        return Cost(size_bytes=size, macs=macs, bitops=bitops, params=params, latency_us=latency)

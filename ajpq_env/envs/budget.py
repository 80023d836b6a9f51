"""Hard resource budget, enforced layer by layer (the AMC/HAQ action-clipping scheme, for joint decisions).

At every step the proposed decision of the current layer is clipped to what the remaining layers can still
satisfy at their minimum (maximal pruning of the groups not decided yet, minimal bit-width), so every finished
episode meets the target. The lower bound of the remaining layers is the exact cost model evaluated at that
minimum, so the check at the end of the episode is exact, not approximate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ajpq_env.compression import CompressionGraph, CostModel, LayerInfo

__all__ = ["MODES", "BudgetTracker", "Decision", "expand_buckets"]

MODES = ("joint", "prune", "quant", "fixed")


def expand_buckets(kept: int, bucket_bits: np.ndarray) -> np.ndarray:
    """Bit-width per surviving channel, most important first: the survivors are split into
    ``len(bucket_bits)`` near-equal rank buckets (``numpy.array_split`` sizes) and bucket ``i`` gets
    ``bucket_bits[i]``; when fewer channels than buckets survive, the trailing buckets are empty."""
    k = len(bucket_bits)
    sizes = np.full(k, kept // k) + (np.arange(k) < kept % k)
    return np.repeat(np.asarray(bucket_bits, dtype=np.int64), sizes)


@dataclass(frozen=True)
class Decision:
    """What one step decided: kept channel count of the group (leaders only) and the survivors' bit-widths."""

    kept: int
    bits: np.ndarray  # one bit-width per surviving channel, most important first
    clipped: bool


class BudgetTracker:
    """Tracks the resource spent by decided layers and clips each new decision to the budget.

    :param graph: the compression graph
    :param costs: its cost model
    :param resource: ``"size"``, ``"bitops"``, ``"macs"``, or ``"latency"`` when ``costs`` has a latency table
    :param target: budget as a ratio of the FP32 model's resource, in (0, 1]
    :param mode: ``"joint"``, ``"prune"``, ``"quant"`` or ``"fixed"`` (one bit-width for the whole network,
        pruning per layer: the paper's SkyNet setting)
    :param b_min: smallest bit-width of a surviving channel
    :param b_max: largest bit-width
    :param fixed_bits: bit-width of every channel in ``"prune"`` mode; in ``"fixed"`` mode the network's
        bit-width set by the user, or ``None`` for the agent's choice at the first step
    :param max_sparsity: largest fraction of a group's channels that may be pruned, in [0, 1)
    :param channel_round: pruned channel counts are multiples of this
    :param fixed_kept: ``{group id: kept channels}`` of groups whose pruning is decided beforehand (e.g. by a
        previous prune-only search); their sparsity is not the agent's
    :param last_b_min: lowest bit-width of the last layer (the classifier) in ``"joint"`` and ``"quant"`` mode
        (``None``: ``b_min``). The budget is enforced layer by layer, so the last layer absorbs whatever the layers
        before it over- or underspent; a classifier is cheap (about 1.5% of a size-1/8 budget on CIFAR-10
        MobileNetV2) and sensitive, so a slight overspending takes it to ``b_min`` and the accuracy with it. With
        a floor, the earlier layers are clipped so that it always fits (HAQ keeps the last layer at 8 bits).
    """

    def __init__(
        self,
        graph: CompressionGraph,
        costs: CostModel,
        *,
        resource: str,
        target: float,
        mode: str,
        b_min: int,
        b_max: int,
        fixed_bits: int | None,
        max_sparsity: float,
        channel_round: int,
        fixed_kept: dict[int, int] | None = None,
        last_b_min: int | None = None,
    ) -> None:
        if resource not in costs.resources:
            hint = " (\"latency\" needs a latency table: `ajpq profile --task NAME`)" if resource == "latency" else ""
            raise ValueError(f"resource must be one of {costs.resources}, got {resource!r}{hint}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not (isinstance(target, int | float) and math.isfinite(target) and 0 < target <= 1):
            raise ValueError(f"target must be a ratio of the FP32 {resource} in (0, 1], got {target!r}")
        if not 2 <= b_min <= b_max <= 8:
            raise ValueError(f"bit-widths must satisfy 2 <= b_min <= b_max <= 8, got b_min={b_min}, b_max={b_max}")
        if fixed_bits is None and mode != "fixed":
            raise ValueError(f"fixed_bits=None (the agent's choice) is only for mode='fixed'; {mode!r} needs an int")
        if fixed_bits is not None and not b_min <= fixed_bits <= b_max:
            raise ValueError(f"fixed_bits must lie in b_min..b_max ({b_min}..{b_max}), got {fixed_bits}")
        if last_b_min is not None:
            if isinstance(last_b_min, bool) or not isinstance(last_b_min, int | np.integer):
                raise TypeError(f"last_b_min must be None or an int, got {last_b_min!r}")
            if not b_min <= last_b_min <= b_max:
                raise ValueError(f"last_b_min must lie in b_min..b_max ({b_min}..{b_max}), got {last_b_min}")
            last_b_min = int(last_b_min)
        if not 0 <= max_sparsity < 1:
            raise ValueError(f"max_sparsity must lie in [0, 1), got {max_sparsity}")
        if channel_round < 1:
            raise ValueError(f"channel_round must be >= 1, got {channel_round}")
        self.graph, self.costs = graph, costs
        self.resource, self.target, self.mode = resource, float(target), mode
        self.b_min, self.b_max, self.fixed_bits = b_min, b_max, fixed_bits
        self.max_sparsity, self.channel_round = max_sparsity, channel_round
        self.last_b_min = last_b_min
        self.fp32_total = costs.fp32.resource(resource)
        self.budget = self.target * self.fp32_total
        # the bit-width the lower bounds of undecided layers assume; in "fixed" mode the network's once chosen
        self.min_bits = fixed_bits if mode == "prune" or (mode == "fixed" and fixed_bits is not None) else b_min
        self.fixed_kept = dict(fixed_kept or {})
        self.min_keep = [self.fixed_kept.get(g.id, self._min_keep(g.id)) for g in graph.groups]
        self.reset()
        self.minimum = self.spent + self.lower_bound(-1, {})
        if self.minimum > self.budget:
            raise ValueError(
                f"target {self.target:g} of FP32 {resource} is impossible in {mode!r} mode: the smallest reachable "
                f"is {self.minimum / self.fp32_total:.4f} (maximal pruning at max_sparsity={max_sparsity}"
                f"{' where not fixed' if self.fixed_kept else ''} and "
                f"{self.min_bits}-bit weights); choose target >= {math.ceil(self.minimum / self.fp32_total * 1e4) / 1e4}"
            )

    # ------------------------------------------------------------------ pruning arithmetic
    def can_prune(self, group_id: int) -> bool:
        """Whether the agent decides this group's sparsity."""
        return self.mode != "quant" and not self.graph.groups[group_id].locked and group_id not in self.fixed_kept

    def max_pruned(self, group_id: int) -> int:
        if not self.can_prune(group_id):
            return 0
        channels = self.graph.groups[group_id].channels
        r = self.channel_round
        return min(int(self.max_sparsity * channels) // r * r, (channels - 1) // r * r)

    def _min_keep(self, group_id: int) -> int:
        return self.graph.groups[group_id].channels - self.max_pruned(group_id)

    def kept_for_sparsity(self, group_id: int, sparsity: float) -> int:
        """Kept channels for a requested sparsity: rounded to ``channel_round``, capped by ``max_sparsity``."""
        channels = self.graph.groups[group_id].channels
        pruned = int(round(sparsity * channels / self.channel_round)) * self.channel_round
        return channels - min(max(pruned, 0), self.max_pruned(group_id))

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        self.spent = self.costs.fixed(self.resource)
        self.kept: dict[int, int] = dict(self.fixed_kept)  # decided groups
        #: "fixed" mode: the one bit-width of the network (``None`` until the agent's first step chooses it)
        self.network_bits: int | None = self.fixed_bits if self.mode == "fixed" else None
        if self.mode == "fixed":
            self.min_bits = self.b_min if self.fixed_bits is None else self.fixed_bits

    def _kept(self, group_id: int, overrides: dict[int, int]) -> int:
        if group_id in overrides:
            return overrides[group_id]
        return self.kept.get(group_id, self.min_keep[group_id])

    def _in_kept(self, layer: LayerInfo, overrides: dict[int, int]) -> int:
        if layer.producer is None:
            return layer.in_channels
        group = self.graph.groups[layer.producer]
        return layer.in_channels - (group.channels - self._kept(layer.producer, overrides))

    def step_cost(self, layer: LayerInfo, bits: np.ndarray, overrides: dict[int, int]) -> float:
        """Resource of ``layer`` with survivors at ``bits``."""
        return self._cost(layer, len(bits), int(bits.sum()), overrides, int(bits.max()) if len(bits) else 0)

    def _cost(self, layer: LayerInfo, kept: int, bit_sum: int, overrides: dict[int, int], max_bits: int) -> float:
        in_kept = self._in_kept(layer, overrides)
        return self.costs.layer_cost_sum(layer, kept, bit_sum, in_kept, max_bits).resource(self.resource)

    def lower_bound(self, index: int, overrides: dict[int, int]) -> float:
        """Smallest resource of the layers after ``index`` given the decisions so far and ``overrides``."""
        return sum(self._min_cost(layer, overrides) for layer in self.graph.layers[index + 1 :])

    def lowest_bits(self, layer: LayerInfo) -> int:
        """The lowest bit-width ``layer``'s survivors may get: ``min_bits``, or ``last_b_min`` on the last layer in
        ``"joint"`` and ``"quant"`` mode."""
        if self.last_b_min is not None and self.mode in ("joint", "quant") and layer.index == len(self.graph.layers) - 1:
            return max(self.min_bits, self.last_b_min)
        return self.min_bits

    def _min_cost(self, layer: LayerInfo, overrides: dict[int, int]) -> float:
        kept = layer.out_channels if self.graph.groups[layer.group].locked else self._kept(layer.group, overrides)
        lowest = self.lowest_bits(layer)
        return self._cost(layer, kept, kept * lowest, overrides, lowest)

    # ------------------------------------------------------------------ the clipping step
    def decide(self, layer: LayerInfo, kept: int, bucket_bits: np.ndarray) -> Decision:
        """Clip a proposed decision of ``layer`` so that the budget stays reachable, and record it.

        :param kept: proposed kept channels (ignored unless the layer leads a prunable group)
        :param bucket_bits: proposed bit-width of each of the K importance buckets of the survivors, most
            important bucket first (see :func:`expand_buckets`)
        """
        group = self.graph.groups[layer.group]
        leads = group.leader == layer.name and self.can_prune(group.id)
        if group.locked:  # members of a locked group may differ in width (e.g. a padded residual stream)
            kept = layer.out_channels
        elif not leads:
            kept = self.kept.get(group.id, group.channels)
        buckets = np.array(bucket_bits, dtype=np.int64)
        if self.mode in ("joint", "quant"):
            buckets = np.maximum(buckets, self.lowest_bits(layer))
        if self.mode == "prune":
            buckets[:] = self.fixed_bits
        clipped = False
        choosing = self.mode == "fixed" and self.network_bits is None
        if self.mode == "fixed" and not choosing:
            buckets[:] = self.network_bits

        # Lower bound of the later layers as a function of this group's kept count: only the layers of this
        # group and its consumers depend on it, so the rest is summed once.
        later = self.graph.layers[layer.index + 1 :]
        affected = [l for l in later if l.group == group.id or l.producer == group.id]
        lb_at: dict[int, float] = {}

        def refresh() -> float:  # again whenever min_bits changes ("fixed" mode's first step)
            lb_at.clear()
            return self.lower_bound(layer.index, {}) - sum(self._min_cost(l, {}) for l in affected)

        base = refresh()

        def fits(k: int, b: np.ndarray) -> bool:
            if k not in lb_at:
                lb_at[k] = base + sum(self._min_cost(l, overrides(k)) for l in affected)
            return self.spent + self.step_cost(layer, b, overrides(k)) + lb_at[k] <= self.budget

        def overrides(k: int) -> dict[int, int]:  # only a leader's step changes its group's kept count
            return {group.id: k} if leads else {}

        # 0) "fixed" mode, first step: the network's bit-width is the largest <= the proposal at which the
        #    budget stays reachable with every remaining layer (this one included) at that width, maximally pruned
        if choosing:
            b = int(buckets[0])
            low_keep = self.min_keep[group.id] if leads else kept
            while b > self.b_min:
                self.min_bits = b
                base = refresh()
                if fits(low_keep, np.full(low_keep, b)):
                    break
                b, clipped = b - 1, True
            self.network_bits = self.min_bits = b
            base = refresh()
            buckets[:] = b
        lowest = self.lowest_bits(layer)  # after step 0, which may set min_bits
        # 1) lower bit-widths, widest bucket first (least important among equals), one bit at a time
        bits = expand_buckets(kept, buckets)
        if self.mode not in ("prune", "fixed"):
            while not fits(kept, bits) and buckets.max() > lowest:
                clipped = True
                if self.mode == "quant":
                    buckets[:] = buckets.max() - 1
                else:
                    buckets[np.flatnonzero(buckets == buckets.max())[-1]] -= 1
                bits = expand_buckets(kept, buckets)
        # 2) prune more (leaders of prunable groups): the fewest extra channels that fit, by bisection
        if not fits(kept, bits) and leads:
            clipped = True
            low, high = self.min_keep[group.id], kept  # fits(low) holds by induction
            step = self.channel_round
            while high - low > step:
                mid = high - ((high - low) // step // 2) * step
                if fits(mid, np.full(mid, lowest)):
                    low = mid
                else:
                    high = mid
            kept = low
            bits = np.full(kept, lowest)
        if self.mode == "fixed":
            bits = np.full(kept, self.network_bits)
        if not fits(kept, bits):  # cannot happen when the budget was reachable at reset; guard against bugs
            raise RuntimeError(f"layer {layer.name!r}: no decision fits the budget; this is a bug, please report it")
        self.spent += self.step_cost(layer, bits, overrides(kept))
        if group.leader == layer.name:
            self.kept[group.id] = kept
        return Decision(kept, bits, clipped)

    def used_fraction(self) -> float:
        """Resource spent so far as a fraction of the budget."""
        return self.spent / self.budget

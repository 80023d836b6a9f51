"""Baseline searches, behind the same :class:`~agents.base.SearchAgent` interface as the learned agents.

Every baseline acts in the env it is given, step by step, so its episodes are measured, clipped to the budget
and recorded exactly as a learned agent's are, and it spends at most the same episode budget:

* :class:`RandomSearch` — uniformly random actions (AMC's and HAQ's random baseline);
* :class:`UniformPrecision` — the same bit-width for every channel: for each bit-width from ``b_max`` down, the
  smallest uniform sparsity that meets the budget (none when the bit-width alone meets it); every such
  candidate is measured and the best kept (the search stops at the first bit-width that needs no pruning);
* :class:`ImportanceHeuristic` — no learning: a layer's sparsity grows with its share of the resource, a
  bucket's bits with its importance (``bits = beta + log2(importance / geometric mean)``, reverse water-filling);
  for each ``beta`` the smallest sparsity scale that meets the budget is measured;
* :class:`TwoStep` — "prune, then quantize", the pipeline AJPQ replaces: a search in ``prune`` mode to a looser
  budget (half the episodes), then a layer-wise bit-width search on the network pruned by stage 1's best recipe
  (the env's ``quant`` mode with ``fixed_pruning``) to the real budget (the other half).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.base import SearchAgent, SearchHooks, better
from ajpq_env.compression import LayerInfo, Policy
from ajpq_env.envs import AJPQEnv
from ajpq_env.envs.budget import expand_buckets
from ajpq_env.records import EpisodeRecord

__all__ = [
    "BASELINES",
    "PRIOR_RULES",
    "SensitivityGreedy",
    "prior_plans",
    "ImportanceHeuristic",
    "Plan",
    "RandomSearch",
    "TwoStep",
    "UniformPrecision",
    "default_prune_target",
]


# ---------------------------------------------------------------------- plans: a recipe and the actions that make it
class Plan:
    """A whole decision given as kept channels per group and bits per importance bucket per layer; it knows its
    recipe (as the env would build it), its cost, and the actions that make the env build it.

    :param env: the AJPQ env (possibly wrapped)
    :param kept: kept channels per prunable group id (missing groups keep all channels)
    :param bucket_bits: ``(layer, kept) -> K bit-widths`` of the layer's survivors' buckets, most important first
    """

    def __init__(self, env: gym.Env, kept: Mapping[int, int], bucket_bits: Callable[[LayerInfo, int], np.ndarray]) -> None:
        base: AJPQEnv = env.unwrapped
        graph, budget = base.graph, base.budget
        levels = base.b_max - base.b_min + 1
        bits: dict[str, np.ndarray] = {}
        self.actions: list[np.ndarray] = []
        for layer in graph.layers:
            group = graph.groups[layer.group]
            k = kept.get(group.id, group.channels) if budget.can_prune(group.id) else group.channels
            buckets = np.clip(np.asarray(bucket_bits(layer, k), dtype=np.int64), base.b_min, base.b_max)
            if base.mode == "prune":
                buckets[:] = budget.fixed_bits
            elif base.mode == "quant":
                buckets[:] = buckets[0]
            channel_bits = np.zeros(layer.out_channels, dtype=np.int64)
            channel_bits[graph.group_rank[group.id][:k]] = expand_buckets(k, buckets)
            bits[layer.name] = channel_bits
            action = np.empty(1 + base.num_buckets)
            pruned = group.channels - k
            action[0] = 2.0 * pruned / (group.channels * budget.max_sparsity) - 1.0 if pruned else -1.0
            action[1:] = -1.0 + 2.0 * (buckets - base.b_min + 0.5) / levels
            self.actions.append(np.clip(action, -1.0, 1.0))
        self.recipe = Policy(bits)
        self.cost = base.costs(self.recipe).resource(budget.resource)
        self.fits = self.cost <= budget.budget

    def play(self, env: gym.Env) -> dict[str, Any]:
        """Run one episode of the plan's actions in ``env``; the last step's ``info``."""
        env.reset()
        info: dict[str, Any] = {}
        for action in self.actions:
            _, _, terminated, truncated, info = env.step(action.astype(np.float32))
        if not (terminated or truncated):
            raise RuntimeError("the plan has fewer actions than the env has layers")
        return info


def _minimal_fit(make: Callable[[float], Plan], high: float, iterations: int = 30) -> Plan | None:
    """The plan ``make(x)`` for the smallest ``x`` in ``[0, high]`` that fits the budget (cost falls with ``x``)."""
    plan = make(0.0)
    if plan.fits:
        return plan
    best = make(high)
    if not best.fits:
        return None
    low = 0.0
    for _ in range(iterations):
        mid = (low + high) / 2
        candidate = make(mid)
        if candidate.fits:
            high, best = mid, candidate
        else:
            low = mid
    return best


class _CandidateSearch(SearchAgent):
    """Measures a fixed list of plans, one episode each, in order, up to the episode budget."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._candidates: list[Plan] | None = None

    def _plans(self) -> list[Plan]:
        raise NotImplementedError

    @property
    def candidates(self) -> list[Plan]:
        if self._candidates is None:
            seen: set[str] = set()
            self._candidates = []
            for plan in self._plans():
                if plan.recipe.digest() not in seen:
                    seen.add(plan.recipe.digest())
                    self._candidates.append(plan)
            if not self._candidates:
                raise ValueError(f"{self.name}: no candidate meets the budget of this env")
        return self._candidates

    def _run(self, hooks: SearchHooks) -> None:
        while not self.done:
            if self.episodes_done >= len(self.candidates):
                self.exhausted = True
                break
            self.candidates[self.episodes_done].play(self.env)
            self._finish_episode(hooks)
            hooks.on_safe_point(self)


def _uniform_groups(env: gym.Env, sparsity: Callable[[int], float]) -> dict[int, int]:
    budget = env.unwrapped.budget
    return {
        g.id: budget.kept_for_sparsity(g.id, sparsity(g.id))
        for g in env.unwrapped.graph.groups
        if budget.can_prune(g.id)
    }


# ---------------------------------------------------------------------- the baselines
class RandomSearch(SearchAgent):
    """Uniformly random actions in [-1, 1] at every step (the env clips them to the budget)."""

    description = "uniformly random actions (AMC's and HAQ's random baseline)"

    def __init__(self) -> None:
        super().__init__("random")
        self._rng = np.random.default_rng(0)

    def setup(self, env: gym.Env, *, episodes: int, seed: int) -> None:
        super().setup(env, episodes=episodes, seed=seed)
        self._rng = np.random.default_rng(seed)

    def _run(self, hooks: SearchHooks) -> None:
        assert self.env is not None
        shape = self.env.action_space.shape
        while not self.done:
            self.env.reset()
            terminated = truncated = False
            while not (terminated or truncated):
                action = self._rng.uniform(-1.0, 1.0, shape).astype(np.float32)
                _, _, terminated, truncated, _ = self.env.step(action)
            self._finish_episode(hooks)
            hooks.on_safe_point(self)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "rng": self._rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._rng.bit_generator.state = state["rng"]


class UniformPrecision(_CandidateSearch):
    """One bit-width everywhere; from ``b_max`` down, the smallest uniform sparsity that meets the budget."""

    description = "one bit-width everywhere, plus the least uniform pruning that meets the budget"

    def __init__(self) -> None:
        super().__init__("uniform")

    def _plans(self) -> list[Plan]:
        base = self.env.unwrapped
        plans = []
        for bits in range(base.b_max, base.b_min - 1, -1):
            def make(s: float, bits: int = bits) -> Plan:
                return Plan(self.env, _uniform_groups(self.env, lambda _: s), lambda layer, k: np.full(base.num_buckets, bits))

            plan = _minimal_fit(make, base.budget.max_sparsity)
            if plan is not None:
                plans.append(plan)
                if all(plan.recipe.kept(g.leader) == g.channels for g in base.graph.groups):
                    break  # fits unpruned: every lower bit-width is dominated
        return plans


class ImportanceHeuristic(_CandidateSearch):
    """No learning: sparsity from the layer's resource share, bits from the importance of each bucket.

    :param exponent: a group's sparsity is ``alpha * (cost / max cost) ** exponent``, capped at ``max_sparsity``
    """

    description = "no learning: sparsity from layer cost, bits from channel importance"

    def __init__(self, exponent: float = 0.5) -> None:
        super().__init__("heuristic")
        self.exponent = exponent

    def _plans(self) -> list[Plan]:
        base = self.env.unwrapped
        graph, budget = base.graph, base.budget
        use_macs = budget.resource in ("macs", "bitops")
        weight = {}
        for group in graph.groups:
            if budget.can_prune(group.id):
                members = [graph.layer(name) for name in group.members + group.consumers]
                weight[group.id] = sum(layer.macs if use_macs else layer.params for layer in members)
        top = max(weight.values(), default=1) or 1
        weight = {g: (w / top) ** self.exponent for g, w in weight.items()}
        alpha_max = budget.max_sparsity / max(min(weight.values(), default=1.0), 1e-6)

        def bucket_bits(beta: int) -> Callable[[LayerInfo, int], np.ndarray]:
            def bits(layer: LayerInfo, kept: int) -> np.ndarray:
                scores = graph.layer_scores[layer.name][graph.group_rank[layer.group][:kept]]
                means = np.array([s.mean() if s.size else np.nan for s in np.array_split(scores, base.num_buckets)])
                valid = np.maximum(means[~np.isnan(means)], 1e-12)
                geomean = math.exp(float(np.log(valid).mean()))
                out = np.round(beta + np.log2(np.maximum(np.nan_to_num(means, nan=geomean), 1e-12) / geomean))
                return np.clip(out, base.b_min, base.b_max).astype(np.int64)

            return bits

        plans = []
        for beta in range(base.b_max, base.b_min - 1, -1):
            def make(alpha: float, beta: int = beta) -> Plan:
                kept = _uniform_groups(self.env, lambda group_id: min(budget.max_sparsity, alpha * weight[group_id]))
                return Plan(self.env, kept, bucket_bits(beta))

            plan = _minimal_fit(make, alpha_max)
            if plan is not None:
                plans.append(plan)
                if all(plan.recipe.kept(g.leader) == g.channels for g in graph.groups):
                    break
        return plans


class SensitivityGreedy(_CandidateSearch):
    """No learning: HAQ-style greedy allocation from measured per-layer sensitivities.

    The predicted metric loss of a decision is the sum, over layers, of the loss measured with that layer alone at
    its bit-width, and over groups, of the loss measured with that group alone pruned
    (:func:`~ajpq_env.envs.sensitivity.layer_sensitivity`, measured once per task and cached). From 8 bits and no
    pruning, the greedy repeatedly takes the cheapest move per unit of resource saved (one bit less on a layer, or
    ``prune_step`` more of a group's channels pruned) until the budget is met. Candidates differ in how much
    pruning is allowed (``prune_caps``), so the first episodes span the prune-vs-quantize trade-off.

    :param prune_caps: largest sparsity per group of each candidate (capped by the env's ``max_sparsity``)
    :param prune_step: sparsity added by one pruning move
    :param samples: search samples per sensitivity probe
    """

    description = "no learning: greedy bit/sparsity allocation from measured per-layer sensitivity (HAQ-style)"

    def __init__(self, prune_caps: tuple[float, ...] = (0.0, 0.25, 0.5, 0.8), prune_step: float = 0.125,
                 samples: int = 500) -> None:
        super().__init__("sensitivity")
        self.prune_caps, self.prune_step, self.samples = tuple(prune_caps), prune_step, samples

    def _plans(self) -> list[Plan]:
        from ajpq_env.envs.sensitivity import PROBE_SPARSITY, layer_sensitivity

        base = self.env.unwrapped
        graph, budget = base.graph, base.budget
        if base.mode not in ("joint", "prune", "quant"):
            return []  # "fixed" mode: one network-wide bit-width, which this per-layer greedy does not model
        sens = layer_sensitivity(base.task, graph, base.evaluator.settings, samples=self.samples)
        prunable = [g.id for g in graph.groups if budget.can_prune(g.id)]
        start_bits = budget.fixed_bits if base.mode == "prune" else base.b_max
        bit_moves = base.mode != "prune"

        def prune_loss(group_id: int, sparsity: float) -> float:
            drop = sens.prune_drop[group_id]
            return 0.0 if np.isnan(drop) else max(float(drop), 0.0) * (sparsity / PROBE_SPARSITY) ** 2

        plans = []
        for cap in self.prune_caps:
            cap = min(cap, budget.max_sparsity)
            bits = {layer.name: start_bits for layer in graph.layers}
            sparsity = dict.fromkeys(prunable, 0.0)

            current = _layer_plan(self.env, bits, sparsity)
            while not current.fits:
                moves = []
                for layer in graph.layers if bit_moves else []:
                    b = bits[layer.name]
                    if b > base.b_min:
                        loss = sens.drop_at(layer.index, b - 1) - sens.drop_at(layer.index, b)
                        moves.append((max(loss, 0.0) + 1e-6, ("bits", layer.name, b - 1)))
                for g in prunable:
                    s = sparsity[g]
                    if s + self.prune_step <= cap + 1e-9:
                        loss = prune_loss(g, s + self.prune_step) - prune_loss(g, s)
                        moves.append((max(loss, 0.0) + 1e-6, ("prune", g, s + self.prune_step)))
                if not moves:
                    break
                # exact resource saved by each move (the cost model, on the layers the move touches)
                scored = []
                for loss, move in moves:
                    kind, key, value = move
                    trial_bits = {**bits, key: value} if kind == "bits" else bits
                    trial_sparsity = {**sparsity, key: value} if kind == "prune" else sparsity
                    touched = _touched(graph, kind, key)
                    saved = (_plan_cost(self.env, bits, sparsity, budget, only=touched)
                             - _plan_cost(self.env, trial_bits, trial_sparsity, budget, only=touched))
                    if saved > 0:
                        scored.append((loss / saved, move))
                if not scored:
                    break
                _, (kind, key, value) = min(scored, key=lambda item: item[0])
                if kind == "bits":
                    bits[key] = value
                else:
                    sparsity[key] = value
                current = _layer_plan(self.env, bits, sparsity)
            if current.fits:
                plans.append(current)
            if not prunable:
                break  # every cap gives the same plan
        return plans


def _layer_plan(env: gym.Env, bits: Mapping[str, int], sparsity: Mapping[int, float]) -> Plan:
    """The plan with one bit-width per layer and one sparsity per prunable group."""
    base = env.unwrapped
    kept = {g: base.budget.kept_for_sparsity(g, s) for g, s in sparsity.items()}
    return Plan(env, kept, lambda layer, k: np.full(base.num_buckets, bits[layer.name]))


def _touched(graph: Any, kind: str, key: Any) -> set[str]:
    """Layers whose cost a greedy move changes: the layer itself, or a group's members and consumers."""
    if kind == "bits":
        return {key}
    group = graph.groups[key]
    return set(group.members) | set(group.consumers)


def _plan_cost(env: gym.Env, bits: Mapping[str, int], sparsity: Mapping[int, float], budget: Any,
               only: set[str] | None = None) -> float:
    """Resource of the recipe with per-layer ``bits`` and per-group ``sparsity`` (cheaper than building a Plan);
    with ``only``, the share of those layers (without the fixed part)."""
    base = env.unwrapped
    graph, costs = base.graph, base.costs
    kept = {g.id: budget.kept_for_sparsity(g.id, sparsity[g.id]) if g.id in sparsity else g.channels
            for g in graph.groups}
    pruned = {g.id: g.channels - kept[g.id] for g in graph.groups}
    total = float(costs.fixed_bytes) if budget.resource == "size" and only is None else 0.0
    for layer in graph.layers:
        if only is not None and layer.name not in only:
            continue
        group = graph.groups[layer.group]
        k = layer.out_channels if group.locked else kept[group.id]
        lc = costs.layer_cost_sum(layer, k, k * bits[layer.name], costs.in_kept(layer, pruned))
        total += lc.resource(budget.resource)
    return total


# ---------------------------------------------------------------------- two-step: prune, then quantize
def default_prune_target(env: gym.Env) -> float:
    """Stage 1's budget for :class:`TwoStep`: pruning and quantization share the compression geometrically.

    With ``r8`` the ratio of the unpruned network at ``fixed_bits`` and ``rmin`` at ``b_min``, the prune stage
    gets ``sqrt(target * r8)``, at most ``0.98 * target * r8 / rmin`` (so that stage 2 can still reach the
    target by lowering bits); ``target`` itself when bit-widths do not change the resource (MACs).
    """
    base = env.unwrapped
    costs, budget = base.costs, base.budget
    fp32 = costs.fp32.resource(budget.resource)
    r_fixed = costs(Policy.uniform(base.graph, budget.fixed_bits)).resource(budget.resource) / fp32
    r_min = costs(Policy.uniform(base.graph, base.b_min)).resource(budget.resource) / fp32
    if r_fixed - r_min < 1e-9:
        return budget.target
    return min(math.sqrt(budget.target * r_fixed), 0.98 * budget.target * r_fixed / r_min, 1.0)


class TwoStep(SearchAgent):
    """Prune, then quantize: stage 1 searches ``prune`` mode (fixed bits) to ``prune_target`` for half the
    episodes; stage 2 searches layer-wise bit-widths of the network pruned by stage 1's best recipe
    (``quant`` mode with ``fixed_pruning``) to the env's target for the other half. Both stages use ``stage_algo``.

    :param stage_algo: the agent of both stages (any name of :func:`agents.registry.agent_names` but ``two-step``;
        default ``"ddpg"``, as AMC and HAQ)
    :param prune_target: stage 1's budget ratio (default :func:`default_prune_target`)
    :param agent_kwargs: passed to the stage agents (e.g. ``schedule``, ``hyperparams``, ``tensorboard_log``)
    """

    description = "prune search (half the episodes), then layer-wise bits search on the pruned network"

    def __init__(self, stage_algo: str = "ddpg", prune_target: float | None = None, **agent_kwargs: Any) -> None:
        super().__init__("two-step")
        if stage_algo == "two-step":
            raise ValueError("two-step cannot use itself as its stage agent")
        self.stage_algo, self.prune_target, self.agent_kwargs = stage_algo, prune_target, agent_kwargs
        self.stage = 1
        self.stage1_best: EpisodeRecord | None = None
        self.inner: SearchAgent | None = None

    def setup(self, env: gym.Env, *, episodes: int, seed: int) -> None:
        super().setup(env, episodes=episodes, seed=seed)
        base: AJPQEnv = env.unwrapped
        if base.mode != "joint":
            raise ValueError(f"two-step searches a 'joint'-mode env (it makes the prune stage itself), got {base.mode!r}")
        if episodes < 2:
            raise ValueError(f"two-step needs at least 2 episodes (one per stage), got {episodes}")
        if self.prune_target is None:
            self.prune_target = default_prune_target(env)
        self.stage1_episodes = episodes // 2
        self.stage, self.stage1_best = 1, None
        self._make_stage(1)

    def _make_stage(self, stage: int) -> None:
        from agents.registry import make_agent

        base: AJPQEnv = self.env.unwrapped
        if stage == 1:
            env = AJPQEnv(base.task, **{**base.spec_kwargs, "mode": "prune", "target": self.prune_target})
            episodes = self.stage1_episodes
        else:
            if self.stage1_best is None:
                raise RuntimeError("stage 1 found no recipe within its budget")
            # HAQ on the pruned network: layer-wise bits, the pruned channels of stage 1's best recipe kept fixed
            kwargs = {**base.spec_kwargs, "mode": "quant", "fixed_pruning": self.stage1_best.recipe}
            env = AJPQEnv(base.task, **kwargs)
            episodes = self.total_episodes - self.stage1_episodes
        self.stage = stage
        self.inner = make_agent(self.stage_algo, **self.agent_kwargs)
        self.inner.setup(env, episodes=episodes, seed=self.seed + stage - 1)

    def _run(self, hooks: SearchHooks) -> None:
        stage_hooks = _StageHooks(self, hooks)
        if self.stage == 1:
            self.inner.run(stage_hooks)
            self._make_stage(2)
            hooks.on_safe_point(self)
        self.inner.run(stage_hooks)

    def state(self) -> dict[str, Any]:
        best = self.stage1_best.to_row() if self.stage1_best is not None else None
        return {**super().state(), "stage": self.stage, "prune_target": self.prune_target, "stage1_best": best}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if not math.isclose(state["prune_target"], self.prune_target):
            raise ValueError(f"the checkpoint's prune target is {state['prune_target']}, this run's {self.prune_target}")
        self.stage1_best = EpisodeRecord.from_row(state["stage1_best"]) if state["stage1_best"] else None
        if state["stage"] == 2:
            self._make_stage(2)

    def save(self, directory: str | Path) -> None:
        super().save(directory)
        self.inner.save(Path(directory) / f"stage{self.stage}")

    def load(self, directory: str | Path) -> None:
        super().load(directory)
        self.inner.load(Path(directory) / f"stage{self.stage}")


class _StageHooks(SearchHooks):
    """Renumbers a stage's records as episodes of the two-step run and tracks stage 1's best recipe."""

    def __init__(self, outer: TwoStep, hooks: SearchHooks) -> None:
        self.outer, self.hooks = outer, hooks

    def on_episode(self, record: EpisodeRecord) -> None:
        outer = self.outer
        record = replace(
            record, agent=outer.name, seed=outer.seed, episode=outer.episodes_done,
            env_id=outer._env_id if outer.stage == 2 else "",
        )
        outer.episodes_done += 1
        if outer.stage == 1 and better(record, outer.stage1_best, outer.prune_target, record.resource):
            outer.stage1_best = record
        self.hooks.on_episode(record)

    def on_safe_point(self, agent: SearchAgent) -> None:
        self.hooks.on_safe_point(self.outer)


#: name -> baseline class (constructed with keyword arguments only)
BASELINES: dict[str, type[SearchAgent]] = {
    "random": RandomSearch,
    "uniform": UniformPrecision,
    "heuristic": ImportanceHeuristic,
    "sensitivity": SensitivityGreedy,
    "two-step": TwoStep,
}

#: The non-learning rules whose plans can seed a learned search (:mod:`agents.guide`).
PRIOR_RULES: dict[str, type[_CandidateSearch]] = {
    "sensitivity": SensitivityGreedy,
    "heuristic": ImportanceHeuristic,
    "uniform": UniformPrecision,
}


def prior_plans(env: gym.Env, rules: tuple[str, ...], limit: int) -> list[Plan]:
    """The candidate plans of ``rules`` on ``env``, in order, without duplicate recipes, at most ``limit``."""
    plans: list[Plan] = []
    seen: set[str] = set()
    for name in rules:
        rule = PRIOR_RULES[name]()
        rule.setup(env, episodes=limit, seed=0)
        try:
            candidates = rule.candidates
        except ValueError:  # no candidate meets this env's budget
            continue
        for plan in candidates:
            if plan.recipe.digest() not in seen and len(plans) < limit:
                seen.add(plan.recipe.digest())
                plans.append(plan)
    return plans

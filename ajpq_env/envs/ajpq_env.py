"""The AJPQ environment: one episode compresses a whole network, one step decides one layer."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ajpq_env.compression import B_MAX, B_MIN, CompressionGraph, CostModel, DeploySettings, Policy
from ajpq_env.compression.latency import LatencyTable, LatencyTableError, default_table_path
from ajpq_env.envs.budget import MODES, BudgetTracker
from ajpq_env.envs.evaluator import Evaluator
from ajpq_env.envs.observation import (
    _STATIC,
    CHANNEL_FEATURES,
    LAYER_FEATURES,
    channel_matrices,
    sensitivity_features,
    static_layer_features,
)
from ajpq_env.records import EpisodeRecord, ValidationResult
from ajpq_env.tasks import Task, load_task
from ajpq_env.tasks.registry import check_search_size

__all__ = ["REWARDS", "AJPQEnv"]

#: Named reward variants (the reward is 0 on every step but the last).
REWARDS = ("accuracy", "delta", "amc")


@lru_cache(maxsize=8)
def _cached_task(name: str, data_root: str | None, weights: str | None, search_size: int | None) -> Task:
    return load_task(name, data_root=data_root, weights=weights, search_size=search_size)


def _check_numbers(floats: dict[str, Any], ints: dict[str, Any]) -> None:
    """``TypeError`` for a bool, a string or another non-number where a number is expected (``target=True`` is
    not 1.0), or a non-integral value where an int is; ``ValueError`` for a float that is not finite."""
    for name, value in {**floats, **ints}.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        if name in ints and not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if name != "target" and not math.isfinite(value):  # the budget explains a bad target itself
            raise ValueError(f"{name} must be finite, got {value!r}")


class AJPQEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Joint pruning and quantization of a pretrained network as a sequential decision problem.

    ## Description

    AJPQ (Tang, Wei, Li, 2020) treats pruning a channel as quantizing it to 0 bits. An episode walks the
    compressible layers (Conv2d incl. depthwise, Linear) in forward order; at each layer the agent picks the
    layer's sparsity (the least important channels by the importance criterion are pruned) and the bit-widths
    of the surviving channels, grouped into ``num_buckets`` importance buckets. Coupled layers (a depthwise
    conv and its producer, convs adding into one residual stream) share one pruned channel set, decided by
    the first of them; the classifier's outputs are never pruned. At the end the network is built as it deploys
    (:class:`~ajpq_env.compression.pipeline.Compressor`: physically pruned and quantized, optionally fine-tuned,
    BatchNorm recalibrated and folded, activations quantized to ``a_bits`` with ranges calibrated on the same
    training batches, integer arithmetic as onnxruntime runs it) and evaluated on the task's search split.

    ## Action Space

    ``Box(-1, 1, (1 + num_buckets,), float32)``; values outside [-1, 1] are clipped; NaN/inf and arrays that are
    not real numbers (complex, bool, strings) raise ``ValueError``.

    | index | meaning | mapping |
    |-------|---------|---------|
    | 0 | sparsity of the layer's channel group | ``(a + 1) / 2 * max_sparsity``, rounded to ``channel_round`` channels, at least one kept |
    | 1..K | bit-width of importance bucket k of the survivors (most important first) | ``b_min + floor((a + 1) / 2 * (b_max - b_min + 1))``, capped at ``b_max`` |

    Element 0 is ignored on layers whose sparsity is locked (followers of a coupled group, the classifier,
    layers with a non-identity coupling); ``info["locked"]`` then says why. In ``"prune"`` mode the bits are
    ``fixed_bits`` and elements 1..K are ignored; in ``"quant"`` mode nothing is pruned and element 1 sets
    the layer's single bit-width. In ``"fixed"`` mode (the paper's SkyNet setting) every surviving channel of
    the network has one bit-width: element 1 of the *first* step chooses it (unless ``fixed_bits`` sets it),
    elements 1..K are ignored afterwards, and element 0 prunes each layer as in joint mode. Before it is applied
    the decision is clipped to the budget
    (``info["clipped"]``): bit-widths are lowered first (widest, least important bucket first), then
    more channels are pruned.

    ## Observation Space

    ``Dict`` of two float32 boxes in [0, 1]:

    | key | shape | content |
    |-----|-------|---------|
    | ``layer`` | ``(19,)`` (``(22,)`` with ``observe_sensitivity``) | index, type (conv/depthwise/linear), in/out channels, kernel, stride, feature-map size, log params, log MACs (min-max over the network), sparsity locked, budget spent, budget remaining, minimum cost of the remaining layers (all as fractions of the FP32 resource), target, previous sparsity, previous mean bits, fraction of input channels kept |
    | ``channels`` | ``(num_buckets, 6)`` | per importance bucket: mean, max, min importance, fraction of channels, mean weight range, mean weight spread |

    Names: :data:`~ajpq_env.envs.observation.LAYER_FEATURES`, :data:`~ajpq_env.envs.observation.CHANNEL_FEATURES`.

    ## Rewards

    0 on every step but the last. At the last step, with ``m`` the search-split top-1 accuracy of the
    compressed model: ``"accuracy"`` gives ``m``; ``"delta"`` gives ``m - m_fp32``; ``"amc"`` gives
    ``-(1 - m) * log(cost)`` with ``cost`` the absolute resource (bytes, MACs or BitOPs), as in AMC.
    The budget is hard: every episode meets it, so no penalty term is needed.

    ## Starting State

    The first compressible layer, nothing decided, the whole budget available. The env is deterministic:
    ``reset(seed=...)`` seeds ``np_random`` for API compatibility, and the evaluation uses fixed samples.

    ## Episode End

    ``terminated`` is ``True`` after the last layer's step; ``truncated`` is always ``False``. Stepping a
    finished episode raises ``RuntimeError``. The last step's ``info`` holds the ``recipe``, ``metric``,
    ``fp32_metric``, ``size_ratio``, ``macs_ratio``, ``bitops_ratio``, ``eval_seconds``, ``cache_hit`` and
    ``budget_met``; with a latency table also ``latency_ratio`` and ``latency_us`` (predicted).

    ## Arguments

    | argument | default | meaning |
    |----------|---------|---------|
    | ``task`` | ``"mnist5k-mobilenet_v2"`` | a task name (:data:`ajpq_env.tasks.TASKS`) or a loaded :class:`~ajpq_env.tasks.Task` |
    | ``mode`` | ``"joint"`` | ``"joint"`` (AJPQ), ``"prune"`` (AMC-like), ``"quant"`` (HAQ-like), ``"fixed"`` (one bit-width for the network, pruning per layer) |
    | ``target`` | ``0.125`` | budget as a ratio of the FP32 model's ``resource``, in (0, 1] |
    | ``resource`` | ``"size"`` | ``"size"`` (bytes), ``"bitops"``, ``"macs"``, or ``"latency"`` (onnxruntime on this machine, predicted by the latency table; see ``latency_table``) |
    | ``reward`` | ``"accuracy"`` | one of :data:`REWARDS` |
    | ``num_buckets`` | ``4`` | K, importance buckets per layer |
    | ``b_min``, ``b_max`` | ``2``, ``8`` | bit-width range of surviving channels |
    | ``last_b_min`` | ``None`` | lowest bit-width of the last layer (the classifier) in ``"joint"`` and ``"quant"`` mode, ``b_min``..``b_max`` (``None``: ``b_min``): its proposals below it are raised, and the earlier layers are clipped so that it fits. The budget is enforced layer by layer, so the last layer absorbs what the earlier ones overspent; without a floor a slight overspending can take a cheap, sensitive classifier to ``b_min`` |
    | ``fixed_bits`` | ``8`` | bit-width of every channel in ``"prune"`` mode; in ``"fixed"`` mode the network's bit-width, or ``None`` for the agent's choice at the first step (clipped so the budget stays reachable at that width) |
    | ``max_sparsity`` | ``0.8`` | largest prunable fraction of a group's channels |
    | ``channel_round`` | ``1`` | pruned channel counts are multiples of this |
    | ``importance`` | ``"l1"`` | importance criterion (``"l1"``, ``"l2"``) |
    | ``a_bits`` | ``8`` | activation bit-width: 2..8 (integer activations, as deployed), 32 (float activations) |
    | ``bn_calibration_batches`` | ``1`` | training batches that recalibrate BatchNorm and set the activation ranges |
    | ``calibration_batch_size`` | ``64`` | samples per calibration / fine-tuning batch |
    | ``finetune_steps`` | ``0`` | quantization-aware SGD steps before evaluation |
    | ``finetune_lr`` | ``1e-3`` | their learning rate |
    | ``eval_batch_size`` | ``100`` | batch size of the evaluation |
    | ``cache_size`` | ``4096`` | evaluated policies kept in the cache (by policy hash) |
    | ``fixed_pruning`` | ``None`` | a recipe whose pruned channels are kept fixed (e.g. the best of a prune-only search); the agent then only picks bit-widths of its survivors |
    | ``data_root``, ``weights``, ``search_size`` | ``None`` | passed to :func:`~ajpq_env.tasks.load_task` (``search_size``: an int >= 1) |
    | ``latency_table`` | ``None`` | a latency table (:class:`~ajpq_env.compression.latency.LatencyTable` or its JSON path) of this task measured on this machine; ``None`` with ``resource="latency"``: the one ``ajpq profile --task NAME`` cached (1 thread, batch 1). A table measured elsewhere, with other library versions or for another model is refused |

    Numbers are checked before anything loads: a bool or string where a number is expected is a ``TypeError``
    (``target=True`` is not 1), a non-finite float a ``ValueError``.
    | ``observe_sensitivity`` | ``False`` | append the layer's measured sensitivity (loss added at 2 and 4 bits, and by half pruning its group; :mod:`~ajpq_env.envs.sensitivity`, measured once per task and cached) to the ``layer`` observation |
    | ``render_mode`` | ``None`` | ``"ansi"`` (per-layer table) or ``"rgb_array"`` (per-layer bars) |

    ## Version History

    * v0: initial release.

    ## Example

    >>> import gymnasium as gym, ajpq_env
    >>> env = gym.make("AJPQ-MobileNet-v0")
    >>> obs, info = env.reset(seed=0)
    >>> terminated = False
    >>> while not terminated:
    ...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    >>> info["size_ratio"] <= 0.125
    True
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        task: str | Task = "mnist5k-mobilenet_v2",
        *,
        mode: str = "joint",
        target: float = 0.125,
        resource: str = "size",
        reward: str = "accuracy",
        num_buckets: int = 4,
        b_min: int = B_MIN,
        b_max: int = B_MAX,
        last_b_min: int | None = None,
        fixed_bits: int | None = 8,
        max_sparsity: float = 0.8,
        channel_round: int = 1,
        importance: str = "l1",
        a_bits: int = 8,
        bn_calibration_batches: int = 1,
        calibration_batch_size: int = 64,
        finetune_steps: int = 0,
        finetune_lr: float = 1e-3,
        eval_batch_size: int = 100,
        cache_size: int = 4096,
        data_root: str | None = None,
        weights: str | None = None,
        search_size: int | None = None,
        fixed_pruning: Policy | Mapping[str, Any] | str | Path | None = None,
        latency_table: LatencyTable | str | Path | None = None,
        observe_sensitivity: bool = False,
        render_mode: str | None = None,
    ) -> None:
        _check_numbers(
            {"target": target, "max_sparsity": max_sparsity, "finetune_lr": finetune_lr},
            {"num_buckets": num_buckets, "b_min": b_min, "b_max": b_max,
             **({} if fixed_bits is None else {"fixed_bits": fixed_bits}),  # None: "fixed" mode, the agent's choice
             **({} if last_b_min is None else {"last_b_min": last_b_min}),
             "channel_round": channel_round, "a_bits": a_bits, "bn_calibration_batches": bn_calibration_batches,
             "calibration_batch_size": calibration_batch_size, "finetune_steps": finetune_steps,
             "eval_batch_size": eval_batch_size, "cache_size": cache_size},
        )
        check_search_size(search_size)
        if not isinstance(observe_sensitivity, bool):
            raise TypeError(f"observe_sensitivity must be True or False, got {observe_sensitivity!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(num_buckets, int) or num_buckets < 1:
            raise ValueError(f"num_buckets must be a positive int, got {num_buckets!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if isinstance(task, Task):
            self.task = task
        else:
            self.task = _cached_task(
                task, None if data_root is None else str(data_root), None if weights is None else str(weights),
                search_size,
            )
        self.mode, self.reward_name, self.render_mode = mode, reward, render_mode
        self.num_buckets, self.b_min, self.b_max = num_buckets, b_min, b_max
        self.graph = CompressionGraph(self.task.model, self.task.example_input(), importance)
        self.latency_table = self._latency_table(latency_table, resource)
        self.costs = CostModel(self.graph, a_bits, latency=self.latency_table)
        self._fixed_idx = self._fixed_pruning(fixed_pruning)
        self.budget = BudgetTracker(
            self.graph, self.costs, resource=resource, target=target, mode=mode, b_min=b_min, b_max=b_max,
            fixed_bits=fixed_bits, max_sparsity=max_sparsity, channel_round=channel_round,
            fixed_kept={g: len(idx) for g, idx in self._fixed_idx.items()}, last_b_min=last_b_min,
        )
        settings = DeploySettings(
            a_bits=a_bits, bn_calibration_batches=bn_calibration_batches,
            calibration_batch_size=calibration_batch_size, finetune_steps=finetune_steps, finetune_lr=finetune_lr,
        )
        self.evaluator = Evaluator(self.task, self.graph, settings, eval_batch_size=eval_batch_size,
                                   cache_size=cache_size)
        self.fp32_metric = self.task.fp32_metric("search", eval_batch_size)
        self._static = static_layer_features(self.graph)
        self.observe_sensitivity = bool(observe_sensitivity)
        if self.observe_sensitivity:  # measured once per task and setting, then read from the cache
            from ajpq_env.envs.sensitivity import layer_sensitivity

            probes = layer_sensitivity(self.task, self.graph, settings)
            self._static = np.concatenate([self._static, sensitivity_features(self.graph, probes)], axis=1)
        self._channels = channel_matrices(self.graph, self.task.model, num_buckets).astype(np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1 + num_buckets,), np.float32)
        self.observation_space = spaces.Dict(
            {
                "layer": spaces.Box(0.0, 1.0, (self._static.shape[1] + len(LAYER_FEATURES) - _STATIC,), np.float32),
                "channels": spaces.Box(0.0, 1.0, (num_buckets, len(CHANNEL_FEATURES)), np.float32),
            }
        )
        self.spec_kwargs = {
            "mode": mode, "target": target, "resource": resource, "reward": reward, "num_buckets": num_buckets,
            "b_min": b_min, "b_max": b_max, "fixed_bits": fixed_bits, "max_sparsity": max_sparsity,
            "channel_round": channel_round, "importance": importance, "a_bits": a_bits,
            "bn_calibration_batches": bn_calibration_batches, "calibration_batch_size": calibration_batch_size,
            "finetune_steps": finetune_steps, "finetune_lr": finetune_lr, "observe_sensitivity": observe_sensitivity,
            "fixed_pruning": None if fixed_pruning is None else _as_policy(fixed_pruning).to_dict(),
        }
        if last_b_min is not None:  # a replay must budget with the same floor (absent: runs made before it)
            self.spec_kwargs["last_b_min"] = last_b_min
        if latency_table is not None:  # a replay must budget with the same table
            table_path = self.latency_table.path
            self.spec_kwargs["latency_table"] = None if table_path is None else str(table_path)
        self._t: int | None = None
        self._bits: dict[str, np.ndarray] = {}
        self._kept_idx: dict[int, np.ndarray] = {}
        self._prev = (0.0, 1.0)
        self._start = 0.0
        self._last_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options:
            raise ValueError(f"reset() takes no options, got {sorted(options)}")
        self.budget.reset()
        self._t = 0
        self._bits = {}
        self._kept_idx = dict(self._fixed_idx)
        self._prev = (0.0, 1.0)
        self._start = time.perf_counter()
        # self._last_info keeps the last finished episode (for record()) until the next one ends
        return self._observation(), {"layer": self.graph.layers[0].name, "num_layers": len(self.graph.layers)}

    def step(self, action: np.ndarray):
        if self._t is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= len(self.graph.layers):
            raise RuntimeError("the episode is over (terminated=True was returned); call reset() to start another")
        raw = np.asarray(action)
        if raw.dtype.kind not in "iuf":  # complex, bool, strings, objects: never cast silently
            raise ValueError(f"action must be a real-valued float array, got dtype {raw.dtype}")
        action = raw.astype(np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action.tolist()}")
        action = np.clip(action, -1.0, 1.0)
        layer = self.graph.layers[self._t]
        group = self.graph.groups[layer.group]
        budget = self.budget

        sparsity = (action[0] + 1.0) / 2.0 * budget.max_sparsity
        kept = budget.kept_for_sparsity(group.id, sparsity)
        levels = self.b_max - self.b_min + 1
        bucket_bits = np.minimum(self.b_min + np.floor((action[1:] + 1.0) / 2.0 * levels), self.b_max).astype(int)
        if self.mode in ("quant", "fixed"):
            bucket_bits[:] = bucket_bits[0]
        decision = budget.decide(layer, kept, bucket_bits)

        if group.locked:  # every channel survives; rank them by the layer's own importance
            survivors = np.argsort(-self.graph.layer_scores[layer.name], kind="stable")
        else:
            if group.id not in self._kept_idx:  # this step decides the group's pruned set: least important go
                self._kept_idx[group.id] = self.graph.group_rank[group.id][: decision.kept]
            survivors = self._kept_idx[group.id]
        bits = np.zeros(layer.out_channels, dtype=np.int64)
        bits[survivors] = decision.bits
        self._bits[layer.name] = bits

        actual_sparsity = 1.0 - len(survivors) / layer.out_channels
        mean_bits = float(decision.bits.mean())
        self._prev = (actual_sparsity, (mean_bits - self.b_min) / max(self.b_max - self.b_min, 1))
        info: dict[str, Any] = {
            "layer": layer.name,
            "kind": layer.kind,
            "sparsity": actual_sparsity,
            "kept": len(survivors),
            "mean_bits": mean_bits,
            "clipped": decision.clipped,
            "locked": self._lock_reason(layer.name),
            "budget_used": budget.used_fraction(),
        }
        if self.mode == "fixed":
            info["network_bits"] = budget.network_bits
        self._t += 1
        terminated = self._t == len(self.graph.layers)
        reward = 0.0
        if terminated:
            result = self.apply(self.recipe())
            reward = result["reward"]
            info.update(result)
            info["walltime"] = time.perf_counter() - self._start
            self._last_info = info
            obs = self._observation(final=True)
        else:
            obs = self._observation()
        return obs, float(reward), terminated, False, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        from ajpq_env.envs.render import render_ansi, render_rgb

        rows = self._layer_rows()
        if self.render_mode == "ansi":
            return render_ansi(rows, self._last_info)
        return render_rgb(rows, self.b_max)

    # ------------------------------------------------------------------ AJPQ API
    def recipe(self) -> Policy:
        """The policy chosen in the episode that just ended."""
        if self._t is None or self._t < len(self.graph.layers):
            raise RuntimeError("the episode has not ended yet: the recipe exists once every layer is decided")
        return Policy(
            {layer.name: self._bits[layer.name] for layer in self.graph.layers},
            meta={
                "task": self.task.name,
                "model": self.task.spec.model,
                **{k: v for k, v in self.spec_kwargs.items() if k != "fixed_pruning"},
            },
        )

    def apply(self, recipe: Policy | Mapping[str, Any] | str | Path) -> dict[str, Any]:
        """Measure a recipe (a :class:`Policy`, its dict, or a JSON file): metric, costs, reward.

        The recipe is validated against this env's model (a recipe for another model is refused, naming
        both) but not clipped: ``budget_met`` says whether it meets this env's target.
        """
        policy = _as_policy(recipe)
        task = policy.meta.get("task")
        if task is not None and task != self.task.name:
            raise ValueError(f"the recipe was made for task {task!r}; this env's task is {self.task.name!r}")
        policy.validate(self.graph, self.b_min, self.b_max)
        cost = self.costs(policy)
        ratios = cost.ratios(self.costs.fp32)
        result = self.evaluator(policy)
        resource = self.budget.resource
        if self.reward_name == "accuracy":
            reward = result.metric
        elif self.reward_name == "delta":
            reward = result.metric - self.fp32_metric
        else:
            reward = -(1.0 - result.metric) * math.log(max(cost.resource(resource), 1))
        return {
            "recipe": policy.to_dict(),
            "metric": result.metric,
            "fp32_metric": self.fp32_metric,
            "reward": reward,
            "size_ratio": ratios["size"],
            "macs_ratio": ratios["macs"],
            "bitops_ratio": ratios["bitops"],
            "size_bytes": cost.size_bytes,
            "eval_seconds": result.seconds,
            "cache_hit": result.cache_hit,
            "fragile": result.fragile,
            "budget_met": cost.resource(resource) <= self.budget.budget,
            **({} if cost.latency_us is None else {"latency_ratio": ratios["latency"], "latency_us": cost.latency_us}),
        }

    def record(self, *, env_id: str = "", agent: str = "", seed: int | None = None, episode: int = 0) -> EpisodeRecord:
        """The episode that just ended as a replayable :class:`~ajpq_env.records.EpisodeRecord`."""
        info = self._last_info
        if not info:
            raise RuntimeError("no finished episode to record")
        return EpisodeRecord(
            env_id=env_id, task=self.task.name, mode=self.mode, resource=self.budget.resource,
            target=self.budget.target, agent=agent, seed=seed, episode=episode, metric=info["metric"],
            fp32_metric=info["fp32_metric"], size_ratio=info["size_ratio"], macs_ratio=info["macs_ratio"],
            bitops_ratio=info["bitops_ratio"], reward=info["reward"], walltime=info["walltime"],
            recipe=info["recipe"], env_kwargs=dict(self.spec_kwargs),
        )

    def validate(self, record: EpisodeRecord, tolerance: float = 1e-6) -> ValidationResult:
        """Replay ``record`` in this env and report every number that does not match (never raises on mismatch).

        The metric and reward may differ by ``tolerance`` plus the share of search samples decided by a near-tie
        (``info["fragile"]``: a float summation order, e.g. another thread count, may flip those), so the verdict
        does not depend on the replaying machine's threads.
        """
        out = ValidationResult(record)
        try:
            replay = self.apply(record.recipe)
        except (ValueError, KeyError, TypeError) as err:
            out.errors.append(f"recipe does not apply: {err}")
            return out
        out.replayed = {k: replay[k] for k in ("metric", "size_ratio", "macs_ratio", "bitops_ratio", "reward")}
        slack = replay["fragile"] / max(len(self.task.splits["search"]), 1)
        for key, value in out.replayed.items():
            recorded = getattr(record, key)
            allowed = tolerance + (slack * (1.0 if key != "reward" else self._reward_per_metric()))
            if not (math.isnan(recorded) or abs(recorded - value) <= allowed):
                out.errors.append(f"{key}: recorded {recorded:.6g}, replayed {value:.6g}")
        if record.task and record.task != self.task.name:
            out.errors.append(f"task: recorded {record.task!r}, this env has {self.task.name!r}")
        if record.target and not replay["budget_met"]:
            out.errors.append(f"budget: recipe exceeds target {self.budget.target} of {self.budget.resource}")
        return out

    # ------------------------------------------------------------------ internals
    def _reward_per_metric(self) -> float:
        """How much the reward moves per unit of metric (for replay tolerances)."""
        if self.reward_name == "amc":
            return math.log(max(self.costs.fp32.resource(self.budget.resource), 2))
        return 1.0

    def _latency_table(self, table: LatencyTable | str | Path | None, resource: str) -> LatencyTable | None:
        """The latency table to use: the one given, or for ``resource="latency"`` the task's cached one."""
        if isinstance(table, LatencyTable):
            table.check_key()
            return table
        if table is None and resource != "latency":
            return None
        if table is not None and not isinstance(table, str | Path):
            raise TypeError(f"latency_table must be a LatencyTable, a JSON path or None, got {type(table).__name__}")
        path = default_table_path(self.task.name) if table is None else Path(table)
        if table is None and not path.is_file():
            raise LatencyTableError(f'resource="latency" needs a latency table of task {self.task.name!r} measured on '
                                    f"this machine; none is cached at {str(path)!r}. Build it with `ajpq profile "
                                    f"--task {self.task.name}` (minutes), or pass latency_table=PATH")
        return LatencyTable.load(path, self.graph, threads=1 if table is None else None,
                                 batch=1 if table is None else None)

    def _fixed_pruning(self, recipe: Policy | Mapping[str, Any] | str | Path | None) -> dict[int, np.ndarray]:
        """Surviving channels (most important first) of every group that ``recipe`` prunes."""
        if recipe is None:
            return {}
        policy = _as_policy(recipe)
        policy.validate(self.graph)
        fixed: dict[int, np.ndarray] = {}
        for group in self.graph.groups:
            pruned = policy.pruned(group.leader)
            if pruned.size:
                rank = self.graph.group_rank[group.id]
                fixed[group.id] = rank[~np.isin(rank, pruned)]
        return fixed

    def _lock_reason(self, name: str) -> str:
        """Why the sparsity of layer ``name`` is not the agent's decision in this env (``""`` when it is)."""
        structural = self.graph.sparsity_locked(name)
        if structural:
            return structural
        if self.graph.layer(name).group in self._fixed_idx:
            return "pruning fixed by fixed_pruning"
        return "quant mode" if self.mode == "quant" else ""

    def _observation(self, final: bool = False) -> dict[str, np.ndarray]:
        index = len(self.graph.layers) - 1 if final else self._t
        layer = self.graph.layers[index]
        budget = self.budget
        fp32 = budget.fp32_total
        rest = 0.0 if final else budget.lower_bound(index - 1, {})
        if layer.producer is None:
            inputs_kept = 1.0
        else:
            producer = self.graph.groups[layer.producer]
            inputs_kept = len(self._kept_idx.get(producer.id, range(producer.channels))) / producer.channels
        dynamic = [
            budget.spent / fp32,
            max(budget.budget - budget.spent, 0.0) / fp32,
            rest / fp32,
            budget.target,
            self._prev[0],
            self._prev[1],
            inputs_kept,
        ]
        vector = np.concatenate([self._static[index], dynamic])
        return {
            "layer": np.clip(vector, 0.0, 1.0).astype(np.float32),
            "channels": self._channels[index].copy(),
        }

    def _layer_rows(self) -> list[dict[str, Any]]:
        rows = []
        for layer in self.graph.layers:
            bits = self._bits.get(layer.name)
            rows.append(
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "out": layer.out_channels,
                    "kept": None if bits is None else int(np.count_nonzero(bits)),
                    "sparsity": None if bits is None else 1.0 - np.count_nonzero(bits) / layer.out_channels,
                    "mean_bits": None if bits is None else float(bits[bits > 0].mean()),
                    "locked": self._lock_reason(layer.name),
                }
            )
        return rows


def _as_policy(recipe: Policy | Mapping[str, Any] | str | Path) -> Policy:
    if isinstance(recipe, Policy):
        return recipe
    if isinstance(recipe, str | Path):
        return Policy.load(recipe)
    if isinstance(recipe, Mapping):
        return Policy.from_dict(recipe)
    raise TypeError(f"recipe must be a Policy, a recipe dict or a JSON path, got {type(recipe).__name__}")


"""The AJPQ environment: API conformance, determinism, the hard budget, replay, rendering and bad input."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ajpq_env
from ajpq_env import AJPQEnv
from ajpq_env.compression import CostModel, Policy
from ajpq_env.envs import random_episode
from ajpq_env.envs.evaluator import EvalResult
from ajpq_env.envs.registration import ENV_IDS, register_envs
from ajpq_env.tasks import synthetic_task


@pytest.fixture(scope="module")
def tiny_task():
    return synthetic_task("mobilenet_v2", input_shape=(3, 16, 16), sizes=(64, 32, 32))


def _rollout(env, actions):
    obs, info = env.reset(seed=0)
    trace = [(obs, info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, terminated, truncated, info))
        if terminated:
            break
    return trace


def _random_episode(env, rng):
    return random_episode(env, rng, seed=int(rng.integers(1 << 30)))


# ------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_registered_ids_pass_env_checkers(env_id):
    try:
        env = gym.make(env_id, search_size=200)
    except FileNotFoundError as err:
        pytest.skip(f"{env_id}: data or weights not available here ({err})")
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    env.close()


def test_register_is_idempotent():
    before = {k for k in gym.registry if k.startswith("AJPQ-")}
    register_envs()
    register_envs()
    assert {k for k in gym.registry if k.startswith("AJPQ-")} == before == set(ENV_IDS)
    assert {"AJPQ-MobileNet-v0", "AJPQ-MobileNet-Prune-v0", "AJPQ-MobileNet-Quant-v0",
            "AJPQ-ResNet20-CIFAR10-v0", "AJPQ-MobileNet-CIFAR10-v0", "AJPQ-MobileNet-ImageNet-v0"} <= before


def test_random_episode_draws_each_element_in_its_bounds():
    class Recorder(gym.Wrapper):
        def __init__(self, env):
            super().__init__(env)
            self.actions = []

        def step(self, action):
            self.actions.append(action)
            return super().step(action)

    env = Recorder(AJPQEnv(synthetic_task(), target=0.3))
    info = random_episode(env, np.random.default_rng(7), low=(0.5, -1.0), high=(0.6, -0.8), seed=1)
    actions = np.stack(env.actions)
    assert len(actions) == len(env.unwrapped.graph.layers) and info["budget_met"]
    assert (actions[:, 0] >= 0.5).all() and (actions[:, 0] <= 0.6).all()
    assert (actions[:, 1:] >= -1.0).all() and (actions[:, 1:] <= -0.8).all()
    env.actions.clear()
    random_episode(env, np.random.default_rng(7), seed=1)  # scalar bounds: the stream of rng.uniform(-1, 1, shape)
    reference = np.random.default_rng(7)
    expected = np.stack([reference.uniform(-1, 1, env.action_space.shape) for _ in env.actions]).astype(np.float32)
    np.testing.assert_array_equal(np.stack(env.actions), expected)


def test_default_env_offline_episode():
    """`gym.make("AJPQ-MobileNet-v0")` works from the packaged weights and data, with no network."""
    env = gym.make("AJPQ-MobileNet-v0")
    info = _random_episode(env, np.random.default_rng(0))
    assert info["budget_met"] and info["size_ratio"] <= 0.125
    assert 0.9 <= info["fp32_metric"] <= 1.0  # the pretrained model on its search split
    assert 0.0 <= info["metric"] <= 1.0
    assert info["walltime"] < 60


def test_env_checkers_on_tiny_env_all_modes(tiny_task):
    for mode, target in (("joint", 0.125), ("prune", 0.2), ("quant", 0.2)):
        env = AJPQEnv(tiny_task, mode=mode, target=target, render_mode="ansi")
        gym_check_env(env)
        sb3_check_env(env, warn=True)


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_everything(tiny_task):
    rng = np.random.default_rng(7)
    env_a, env_b = AJPQEnv(tiny_task), AJPQEnv(tiny_task)
    for _ in range(2):
        actions = rng.uniform(-1, 1, (len(env_a.graph.layers), env_a.action_space.shape[0])).astype(np.float32)
        trace_a, trace_b = _rollout(env_a, actions), _rollout(env_b, actions)
        assert len(trace_a) == len(trace_b) == len(actions) + 1
        for step_a, step_b in zip(trace_a, trace_b, strict=True):
            for item_a, item_b in zip(step_a, step_b, strict=True):
                if isinstance(item_a, dict) and "layer" in item_a and isinstance(item_a["layer"], np.ndarray):
                    for key in item_a:
                        assert np.array_equal(item_a[key], item_b[key])
                elif isinstance(item_a, dict):
                    a = {k: v for k, v in item_a.items() if k not in ("eval_seconds", "walltime", "budget_used")}
                    b = {k: v for k, v in item_b.items() if k not in ("eval_seconds", "walltime", "budget_used")}
                    assert a.keys() == b.keys()
                    for key in a:
                        assert a[key] == b[key], key
                else:
                    assert item_a == item_b
        assert env_a.recipe() == env_b.recipe()


# ------------------------------------------------------------------------------------------ budget
@pytest.mark.parametrize("resource", ["size", "bitops", "macs"])
def test_random_episodes_never_end_over_budget(resource):
    """500 random-action episodes per resource, targets down to the minimum, extreme actions (each of the 9
    (mode, target) envs of each model plays every action kind many times)."""
    rng = np.random.default_rng({"size": 0, "bitops": 1, "macs": 2}[resource])
    for model, count in (("resnet20", 250), ("mobilenet_v1", 250)):
        task = synthetic_task(model, input_shape=(3, 8, 8), sizes=(8, 4, 4))
        envs = []
        for mode in ("joint", "prune", "quant"):
            probe = AJPQEnv(task, mode=mode, resource=resource, target=1.0, cache_size=0)
            minimum = probe.budget.minimum / probe.budget.fp32_total
            for target in (minimum * 1.0001, (minimum + 1) / 2, 1.0):
                if target > 1:
                    continue
                env = AJPQEnv(task, mode=mode, resource=resource, target=min(target, 1.0), cache_size=0)
                env.evaluator = lambda policy: EvalResult(0.0, 0.0, False)  # the budget is under test, not accuracy
                envs.append(env)
        costs = CostModel(envs[0].graph)
        for episode in range(count):
            env = envs[episode % len(envs)]
            env.reset(seed=episode)
            terminated = False
            kind = episode % 4
            while not terminated:
                if kind == 0:
                    action = np.ones(env.action_space.shape)
                elif kind == 1:
                    action = -np.ones(env.action_space.shape)
                else:
                    action = rng.uniform(-1.2, 1.2, env.action_space.shape)
                _, _, terminated, _, info = env.step(action)
            assert info["budget_met"], (model, env.mode, env.budget.target)
            policy = env.recipe()
            policy.validate(env.graph)
            spent = costs(policy).resource(resource)
            assert spent <= env.budget.budget
            assert spent == pytest.approx(env.budget.spent)


def test_impossible_target_is_refused(tiny_task):
    with pytest.raises(ValueError, match=r"target 0.001 of FP32 size is impossible in 'joint' mode: the smallest reachable is"):
        AJPQEnv(tiny_task, target=0.001)
    with pytest.raises(ValueError, match="target must be a ratio"):
        AJPQEnv(tiny_task, target=1.5)
    with pytest.raises(ValueError, match="target must be a ratio"):
        AJPQEnv(tiny_task, target=float("nan"))


def test_tight_budget_clips_and_reports(tiny_task):
    env = AJPQEnv(tiny_task, target=0.07)
    env.reset(seed=0)
    infos = []
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(np.ones(env.action_space.shape) * np.array([-1] + [1] * 4))
        infos.append(info)
    assert any(i["clipped"] for i in infos)
    assert info["budget_met"]


def test_modes(tiny_task):
    prune = AJPQEnv(tiny_task, mode="prune", target=0.2, fixed_bits=6)
    _random_episode(prune, np.random.default_rng(0))
    bits = np.concatenate(list(prune.recipe().values()))
    assert set(np.unique(bits)) <= {0, 6}
    quant = AJPQEnv(tiny_task, mode="quant", target=0.2)
    _random_episode(quant, np.random.default_rng(0))
    for name, b in quant.recipe().items():
        assert np.all(b > 0) and len(np.unique(b)) == 1, name


def test_locked_layers_report_and_follow(tiny_task):
    env = AJPQEnv(tiny_task)
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(env.action_space.sample())
        layer = env.graph.layer(info["layer"])
        assert info["locked"] == env.graph.sparsity_locked(layer.name)
    policy = env.recipe()
    policy.validate(env.graph)  # coupled layers prune the same channels
    assert np.all(policy["classifier.1"] > 0)


def test_pruned_channels_are_least_important(tiny_task):
    env = AJPQEnv(tiny_task, target=0.2)
    _random_episode(env, np.random.default_rng(3))
    policy = env.recipe()
    for group in env.graph.groups:
        pruned = policy.pruned(group.leader)
        if pruned.size:
            scores = env.graph.group_scores[group.id]
            kept = np.setdiff1d(np.arange(group.channels), pruned)
            assert scores[pruned].max() <= scores[kept].min()


# ------------------------------------------------------------------------------------------ replay
def test_recipe_apply_validate_and_cache(tiny_task):
    env = AJPQEnv(tiny_task)
    info = _random_episode(env, np.random.default_rng(1))
    record = env.record(agent="random", seed=1)
    assert record.metric == info["metric"] and record.recipe == info["recipe"]
    fresh = AJPQEnv(tiny_task)
    result = fresh.validate(record)
    assert result.ok, str(result)
    assert not result.replayed == {}
    again = fresh.apply(env.recipe())
    assert again["cache_hit"] and again["metric"] == info["metric"]
    record.metric += 0.5
    record.size_ratio *= 2
    bad = fresh.validate(record)
    assert not bad.ok
    assert any(e.startswith("metric:") for e in bad.errors) and any(e.startswith("size_ratio:") for e in bad.errors)
    record.recipe = 42  # not a recipe at all: reported, not raised
    assert fresh.validate(record).errors == ["recipe does not apply: recipe must be a Policy, a recipe dict or a JSON path, got int"]


def test_recipe_for_other_task_refused(tiny_task):
    env = AJPQEnv(tiny_task)
    _random_episode(env, np.random.default_rng(1))
    other = Policy(dict(env.recipe()), meta={"task": "cifar10-resnet20"})
    with pytest.raises(ValueError, match="made for task 'cifar10-resnet20'; this env's task is 'synthetic-mobilenet_v2'"):
        env.apply(other)


def test_recipe_before_end_raises(tiny_task):
    env = AJPQEnv(tiny_task)
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="has not ended"):
        env.recipe()


# ------------------------------------------------------------------------------------------ bad input
def test_bad_actions(tiny_task):
    env = AJPQEnv(tiny_task)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(env.action_space.sample())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="must be finite"):
        env.step(np.array([np.nan, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="must be finite"):
        env.step(np.array([0, np.inf, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"must have shape \(5,\), got \(3,\)"):
        env.step(np.zeros(3))
    # a bad action loses nothing: the episode goes on from the same layer
    _, _, _, _, info = env.step(np.full(5, 7.0))  # out of range: clipped to [-1, 1] (documented)
    assert info["layer"] == env.graph.layers[0].name and info["mean_bits"] == 8
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(env.action_space.sample())
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(env.action_space.sample())


def test_bad_kwargs():
    with pytest.raises(TypeError, match="unexpected keyword argument 'targt'"):
        gym.make("AJPQ-MobileNet-v0", targt=0.1)
    with pytest.raises(ValueError, match="mode must be one of"):
        AJPQEnv(synthetic_task(), mode="both")
    with pytest.raises(ValueError, match="resource must be one of"):
        AJPQEnv(synthetic_task(), resource="energy")
    with pytest.raises(ValueError, match="needs a latency table .*`ajpq profile --task synthetic-mobilenet_v2`"):
        AJPQEnv(synthetic_task(), resource="latency")  # no table measured on this machine (tests/test_latency.py)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        AJPQEnv("nope")


# ------------------------------------------------------------------------------------------ render
def test_render_modes(tiny_task):
    env = AJPQEnv(tiny_task, render_mode="ansi")
    _random_episode(env, np.random.default_rng(0))
    text = env.render()
    assert "features.0.0" in text and "metric" in text and "follows" in text
    env = AJPQEnv(tiny_task, render_mode="rgb_array")
    _random_episode(env, np.random.default_rng(0))
    image = env.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 0


def test_observation_bounds(tiny_task):
    env = AJPQEnv(tiny_task)
    obs, _ = env.reset(seed=0)
    terminated = False
    while not terminated:
        assert env.observation_space.contains(obs)
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not truncated
        if not terminated:
            assert reward == 0.0
    assert env.observation_space.contains(obs)
    assert not math.isnan(reward)


def test_package_exports():
    assert ajpq_env.__version__ and "AJPQEnv" in ajpq_env.__all__


def test_finetune_steps_keep_the_recipe(tiny_task):
    from ajpq_env.compression.qat import grid_errors

    env = AJPQEnv(tiny_task, finetune_steps=3, calibration_batch_size=16)
    info = _random_episode(env, np.random.default_rng(5))
    policy = env.recipe()
    model = env.evaluator.compressor.compressed(policy)
    assert grid_errors(model, env.graph, policy) == []
    assert 0.0 <= info["metric"] <= 1.0
    plain = AJPQEnv(tiny_task).evaluator.compressor.compressed(policy)
    moved = any(
        not np.array_equal(model.get_submodule(l.name).weight.detach().numpy(), plain.get_submodule(l.name).weight.detach().numpy())
        for l in env.graph.layers
    )
    assert moved  # the fine-tuning steps changed the weights (still on the grid)


def test_fixed_pruning_keeps_the_given_channels(tiny_task):
    first = AJPQEnv(tiny_task, mode="prune", target=0.3)
    _random_episode(first, np.random.default_rng(2))
    pruned_recipe = first.recipe()
    # any channels may be fixed, not only the least important ones: prune the most important of one group
    group = next(g for g in first.graph.groups if first.budget.can_prune(g.id))
    bits = {name: np.array(b) for name, b in pruned_recipe.items()}
    for name in group.members:
        bits[name][:] = 8
        bits[name][first.graph.group_rank[group.id][0]] = 0
    fixed = Policy(bits)
    for mode in ("joint", "quant"):
        env = AJPQEnv(tiny_task, mode=mode, target=0.2, fixed_pruning=fixed)
        rng = np.random.default_rng(0)
        env.reset(seed=0)
        terminated = False
        while not terminated:
            _, _, terminated, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
            if env.graph.layer(info["layer"]).group in env.budget.fixed_kept:
                assert info["locked"] in ("pruning fixed by fixed_pruning", "quant mode") or "follows" in info["locked"]
        result = env.recipe()
        for g in env.graph.groups:
            assert np.array_equal(result.pruned(g.leader), fixed.pruned(g.leader)), g.leader
        assert info["budget_met"]
    with pytest.raises(ValueError, match="impossible"):
        AJPQEnv(tiny_task, mode="quant", target=0.01, fixed_pruning=fixed)


@pytest.mark.parametrize("mode", ["joint", "quant"])
def test_last_layer_floor_holds_and_the_budget_is_met(mode):
    """``last_b_min``: the classifier never goes below it (its proposals are raised, earlier layers clipped to make
    room), every episode still meets the budget, down to the tightest target the floor allows; ``None`` changes
    nothing."""
    task = synthetic_task("mobilenet_v2", input_shape=(3, 8, 8), sizes=(8, 4, 4))
    rng = np.random.default_rng(0)
    plain = AJPQEnv(task, mode=mode, target=1.0, cache_size=0)
    floored = AJPQEnv(task, mode=mode, target=1.0, last_b_min=6, cache_size=0)
    assert floored.budget.minimum > plain.budget.minimum  # the floor is in the lower bound
    last = plain.graph.layers[-1].name
    for target in (floored.budget.minimum / floored.budget.fp32_total * 1.0001, 0.15, 0.5):
        env = AJPQEnv(task, mode=mode, target=target, last_b_min=6, cache_size=0)
        env.evaluator = lambda policy: EvalResult(0.0, 0.0, False)  # the budget is under test, not accuracy
        for episode in range(12):
            env.reset(seed=episode)
            terminated = False
            while not terminated:  # all-high, all-low and random proposals
                action = [np.ones(5), -np.ones(5), rng.uniform(-1.2, 1.2, 5)][episode % 3]
                _, _, terminated, _, info = env.step(action)
            assert info["budget_met"], (target, episode)
            bits = env.recipe()[last]
            assert bits.min() >= 6, (target, episode, bits)
            assert CostModel(env.graph)(env.recipe()).resource("size") == pytest.approx(env.budget.spent)
    # a floor at b_min is no floor: the same decisions as without one
    a, b = (AJPQEnv(task, mode=mode, target=0.15, last_b_min=m, cache_size=0) for m in (None, 2))
    for env in (a, b):
        env.evaluator = lambda policy: EvalResult(0.0, 0.0, False)
    actions = [rng.uniform(-1, 1, 5) for _ in plain.graph.layers]
    assert _rollout(a, actions)[-1][-1]["recipe"]["layers"] == _rollout(b, actions)[-1][-1]["recipe"]["layers"]
    assert "last_b_min" not in a.spec_kwargs and floored.spec_kwargs["last_b_min"] == 6


def test_last_layer_floor_is_checked(tiny_task):
    with pytest.raises(ValueError, match=r"last_b_min must lie in b_min..b_max \(2..8\), got 9"):
        AJPQEnv(tiny_task, last_b_min=9)
    with pytest.raises(ValueError, match=r"last_b_min must lie in b_min..b_max \(3..8\), got 2"):
        AJPQEnv(tiny_task, b_min=3, last_b_min=2)
    with pytest.raises(TypeError, match="last_b_min must be a number"):
        AJPQEnv(tiny_task, last_b_min="4")
    with pytest.raises(TypeError, match="last_b_min must be an int"):
        AJPQEnv(tiny_task, last_b_min=4.0)

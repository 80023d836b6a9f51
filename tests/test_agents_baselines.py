"""The baselines: one interface with the learned agents, same budget, honest records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import make_agent
from agents.base import meets_budget
from agents.baselines import Plan, TwoStep, default_prune_target
from ajpq_env import AJPQEnv
from ajpq_env.compression import Policy
from ajpq_env.tasks import synthetic_task

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task():
    return synthetic_task()


def replay_ok(task, record) -> None:
    """The record replays in a fresh env of its own kwargs (CompilerGym-style validation)."""
    result = AJPQEnv(task, **record.env_kwargs).validate(record)
    assert result.ok, str(result)


@pytest.mark.parametrize("name", ["random", "uniform", "heuristic"])
def test_baseline_respects_budget_and_episode_count(task, name):
    result = make_agent(name).search(AJPQEnv(task), episodes=5, seed=0)
    assert 1 <= result.episodes <= 5 and [r.episode for r in result.records] == list(range(result.episodes))
    assert all(r.agent == name and meets_budget(r, 0.125, "size") for r in result.records)
    assert result.best is not None and result.best.metric == max(r.metric for r in result.records)
    replay_ok(task, result.best)


def test_deterministic_baselines_repeat_exactly(task):
    for name in ("random", "heuristic"):
        first = make_agent(name).search(AJPQEnv(task), episodes=3, seed=3).records
        second = make_agent(name).search(AJPQEnv(task), episodes=3, seed=3).records
        assert [r.recipe for r in first] == [r.recipe for r in second]


def test_uniform_precision_gives_one_bit_width_per_candidate(task):
    result = make_agent("uniform").search(AJPQEnv(task), episodes=20, seed=0)
    widths = []
    for record in result.records:
        bits = np.concatenate([np.asarray(b) for b in record.recipe["layers"].values()])
        assert len(set(bits[bits > 0].tolist())) == 1  # uniform precision (pruned channels are 0)
        widths.append(int(bits[bits > 0][0]))
    assert widths == sorted(widths, reverse=True) and widths[0] == 8  # from b_max down
    assert result.episodes < 20  # stops when it has nothing left to try


def test_plan_actions_rebuild_the_planned_recipe(task):
    env = AJPQEnv(task)
    graph = env.graph
    kept = {g.id: max(1, g.channels // 2) for g in graph.groups if env.budget.can_prune(g.id)}
    plan = Plan(env, kept, lambda layer, k: np.array([6, 5, 4, 3]))
    assert plan.fits
    plan.play(env)
    assert env.recipe() == plan.recipe


def test_two_step_prunes_then_quantizes_with_stage_one_pruning(task):
    env = AJPQEnv(task)
    agent = TwoStep(stage_algo="random")
    result = agent.search(env, episodes=6, seed=0)
    stage1, stage2 = result.records[:3], result.records[3:]
    assert [r.mode for r in stage1] == ["prune"] * 3 and [r.mode for r in stage2] == ["quant"] * 3
    assert all(r.target == pytest.approx(agent.prune_target) for r in stage1)
    assert agent.prune_target == pytest.approx(default_prune_target(env)) and agent.prune_target > 0.125
    pruned = Policy.from_dict(agent.stage1_best.recipe)
    for record in stage2:
        recipe = Policy.from_dict(record.recipe)
        for name in recipe:
            np.testing.assert_array_equal(recipe.pruned(name), pruned.pruned(name))
        assert meets_budget(record, 0.125, "size")
        replay_ok(task, record)
    # the run's best is the best within the final budget over both stages (a prune-only stage-1 recipe may
    # already meet it now that BatchNorm is folded into the stored scales)
    within = [r for r in result.records if meets_budget(r, 0.125, "size")]
    assert result.best is not None and result.best.metric == max(r.metric for r in within)


def test_two_step_with_a_learned_stage_agent(task):
    from agents.schedule import SearchSchedule

    agent = TwoStep(stage_algo="ddpg", schedule=SearchSchedule(warmup_episodes=1),
                    hyperparams={"policy_kwargs": {"net_arch": [16]}, "batch_size": 8})
    result = agent.search(AJPQEnv(task), episodes=4, seed=0)
    assert result.episodes == 4 and result.best is not None and result.best.mode == "quant"


def test_two_step_needs_a_joint_env_and_two_episodes(task):
    with pytest.raises(ValueError, match="at least 2 episodes"):
        TwoStep(stage_algo="random").setup(AJPQEnv(task), episodes=1, seed=0)
    with pytest.raises(ValueError, match="'joint'-mode env"):
        TwoStep(stage_algo="random").setup(AJPQEnv(task, mode="prune", target=0.3), episodes=4, seed=0)

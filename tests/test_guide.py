"""The prior-guided search: per-layer sensitivity, the sensitivity greedy, prior episodes, cloning, exploitation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agents import make_agent
from agents.baselines import SensitivityGreedy, prior_plans
from agents.guide import GuideSettings, SearchGuide
from agents.schedule import SearchSchedule
from ajpq_env import AJPQEnv
from ajpq_env.envs.sensitivity import PROBE_BITS, layer_sensitivity
from ajpq_env.tasks import synthetic_task


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # MobileNetV1 (28 layers) rather than V2 (53): the sensitivity probes, one compression each, take half the time
    return AJPQEnv(synthetic_task("mobilenet_v1", input_shape=(3, 16, 16), sizes=(64, 32, 32)), target=0.15)


def test_sensitivity_is_measured_once_and_cached(env, monkeypatch):
    # the session's cache (conftest): what this test measures, the other tests of the session read
    from ajpq_env.envs import sensitivity
    from ajpq_env.tasks.data import cache_dir

    first = layer_sensitivity(env.task, env.graph, env.evaluator.settings, samples=32)
    assert first.quant_drop.shape == (len(env.graph.layers), len(PROBE_BITS))
    prunable = [g.id for g in env.graph.groups if not g.locked]
    assert not np.isnan(first.prune_drop[prunable]).any()
    assert np.isnan(first.prune_drop[[g.id for g in env.graph.groups if g.locked]]).all()
    files = [f for f in (cache_dir() / "sensitivity").glob(f"{env.task.name}-*.json")
             if json.loads(f.read_text())["samples"] == 32]
    assert len(files) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("measured again although cached")

    with monkeypatch.context() as patch:
        patch.setattr(sensitivity, "Compressor", refuse)
        again = layer_sensitivity(env.task, env.graph, env.evaluator.settings, samples=32)
    assert np.array_equal(again.quant_drop, first.quant_drop) and again.reference == first.reference
    files[0].write_text("{broken")  # a damaged cache entry is measured again, and replaced
    assert np.array_equal(layer_sensitivity(env.task, env.graph, env.evaluator.settings, samples=32).quant_drop,
                          first.quant_drop)
    assert json.loads(files[0].read_text())["samples"] == 32
    assert first.drop_at(0, 8) == 0.0 and first.drop_at(0, 6) == pytest.approx(max(first.quant_drop[0, -1], 0) / 16)


def test_sensitivity_greedy_meets_the_budget_with_varied_pruning(env):
    agent = SensitivityGreedy(samples=32)
    result = agent.search(env, episodes=4, seed=0)
    assert result.episodes >= 1
    assert all(r.size_ratio <= env.budget.target + 1e-9 for r in result.records)
    kept = [sum(np.count_nonzero(v) for v in r.recipe["layers"].values()) for r in result.records]
    assert len(set(kept)) == len(kept)  # each candidate prunes differently


def test_guided_search_opens_with_the_prior_plans_and_clones_the_best(env):
    settings = GuideSettings(priors=("heuristic", "uniform"), exploit_fraction=0.25)
    plans = prior_plans(env, settings.priors, 16)
    agent = make_agent("td3-twolevel", guide=settings)
    result = agent.search(env, episodes=12, seed=0)
    guide = agent.guide
    n = guide.prior_episodes
    assert n == min(len(plans), 6) > 0
    for plan, record in zip(plans, result.records[:n]):  # the prior episodes are the plans, exactly
        assert record.recipe["layers"] == {k: v.tolist() for k, v in plan.recipe.items()}
    assert guide.bc_done  # the actor was cloned before learning
    best = max((r for r in result.records), key=lambda r: r.metric)
    assert result.best.metric == best.metric == guide.best_metric
    # exploitation episodes stay close to the best recipe: most layers replay it exactly
    start = guide.exploit_start
    assert start == 12 - 3
    for record in result.records[start:]:
        assert record.size_ratio <= env.budget.target + 1e-9


def test_behaviour_cloning_reproduces_the_best_actions(env):
    agent = make_agent("td3-twolevel", guide=GuideSettings(priors=("uniform",), bc_steps=400, exploit_fraction=0.0),
                       schedule=SearchSchedule(warmup_episodes=0))
    agent.setup(env, episodes=4, seed=0)
    agent.run()
    guide = agent.guide
    obs = {k: torch.as_tensor(np.asarray([o[k] for o in guide.best_observations]), dtype=torch.float32)
           for k in guide.best_observations[0]}
    with torch.no_grad():
        predicted = agent.model.actor(obs).numpy()
    # cloned on the best episode (then a few TD3 steps): close to the best actions on its observations
    assert np.abs(predicted - np.asarray(guide.best_actions)).mean() < 0.2


def test_exploitation_perturbs_a_few_layers_of_the_best():
    guide = SearchGuide(GuideSettings(priors=(), exploit_fraction=0.5, exploit_layers=0.25), episodes=10,
                        episode_length=40, seed=1)
    guide.best_actions = [[0.1, -0.2]] * 40
    guide.best_observations = [{"layer": [0.0]}] * 40
    guide.episode = 6
    assert guide.phase() == "exploit"
    actions = np.array([guide.action(step) for step in range(40)])
    changed = np.any(np.abs(actions - np.array(guide.best_actions)) > 1e-6, axis=1)
    assert 1 <= changed.sum() < 40 and np.abs(actions).max() <= 1.0
    state = json.loads(json.dumps(guide.state()))
    twin = SearchGuide(GuideSettings(priors=(), exploit_fraction=0.5), episodes=10, episode_length=40, seed=99)
    twin.set_state(state)
    assert twin.best_actions == guide.best_actions and twin.phase() == "exploit"


def test_guide_settings_are_checked():
    with pytest.raises(ValueError, match="unknown prior rules"):
        GuideSettings(priors=("magic",))
    with pytest.raises(ValueError, match="exploit_fraction"):
        GuideSettings(exploit_fraction=1.5)
    with pytest.raises(ValueError, match="deterministic off-policy"):
        make_agent("ppo", guide=GuideSettings())


def test_search_cli_sets_each_part_of_the_guide(capsys: pytest.CaptureFixture[str]):
    from agents.search import parse_args

    config = parse_args(["--bc-steps", "0", "--exploit-fraction", "0", "--guide-priors", "uniform"])
    assert config.guide_settings() == GuideSettings(priors=("uniform",), bc_steps=0, exploit_fraction=0.0)
    assert config.identity()["bc_steps"] == 0 and parse_args([]).identity()["bc_steps"] is None  # old runs resume
    finer = parse_args(["--exploit-sigma", "0.08", "--exploit-layers", "0.15"])
    assert finer.guide_settings() == GuideSettings(exploit_sigma=0.08, exploit_layers=0.15)
    assert finer.identity()["exploit_sigma"] == 0.08 and parse_args([]).identity()["exploit_layers"] is None
    for option, value in (("--exploit-sigma", "0"), ("--exploit-sigma", "nan"), ("--exploit-layers", "1.5")):
        with pytest.raises(SystemExit):
            parse_args([option, value])
        assert f"{option} must be a number in" in capsys.readouterr().err
    assert parse_args(["--no-guide", "--bc-steps", "0"]).guide_settings() == GuideSettings.off()
    with pytest.raises(SystemExit):
        parse_args(["--bc-steps", "-1"])


def test_sensitivity_features_extend_the_layer_observation(env):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from ajpq_env.envs.observation import LAYER_FEATURES, SENSITIVITY_FEATURES, sensitivity_features

    seen = AJPQEnv(env.task, target=0.15, observe_sensitivity=True)
    width = len(LAYER_FEATURES) + len(SENSITIVITY_FEATURES)
    assert seen.observation_space["layer"].shape == (width,)
    obs, _ = seen.reset(seed=0)
    plain, _ = env.reset(seed=0)
    # the static features come first, then the three probes, then the dynamic features unchanged
    assert np.array_equal(obs["layer"][:12], plain["layer"][:12])
    assert np.array_equal(obs["layer"][15:], plain["layer"][12:])
    probes = layer_sensitivity(env.task, env.graph, env.evaluator.settings)
    expected = sensitivity_features(env.graph, probes)
    assert expected.shape == (len(env.graph.layers), 3) and 0.0 <= expected.min() and expected.max() <= 1.0
    assert np.allclose(obs["layer"][12:15], expected[0])
    assert seen.spec_kwargs["observe_sensitivity"] is True
    check_env(seen, skip_render_check=True)
    sb3_check_env(seen, warn=False)
    with pytest.raises(TypeError, match="observe_sensitivity"):
        AJPQEnv(env.task, observe_sensitivity=1)

"""The two-level policy, the AMC/HAQ schedule pieces and the algorithm registry, on a tiny synthetic env."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from stable_baselines3 import DDPG, TD3
from torch import nn

from agents import make_agent
from agents.guide import GuideSettings
from agents.policies import TwoLevelTD3Policy
from agents.registry import ALGORITHMS, HYPERPARAMS_DIR, agent_names, get_algorithm, make_model, parse_hyperparam
from agents.schedule import CreditedDictReplayBuffer, DecayingTruncatedNormalNoise, SearchSchedule
from ajpq_env import ENV_IDS, AJPQEnv
from ajpq_env.tasks import synthetic_task

torch.set_num_threads(1)

SMALL = {"policy_kwargs": {"net_arch": [32, 32], "layer_arch": [32, 32], "channel_arch": [16]}, "batch_size": 16}


@pytest.fixture(scope="module")
def task():
    return synthetic_task()


@pytest.fixture
def env(task):
    return AJPQEnv(task)


def small_hyperparams(name: str) -> dict:
    spec = get_algorithm(name)
    params = {"policy_kwargs": {"net_arch": [32, 32]}}
    if spec.policy.endswith("TwoLevelTD3Policy"):
        params = {"policy_kwargs": dict(SMALL["policy_kwargs"])}
    if spec.off_policy:
        params["batch_size"] = 16
    if name == "ppo":
        params["n_epochs"] = 2
    return params


# ---------------------------------------------------------------------- the two-level policy
@pytest.mark.parametrize("algo", [TD3, DDPG])
def test_two_level_policy_save_load_round_trip(env, tmp_path, algo):
    model = algo(TwoLevelTD3Policy, env, learning_starts=53, buffer_size=500, seed=0, **SMALL)
    model.learn(3 * 53)  # trained weights, not just the initialisation
    model.save(tmp_path / "model.zip")
    loaded = algo.load(tmp_path / "model.zip", device="cpu")
    assert isinstance(loaded.policy, TwoLevelTD3Policy)
    assert loaded.policy.actor.layer_arch == [32, 32] and loaded.policy.actor.channel_arch == [16]
    assert len(loaded.policy.critic.q_networks) == (2 if algo is TD3 else 1)
    obs, _ = env.reset(seed=0)
    for _ in range(10):
        a, _ = model.predict(obs, deterministic=True)
        b, _ = loaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(a, b)
        obs, *_ = env.step(a)


def test_channel_controller_is_shared_over_buckets(env):
    """Permuting the bucket rows permutes the bits the same way and leaves the sparsity unchanged."""
    model = TD3(TwoLevelTD3Policy, env, buffer_size=100, seed=0, **SMALL)
    obs, _ = env.reset(seed=0)
    obs["channels"] = np.random.default_rng(0).uniform(0, 1, obs["channels"].shape).astype(np.float32)
    perm = np.array([2, 0, 3, 1])
    swapped = {"layer": obs["layer"], "channels": obs["channels"][perm]}
    a, _ = model.predict(obs, deterministic=True)
    b, _ = model.predict(swapped, deterministic=True)
    assert a[0] == pytest.approx(b[0])
    np.testing.assert_allclose(a[1:][perm], b[1:], rtol=1e-5)


def test_two_level_policy_rejects_other_observations():
    obs_space = spaces.Box(0, 1, (43,), np.float32)
    with pytest.raises(ValueError, match="two-level policy needs the AJPQ observation"):
        TwoLevelTD3Policy(obs_space, spaces.Box(-1, 1, (5,), np.float32), lambda _: 1e-3)
    dict_space = spaces.Dict({"layer": spaces.Box(0, 1, (19,)), "channels": spaces.Box(0, 1, (4, 6))})
    with pytest.raises(ValueError, match="outputs 1 \\+ K = 5 values"):
        TwoLevelTD3Policy(dict_space, spaces.Box(-1, 1, (3,), np.float32), lambda _: 1e-3)


# ---------------------------------------------------------------------- the schedule
def test_noise_decays_once_per_episode_after_the_delay():
    noise = DecayingTruncatedNormalNoise(5, sigma=0.5, decay=0.9, clip=2.0, delay=2, seed=0)
    sigmas = []
    for _ in range(5):
        for _ in range(3):  # three steps per episode
            sample = noise()
            assert np.all(np.abs(sample) <= 2.0 * noise.sigma + 1e-7)
        noise.reset()
        noise.reset()  # SB3 also resets at the start of learn(): no episode was played, no decay
        sigmas.append(noise.sigma)
    np.testing.assert_allclose(sigmas, [0.5, 0.5, 0.45, 0.405, 0.3645])
    assert noise.episodes == 5


def test_noise_state_round_trip_continues_the_same_sequence():
    noise = DecayingTruncatedNormalNoise(4, sigma=0.3, decay=0.5, seed=1)
    noise()
    noise.reset()
    state = noise.get_state()
    expected = np.array([noise() for _ in range(3)])
    other = DecayingTruncatedNormalNoise(4, sigma=0.3, decay=0.5, seed=99)
    other.set_state(json.loads(json.dumps(state)))  # the state is JSON-serialisable
    assert other.sigma == noise.sigma == 0.15
    np.testing.assert_array_equal(np.array([other() for _ in range(3)]), expected)


def test_noise_and_schedule_reject_bad_values():
    with pytest.raises(ValueError, match="decay"):
        DecayingTruncatedNormalNoise(3, decay=1.5)
    with pytest.raises(ValueError, match="noise_decay"):
        SearchSchedule(noise_decay=0)
    with pytest.raises(ValueError, match="warmup_episodes"):
        SearchSchedule(warmup_episodes=-1)


def test_credited_buffer_stores_the_final_reward_on_every_step(env):
    model = make_model("td3-twolevel", env, episodes=3, schedule=SearchSchedule(warmup_episodes=5), hyperparams=SMALL)
    buffer = model.replay_buffer
    assert isinstance(buffer, CreditedDictReplayBuffer)
    rewards = []
    env_rewards = []

    def on_step(locals_, _globals) -> bool:
        env_rewards.append(float(locals_["rewards"][0]))
        # nothing of the running episode is in the buffer before it ends
        assert buffer.pos == 53 * (len(env_rewards) // 53) or locals_["dones"][0]
        return True

    model.learn(2 * 53, callback=on_step)
    assert buffer.pos == 2 * 53 and buffer.pending == 0
    for episode in range(2):
        rows = buffer.rewards[episode * 53 : (episode + 1) * 53, 0]
        final = env_rewards[(episode + 1) * 53 - 1]
        rewards.append(final)
        assert final > 0 and np.all(rows == np.float32(final))
        assert buffer.dones[(episode + 1) * 53 - 1, 0] == 1 and buffer.dones[episode * 53, 0] == 0
    assert sum(env_rewards) == pytest.approx(sum(rewards))  # the env itself only rewards the last step


def test_schedule_sets_warmup_gamma_noise_and_can_be_switched_off(env):
    model = make_model("ddpg", env, episodes=10, schedule=SearchSchedule(warmup_episodes=3, noise_sigma=0.2))
    assert model.learning_starts == 3 * 53 and model.gamma == 1.0
    assert isinstance(model.action_noise, DecayingTruncatedNormalNoise) and model.action_noise.delay == 3
    assert isinstance(model.replay_buffer, CreditedDictReplayBuffer)
    plain = make_model("ddpg", env, episodes=10, schedule=SearchSchedule.off())
    assert plain.gamma == 0.99 and plain.action_noise is None
    assert type(plain.replay_buffer).__name__ == "DictReplayBuffer"


# ---------------------------------------------------------------------- the registry
def test_unknown_names_list_the_valid_ones(env):
    for call in (lambda: make_agent("td4"), lambda: get_algorithm("td4"), lambda: make_model("td4", env, episodes=1)):
        with pytest.raises(ValueError, match="unknown agent 'td4'; valid names: .*ddpg.*td3-twolevel"):
            call()
    assert {"td3", "ddpg", "sac", "ppo", "a2c", "tqc", "crossq", "td3-twolevel", "default", "random",
            "uniform", "heuristic", "two-step"} <= set(agent_names())


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_runs_a_few_episodes(task, name):
    # guided agents open with the cheap rules' plans here (the sensitivity probes have tests of their own)
    guide = GuideSettings(priors=("heuristic", "uniform")) if ALGORITHMS[name].guided else None
    agent = make_agent(name, schedule=SearchSchedule(warmup_episodes=1, noise_decay=0.9),
                       hyperparams=small_hyperparams(name), guide=guide)
    result = agent.search(AJPQEnv(task), episodes=3, seed=0)
    assert result.episodes == 3 and [r.episode for r in result.records] == [0, 1, 2]
    assert all(r.agent == name and r.size_ratio <= 0.125 for r in result.records)
    assert result.best is not None
    expected_obs = spaces.Dict if ALGORITHMS[name].dict_obs else spaces.Box
    assert isinstance(agent.model.observation_space, expected_obs)


def test_parse_hyperparam_is_literal_only():
    assert parse_hyperparam("dict(net_arch=[64, 64], activation_fn=nn.Tanh)") == {
        "net_arch": [64, 64], "activation_fn": nn.Tanh}
    assert parse_hyperparam("[1, 'episode']") == [1, "episode"]
    assert parse_hyperparam("-1") == -1
    assert parse_hyperparam("lin_7.3e-4") == "lin_7.3e-4"
    assert parse_hyperparam("__import__('os').system('echo no')") == "__import__('os').system('echo no')"


def test_yaml_hyperparams_are_rl_zoo_entries_that_build(env):
    files = sorted(HYPERPARAMS_DIR.glob("*.yml"))
    assert {f.stem for f in files} == set(ALGORITHMS)
    zoo_keys = {"n_timesteps", "policy", "policy_kwargs", "noise_type", "noise_std", "env_wrapper", "n_envs",
                "monitor_kwargs", "callback"}
    classification = {e for e in ENV_IDS if e.startswith(("AJPQ-MobileNet", "AJPQ-ResNet20"))}
    for file in files:
        data = yaml.safe_load(file.read_text())
        assert classification <= set(data) <= set(ENV_IDS) | {"default"}, file.name  # default: RL Zoo's fallback
        for entry in data.values():
            assert "n_timesteps" in entry and "policy" in entry
            extra = set(entry) - zoo_keys
            signature = ALGORITHMS[file.stem].algorithm_class().__init__.__code__.co_varnames
            assert extra <= set(signature), (file.name, extra - set(signature))
        # the YAML entry applies when the env id is given (the synthetic MobileNetV2 has the same 53 layers)
        model = make_model(file.stem, env, episodes=2, env_id="AJPQ-MobileNet-v0")
        if ALGORITHMS[file.stem].off_policy:
            assert model.batch_size == data["AJPQ-MobileNet-v0"]["batch_size"]

"""Issue 10, item 10: RL Baselines3 Zoo trains on the AJPQ envs with the shipped hyperparameters, as the README says.

A very short run of the documented command, the ``-conf`` forms (module and path) for every algorithm, the
schedule callback the YAML names, and ``ajpq search`` reading the same YAML.
"""

from __future__ import annotations

import csv
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from agents.hyperparams import HYPERPARAMS_DIR
from agents.registry import ALGORITHMS, make_model
from agents.schedule import CreditedDictReplayBuffer, DecayingTruncatedNormalNoise
from agents.zoo import AJPQScheduleCallback
from ajpq_env import ENV_IDS, AJPQEnv
from ajpq_env.tasks import synthetic_task

pytest.importorskip("rl_zoo3", reason="rl_zoo3 is in the dev extras: pip install -e '.[dev]'")


def test_the_documented_rl_zoo_command_trains_and_logs_metric_and_size(tmp_path):
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", "td3", "--env", "AJPQ-MobileNet-v0", "--gym-packages",
               "ajpq_env", "-conf", "agents.hyperparams.td3",
               # a very short run: 2 episodes of 53 steps, one warm-up episode then learning, a small net
               "-n", "106", "--eval-freq", "-1", "-f", str(tmp_path), "--seed", "0",
               "--env-kwargs", "task:'synthetic-mobilenet_v2'",  # the id's tiny random twin: no data to load
               "-params", "callback:[{'agents.zoo.AJPQScheduleCallback': {'warmup_episodes': 1, 'verbose': 1}}]",
               "policy_kwargs:dict(net_arch=[16])", "batch_size:16"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "AJPQ schedule applied" in done.stdout and "CreditedDictReplayBuffer" in done.stdout
    monitor = next(tmp_path.glob("td3/AJPQ-MobileNet-v0_*/0.monitor.csv"))
    with open(monitor) as f:
        next(f)  # RL Zoo's JSON comment line
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"metric", "size_ratio"} <= set(rows[0])
    assert all(0 < float(r["size_ratio"]) <= 0.125 + 1e-9 and float(r["metric"]) == float(r["r"]) for r in rows)


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_hyperparameter_file_is_reachable_by_module_and_by_path(algo):
    from_module = importlib.import_module(f"agents.hyperparams.{algo.replace('-', '_')}").hyperparams
    from_path = yaml.safe_load((HYPERPARAMS_DIR / f"{algo}.yml").read_text())
    assert from_module == from_path
    for env_id in (*ENV_IDS, "default"):  # every shipped id, and RL Zoo's fallback for the others
        if env_id in ENV_IDS and env_id not in from_path:
            continue
        entry = from_path[env_id]
        assert "n_timesteps" in entry and "monitor_kwargs" in entry
        assert ("callback" in entry) == ALGORITHMS[algo].off_policy
    assert all(e in from_path for e in ENV_IDS if e.startswith(("AJPQ-MobileNet", "AJPQ-ResNet20")))


def test_the_schedule_callback_applies_the_search_schedule():
    from stable_baselines3 import TD3
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(AJPQEnv(synthetic_task()))
    model = TD3("MultiInputPolicy", env, learning_starts=10_000, policy_kwargs={"net_arch": [8]}, batch_size=8,
                train_freq=(1, "episode"), gradient_steps=2, gamma=0.9, seed=0)
    callback = AJPQScheduleCallback(warmup_episodes=1)
    length = len(env.unwrapped.graph.layers)
    model.learn(2 * length, callback=callback)
    assert model.learning_starts == length and model.gamma == 1.0
    assert isinstance(model.action_noise, DecayingTruncatedNormalNoise) and model.action_noise.delay == 1
    buffer = model.replay_buffer
    assert isinstance(buffer, CreditedDictReplayBuffer) and buffer.pos == 2 * length
    for episode in range(2):  # every step of an episode holds the episode's final reward
        rewards = buffer.rewards[episode * length:(episode + 1) * length, 0]
        assert rewards[0] > 0 and np.all(rewards == rewards[-1])


def test_ajpq_search_reads_the_zoo_keys_and_refuses_other_callbacks():
    env = AJPQEnv(synthetic_task())
    zoo = {"monitor_kwargs": "dict(info_keywords=('metric', 'size_ratio'))", "callback": "agents.zoo.AJPQScheduleCallback",
           "policy_kwargs": "dict(net_arch=[8])"}
    model = make_model("td3", env, episodes=2, hyperparams=zoo)
    assert isinstance(model.action_noise, DecayingTruncatedNormalNoise)  # the search's own schedule
    with pytest.raises(ValueError, match="callback='my.Callback' is not supported"):
        make_model("td3", env, episodes=2, hyperparams={**zoo, "callback": "my.Callback"})


def test_readme_shows_the_working_command():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "--gym-packages ajpq_env -conf agents.hyperparams.td3" in readme

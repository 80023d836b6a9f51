"""Any Stable-Baselines3 / sb3-contrib algorithm as a :class:`~agents.base.SearchAgent`.

The algorithm learns with its own ``learn()`` loop; two small pieces connect it to the search:

* :class:`RecordEpisodes`, a Gymnasium wrapper next to the AJPQ env, turns the last step of every episode
  into an :class:`~ajpq_env.records.EpisodeRecord` before SB3's VecEnv resets the env;
* :class:`SafePointCallback`, an SB3 callback, reports a safe point at the start of every rollout that begins
  on an episode boundary (after the previous rollout's training) and at the end of training, and stops
  ``learn()`` when a step would start an episode beyond the budget (on-policy rollouts, for instance).

A checkpoint (:meth:`SB3Agent.save`) holds the model's parameters and optimizer states, the replay buffer, the
exploration noise's state and the action space's generator, all without pickle (:mod:`agents.sb3_state`); with
the global generators that ``ajpq search`` saves, a resumed search continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agents.base import SearchAgent, SearchHooks
from agents.registry import AlgoSpec, get_algorithm, make_model
from agents.sb3_state import load_model_state, save_model_state
from agents.schedule import SearchSchedule

__all__ = ["RecordEpisodes", "SB3Agent", "SafePointCallback"]


class RecordEpisodes(gym.Wrapper):
    """Calls ``on_end()`` at the last step of every episode, before anything (a VecEnv) resets the env.

    :param env: the AJPQ env (possibly wrapped)
    :param on_end: called with no argument when a step returns ``terminated`` or ``truncated``
    """

    def __init__(self, env: gym.Env, on_end: Callable[[], None]) -> None:
        super().__init__(env)
        self.on_end = on_end
        self.in_episode = False

    def reset(self, **kwargs: Any):
        self.in_episode = False
        return self.env.reset(**kwargs)

    def step(self, action):  # noqa: ANN001, ANN201 (Gymnasium's signature)
        self.in_episode = True
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            self.in_episode = False
            self.on_end()
        return obs, reward, terminated, truncated, info


class SafePointCallback(BaseCallback):
    """Reports safe points of an :class:`SB3Agent` to its hooks and stops ``learn()`` at the episode budget."""

    def __init__(self, agent: SB3Agent, hooks: SearchHooks) -> None:
        super().__init__()
        self.agent, self.hooks = agent, hooks

    def _on_step(self) -> bool:
        # A step taken once the budget is spent starts an episode we will not finish: stop before it is stored.
        return not (self.agent.done and self.agent.recorder.in_episode)

    def _on_rollout_start(self) -> None:
        if not self.agent.recorder.in_episode:
            self.hooks.on_safe_point(self.agent)

    def _on_training_end(self) -> None:
        if not self.agent.recorder.in_episode or self.agent.done:
            self.hooks.on_safe_point(self.agent)


class SB3Agent(SearchAgent):
    """A search by an algorithm of the registry (:data:`agents.registry.ALGORITHMS`).

    :param algo: registry name (``"td3-twolevel"``, ``"ddpg"``, ``"sac"``, ``"ppo"``...)
    :param schedule: the AMC/HAQ schedule (default :class:`~agents.schedule.SearchSchedule`: all on)
    :param hyperparams: overrides of the YAML hyperparameters (RL-Zoo keys)
    :param hyperparams_path: a YAML file or directory instead of ``agents/hyperparams``
    :param tensorboard_log: SB3's TensorBoard directory (``None``: no TensorBoard)
    :param verbose: SB3's verbosity
    :param device: torch device
    """

    def __init__(
        self,
        algo: str,
        *,
        schedule: SearchSchedule | None = None,
        hyperparams: Mapping[str, Any] | None = None,
        hyperparams_path: str | Path | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        device: str = "cpu",
    ) -> None:
        self.spec: AlgoSpec = get_algorithm(algo)
        super().__init__(self.spec.name)
        self.description = self.spec.description
        self.schedule = schedule if schedule is not None else SearchSchedule()
        self.hyperparams = dict(hyperparams or {})
        self.hyperparams_path = hyperparams_path
        self.tensorboard_log, self.verbose, self.device = tensorboard_log, verbose, device
        self.model: BaseAlgorithm | None = None
        self._hooks: SearchHooks = SearchHooks()

    def setup(self, env: gym.Env, *, episodes: int, seed: int) -> None:
        super().setup(env, episodes=episodes, seed=seed)
        self.recorder = RecordEpisodes(env, self._on_episode_end)
        self.model = make_model(
            self.spec.name, self.recorder, episodes=episodes, seed=seed, schedule=self.schedule,
            hyperparams=self.hyperparams, hyperparams_path=self.hyperparams_path, env_id=self._env_id or None,
            tensorboard_log=self.tensorboard_log, verbose=self.verbose, device=self.device,
        )

    def _on_episode_end(self) -> None:
        if self.done:  # cannot happen: SafePointCallback stops learn() at the first step past the budget
            raise RuntimeError(f"{self.name}: an episode past the budget of {self.total_episodes} finished")
        self._finish_episode(self._hooks)

    def _run(self, hooks: SearchHooks) -> None:
        assert self.model is not None
        self._hooks = hooks
        try:
            steps = (self.total_episodes - self.episodes_done) * self.episode_length
            self.model.learn(
                total_timesteps=steps, callback=SafePointCallback(self, hooks), tb_log_name=self.name,
                reset_num_timesteps=self.model.num_timesteps == 0, log_interval=1,
            )
        finally:
            self._hooks = SearchHooks()

    @property
    def episode_length(self) -> int:
        assert self.env is not None
        return len(self.env.unwrapped.graph.layers)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path) -> None:
        assert self.model is not None
        super().save(directory)
        save_model_state(self.model, Path(directory))

    def load(self, directory: str | Path) -> None:
        """Restore a :meth:`save` into the model built by :meth:`setup`; nothing is unpickled (weights-only
        tensors, ``allow_pickle=False`` arrays, JSON)."""
        assert self.model is not None and self.env is not None
        directory = Path(directory)
        super().load(directory)
        try:
            load_model_state(self.model, directory, self.device)
        except (OSError, KeyError, EOFError, TypeError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot load the {self.name} model state from {str(directory)!r}: {err}") from None

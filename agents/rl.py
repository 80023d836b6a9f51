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

import json
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agents.base import SearchAgent, SearchHooks, meets_budget
from agents.guide import GuideSettings, SearchGuide, make_guide
from agents.registry import AlgoSpec, get_algorithm, make_model
from agents.sb3_state import load_model_state, save_model_state
from agents.schedule import DecayingTruncatedNormalNoise, SearchSchedule
from ajpq_env.fileio import loads_json

__all__ = ["RecordEpisodes", "SB3Agent", "SafePointCallback"]

_GUIDE_FILE = "guide.json"


class RecordEpisodes(gym.Wrapper):
    """Calls ``on_end()`` at the last step of every episode, before anything (a VecEnv) resets the env.

    :param env: the AJPQ env (possibly wrapped)
    :param on_end: called with no argument when a step returns ``terminated`` or ``truncated``
    """

    def __init__(self, env: gym.Env, on_end: Callable[[], None],
                 on_step: Callable[[Any, Any], None] | None = None) -> None:
        super().__init__(env)
        self.on_end, self.on_step = on_end, on_step
        self.in_episode = False
        self._obs: Any = None

    def reset(self, **kwargs: Any):
        self.in_episode = False
        obs, info = self.env.reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action):  # noqa: ANN001, ANN201 (Gymnasium's signature)
        self.in_episode = True
        if self.on_step is not None:
            self.on_step(self._obs, action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._obs = obs
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
    :param guide: the prior-guided search (:class:`~agents.guide.GuideSettings`) for deterministic off-policy
        algorithms; default: :class:`~agents.guide.GuideSettings` for the algorithms registered as guided (the
        two-level agents), none for the others; ``GuideSettings.off()`` switches it off
    """

    def __init__(
        self,
        algo: str,
        *,
        guide: GuideSettings | None = None,
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
        if guide is not None and not (self.spec.off_policy and self.spec.deterministic) and guide != GuideSettings.off():
            raise ValueError(f"the prior-guided search needs a deterministic off-policy algorithm (TD3, DDPG), "
                             f"not {self.spec.name}")
        if guide is None:
            guide = GuideSettings() if self.spec.guided else GuideSettings.off()
        self.guide_settings = guide
        self.guide: SearchGuide | None = None

    def setup(self, env: gym.Env, *, episodes: int, seed: int) -> None:
        super().setup(env, episodes=episodes, seed=seed)
        guided = self.guide_settings != GuideSettings.off()
        self.recorder = RecordEpisodes(env, self._on_episode_end, self._on_step if guided else None)
        self.model = make_model(
            self.spec.name, self.recorder, episodes=episodes, seed=seed, schedule=self.schedule,
            hyperparams=self.hyperparams, hyperparams_path=self.hyperparams_path, env_id=self._env_id or None,
            tensorboard_log=self.tensorboard_log, verbose=self.verbose, device=self.device, guided=guided,
        )
        self.guide = None
        if guided:
            self.guide = make_guide(self.guide_settings, env, episodes, seed)
            self.model.guide = self.guide
            self.model.step_index = lambda: env.unwrapped._t
            # the prior episodes come before the schedule's random warm-up: learning starts after both
            extra = self.guide.prior_episodes * self.episode_length
            self.model.learning_starts += extra
            noise = self.model.action_noise
            if isinstance(noise, DecayingTruncatedNormalNoise):
                noise.delay += self.guide.prior_episodes

    def _on_step(self, observation: Any, action: Any) -> None:
        if self.guide is not None:
            self.guide.observe_step(observation, action)

    def _on_episode_end(self) -> None:
        if self.done:  # cannot happen: SafePointCallback stops learn() at the first step past the budget
            raise RuntimeError(f"{self.name}: an episode past the budget of {self.total_episodes} finished")
        record = self._finish_episode(self._hooks)
        if self.guide is not None:
            budget = self.env.unwrapped.budget
            self.guide.end_episode(record.metric, meets_budget(record, budget.target, budget.resource))

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
        if self.guide is not None:
            (Path(directory) / _GUIDE_FILE).write_text(json.dumps(self.guide.state()))

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
        if self.guide is not None:
            try:
                self.guide.set_state(loads_json((directory / _GUIDE_FILE).read_text()))
            except (OSError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"cannot load the search guide's state from {str(directory)!r}: {err!r}") from None

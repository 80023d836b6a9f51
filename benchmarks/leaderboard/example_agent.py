"""An agent written outside the registry, as a template for a leaderboard submission (see ``SUBMITTING.md``).

:class:`EvolutionStrategy` is a (1+1) evolution strategy over a whole episode's actions: the first episode
acts at random; every later one perturbs the actions of the best episode so far with Gaussian noise whose sigma
decays per episode, and keeps the child when its reward is at least the parent's. It needs no learning
library: what an entry needs is the :class:`~agents.base.SearchAgent` interface (``setup``, ``_run``, and a
JSON state for checkpoints).

    python -m benchmarks.leaderboard --suite smoke --agents random benchmarks.leaderboard.example_agent:EvolutionStrategy

>>> from ajpq_env import AJPQEnv
>>> from ajpq_env.tasks import synthetic_task
>>> result = EvolutionStrategy().search(AJPQEnv(synthetic_task()), episodes=3, seed=0)
>>> result.agent, result.episodes
('example-es', 3)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from agents.base import SearchAgent, SearchHooks

__all__ = ["EvolutionStrategy"]


class EvolutionStrategy(SearchAgent):
    """(1+1) evolution strategy over the actions of a whole episode.

    Parameters (the submission states them; tune them on a suite's tuning seeds only):

    :param sigma: initial standard deviation of the perturbation (actions lie in [-1, 1])
    :param decay: per-episode factor of ``sigma``
    :param name: the agent's name in the leaderboard (not a name of the registry)
    """

    description = "(1+1) evolution strategy over the actions of a whole episode (leaderboard example)"

    def __init__(self, sigma: float = 0.3, decay: float = 0.97, name: str = "example-es") -> None:
        if not (sigma > 0 and 0 < decay <= 1):
            raise ValueError(f"sigma must be > 0 and decay in (0, 1], got sigma={sigma}, decay={decay}")
        super().__init__(name)
        self.sigma0, self.decay = float(sigma), float(decay)
        self._rng = np.random.default_rng(0)
        self._parent: list[list[float]] | None = None
        self._parent_reward: float | None = None

    def setup(self, env: gym.Env, *, episodes: int, seed: int) -> None:
        super().setup(env, episodes=episodes, seed=seed)
        self._rng = np.random.default_rng(seed)
        self._parent, self._parent_reward = None, None

    @property
    def sigma(self) -> float:
        return self.sigma0 * self.decay ** self.episodes_done

    def _run(self, hooks: SearchHooks) -> None:
        assert self.env is not None
        shape = self.env.action_space.shape
        while not self.done:
            self.env.reset()
            actions: list[np.ndarray] = []
            terminated = truncated = False
            while not (terminated or truncated):
                if self._parent is None:
                    action = self._rng.uniform(-1.0, 1.0, shape)
                else:
                    action = np.asarray(self._parent[len(actions)]) + self._rng.normal(0.0, self.sigma, shape)
                action = np.clip(action, -1.0, 1.0).astype(np.float32)
                actions.append(action)
                _, _, terminated, truncated, _ = self.env.step(action)
            record = self._finish_episode(hooks)
            if self._parent_reward is None or record.reward >= self._parent_reward:
                self._parent = [a.tolist() for a in actions]
                self._parent_reward = float(record.reward)
            hooks.on_safe_point(self)

    # JSON state: what a checkpoint stores, so that --resume continues exactly
    def state(self) -> dict[str, Any]:
        return {**super().state(), "rng": self._rng.bit_generator.state, "parent": self._parent,
                "parent_reward": self._parent_reward}

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._rng.bit_generator.state = state["rng"]
        self._parent, self._parent_reward = state["parent"], state["parent_reward"]

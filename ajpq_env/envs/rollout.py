"""One episode of uniformly random actions: the reference rollout of benchmarks, tests and demos."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:
    from ajpq_env.compression import Policy

__all__ = ["random_episode", "random_recipe"]


def random_episode(
    env: gym.Env,
    rng: np.random.Generator,
    *,
    low: float | Sequence[float] = -1.0,
    high: float | Sequence[float] = 1.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """Play one episode whose actions are drawn uniformly in ``[low, high]`` and return its last step's ``info``
    (the episode's recipe is then ``env.unwrapped.recipe()``).

    :param env: an AJPQ env (any wrapper)
    :param rng: the generator of the actions
    :param low: lower bound of every action element, or ``(layer element 0, channel elements 1..K)``
    :param high: upper bound, the same way
    :param seed: passed to ``env.reset``
    """
    shape = env.action_space.shape
    bounds = []
    for bound in (low, high):
        if np.ndim(bound) == 0:
            bounds.append(np.full(shape, float(bound)))
        else:
            layer, channel = bound
            bounds.append(np.concatenate([[layer], np.full(shape[0] - 1, channel)]))
    env.reset(seed=seed)
    info: dict[str, Any] = {}
    terminated = truncated = False
    while not (terminated or truncated):
        # one draw per step: with bounds -1, 1 the same numbers as rng.uniform(-1, 1, shape)
        action = rng.uniform(bounds[0], bounds[1]).astype(np.float32)
        _, _, terminated, truncated, info = env.step(action)
    return info


def random_recipe(env: gym.Env, seed: int) -> Policy:
    """The recipe of one episode of uniform random actions in ``[-1, 1]``, ``seed`` seeding the actions and the reset."""
    random_episode(env, np.random.default_rng(seed), seed=seed)
    return env.unwrapped.recipe()

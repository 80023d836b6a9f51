"""Prior-guided search for the off-policy agents: start from known-good recipes, learn around them, end on the best.

With 150 episodes of 53 decisions each, an actor learned from scratch spends most of its budget finding what a
one-line rule already knows. :class:`SearchGuide` gives the AJPQ agent (TD3 with the two-level actor) that
knowledge the way AMC/HAQ-style searches and AutoQ use priors, without replacing the learner:

1. **prior episodes**: the first episodes play the plans of non-learning rules (the per-layer sensitivity
   greedy, the importance heuristic, uniform precision: :mod:`agents.baselines`); their transitions enter the
   replay buffer with their credited rewards, like any warm-up episode;
2. **behaviour cloning**: before the first gradient step the actor is fitted to the best episode so far, so that
   learning and exploration start from the best known recipe instead of a random policy;
3. **TD3** then learns as usual (critic on the credited rewards, exploration noise decaying per episode);
4. **exploitation**: the last ``exploit_fraction`` of the episodes perturb the best recipe's actions with a small
   truncated-normal noise (a local search around it), so the budget's end is spent where the reward is highest.

:class:`GuidedMixin` plugs this into any SB3 off-policy algorithm through its own hooks (``_sample_action`` and
``train``); the guide's state is JSON, so checkpoints stay pickle-free and resumes exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from torch import nn

__all__ = ["GuidedMixin", "GuideSettings", "SearchGuide", "guided_class", "make_guide"]


@dataclass(frozen=True)
class GuideSettings:
    """What the guide does; every part can be switched off.

    :param priors: names of the non-learning rules whose plans are played first, in order (``"sensitivity"``,
        ``"heuristic"``, ``"uniform"``); each contributes its candidate recipes, at most ``max_prior_episodes``
        in all
    :param max_prior_episodes: cap on prior episodes
    :param bc_steps: gradient steps of behaviour cloning of the actor on the best episode (0 = off)
    :param bc_lr: their learning rate (Adam)
    :param exploit_fraction: fraction of the episode budget, at its end, spent around the best recipe (0 = off)
    :param exploit_sigma: standard deviation of the exploitation noise, in action units ([-1, 1])
    :param exploit_layers: fraction of the layers whose actions an exploitation episode perturbs (the others
        replay the best recipe exactly), so each trial is a local move
    """

    priors: tuple[str, ...] = ("sensitivity", "heuristic", "uniform")
    max_prior_episodes: int = 16
    bc_steps: int = 300
    bc_lr: float = 1e-3
    exploit_fraction: float = 0.3
    exploit_sigma: float = 0.15
    exploit_layers: float = 0.25

    def __post_init__(self) -> None:
        from agents.baselines import PRIOR_RULES

        unknown = [p for p in self.priors if p not in PRIOR_RULES]
        if unknown:
            raise ValueError(f"unknown prior rules {unknown}; expected names from {sorted(PRIOR_RULES)}")
        if self.max_prior_episodes < 0 or self.bc_steps < 0:
            raise ValueError("max_prior_episodes and bc_steps must be >= 0")
        if not 0.0 <= self.exploit_fraction < 1.0 or not self.exploit_sigma > 0 or not 0 < self.exploit_layers <= 1:
            raise ValueError(f"need 0 <= exploit_fraction < 1, exploit_sigma > 0 and 0 < exploit_layers <= 1, got "
                             f"{self.exploit_fraction}, {self.exploit_sigma}, {self.exploit_layers}")

    @classmethod
    def off(cls) -> GuideSettings:
        return cls(priors=(), bc_steps=0, exploit_fraction=0.0)


@dataclass
class SearchGuide:
    """Decides, per step, whether the guide or the learner acts; remembers the best episode.

    :param settings: :class:`GuideSettings`
    :param episodes: the run's episode budget
    :param episode_length: steps per episode (compressible layers)
    :param seed: seeds the exploitation noise
    """

    settings: GuideSettings
    episodes: int
    episode_length: int
    seed: int = 0
    prior_actions: list[list[list[float]]] = field(default_factory=list)
    best_metric: float = float("-inf")
    best_actions: list[list[float]] | None = None
    best_observations: list[dict[str, list]] | None = None
    bc_done: bool = False
    episode: int = 0
    _current_actions: list[list[float]] = field(default_factory=list)
    _current_observations: list[dict[str, list]] = field(default_factory=list)
    _mask: list[bool] | None = None

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed + 7919)

    # ------------------------------------------------------------------ phases
    @property
    def prior_episodes(self) -> int:
        return len(self.prior_actions)

    @property
    def exploit_start(self) -> int:
        """First episode of the exploitation phase."""
        return self.episodes - int(round(self.settings.exploit_fraction * self.episodes))

    def phase(self, episode: int | None = None) -> str:
        """``"prior"``, ``"learn"`` or ``"exploit"`` for ``episode`` (default: the running one)."""
        e = self.episode if episode is None else episode
        if e < self.prior_episodes:
            return "prior"
        if e >= max(self.exploit_start, self.prior_episodes) and self.best_actions is not None:
            return "exploit"
        return "learn"

    def action(self, step: int) -> np.ndarray | None:
        """The guide's action for ``step`` of the running episode, or ``None`` when the learner acts."""
        phase = self.phase()
        if phase == "prior":
            return np.asarray(self.prior_actions[self.episode][step], dtype=np.float32)
        if phase == "exploit":
            if step == 0:
                n = self.episode_length
                chosen = self._rng.random(n) < self.settings.exploit_layers
                if not chosen.any():
                    chosen[self._rng.integers(n)] = True
                self._mask = chosen.tolist()
            base = np.asarray(self.best_actions[step], dtype=np.float64)
            if not self._mask[step]:
                return base.astype(np.float32)
            z = np.clip(self._rng.standard_normal(base.shape), -2.0, 2.0)
            return np.clip(base + self.settings.exploit_sigma * z, -1.0, 1.0).astype(np.float32)
        return None

    # ------------------------------------------------------------------ what happened
    def observe_step(self, observation: dict[str, np.ndarray], action: np.ndarray) -> None:
        """Record the observation a step saw and the action it took (the running episode)."""
        self._current_observations.append({k: np.asarray(v).tolist() for k, v in observation.items()})
        self._current_actions.append(np.asarray(action, dtype=np.float64).reshape(-1).tolist())

    def end_episode(self, metric: float, within_budget: bool) -> None:
        """The running episode ended with ``metric``; keep it when it is the best within the budget."""
        if within_budget and metric > self.best_metric and len(self._current_actions) == self.episode_length:
            self.best_metric = float(metric)
            self.best_actions = self._current_actions
            self.best_observations = self._current_observations
        self._current_actions, self._current_observations = [], []
        self.episode += 1

    def take_bc_data(self) -> tuple[list[dict[str, list]], list[list[float]]] | None:
        """The best episode's observations and actions, once, when behaviour cloning is due."""
        if self.bc_done or not self.settings.bc_steps or self.best_actions is None:
            return None
        self.bc_done = True
        return self.best_observations, self.best_actions

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "prior_actions": self.prior_actions, "best_metric": self.best_metric, "best_actions": self.best_actions,
            "best_observations": self.best_observations, "bc_done": self.bc_done, "episode": self.episode,
            "rng": self._rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.prior_actions = state["prior_actions"]
        self.best_metric = float(state["best_metric"])
        self.best_actions, self.best_observations = state["best_actions"], state["best_observations"]
        self.bc_done, self.episode = bool(state["bc_done"]), int(state["episode"])
        self._rng.bit_generator.state = state["rng"]
        self._current_actions, self._current_observations = [], []


class GuidedMixin:
    """Mixin for an SB3 off-policy algorithm (``class GuidedTD3(GuidedMixin, TD3)``): the guide's action replaces the
    algorithm's when it has one, and the actor is behaviour-cloned once before its first gradient step."""

    guide: SearchGuide | None = None
    step_index: Callable[[], int] | None = None

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1):  # noqa: ANN201
        guide, step = self.guide, self.step_index
        if guide is not None and step is not None:
            action = guide.action(step())
            if action is not None:
                scaled = np.clip(action, -1.0, 1.0).reshape(1, -1).repeat(n_envs, axis=0)
                return self.policy.unscale_action(scaled), scaled
        return super()._sample_action(learning_starts, action_noise, n_envs)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        if self.guide is not None:
            data = self.guide.take_bc_data()
            if data is not None:
                self._behaviour_clone(*data)
        super().train(gradient_steps, batch_size)

    def _behaviour_clone(self, observations: list[dict[str, list]], actions: list[list[float]]) -> None:
        """Fit the actor (and its target) to ``actions`` on ``observations`` (mean squared error, Adam)."""
        obs = {key: th.as_tensor(np.asarray([o[key] for o in observations]), dtype=th.float32, device=self.device)
               for key in observations[0]}
        target = th.as_tensor(np.asarray(actions), dtype=th.float32, device=self.device)
        actor = self.actor
        optimizer = th.optim.Adam(actor.parameters(), lr=self.guide.settings.bc_lr)
        actor.set_training_mode(True)
        for _ in range(self.guide.settings.bc_steps):
            loss = nn.functional.mse_loss(actor(obs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        actor.set_training_mode(False)
        self.actor_target.load_state_dict(actor.state_dict())


_GUIDED: dict[type, type] = {}


def guided_class(algorithm: type) -> type:
    """The guided subclass of an SB3 off-policy algorithm class (one per class, so ``isinstance`` works)."""
    if algorithm not in _GUIDED:
        _GUIDED[algorithm] = type(f"Guided{algorithm.__name__}", (GuidedMixin, algorithm), {})
    return _GUIDED[algorithm]


def make_guide(settings: GuideSettings, env: Any, episodes: int, seed: int) -> SearchGuide:
    """The guide of a search of ``episodes`` episodes on ``env``, with its prior plans' actions (at most half the
    budget, and at most ``settings.max_prior_episodes``)."""
    from agents.baselines import prior_plans

    length = len(env.unwrapped.graph.layers)
    guide = SearchGuide(settings, episodes, length, seed)
    limit = min(settings.max_prior_episodes, episodes // 2)
    if settings.priors and limit:
        guide.prior_actions = [[a.astype(float).tolist() for a in plan.actions]
                               for plan in prior_plans(env, settings.priors, limit)]
    return guide

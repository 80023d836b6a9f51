"""One interface for every search agent, learned or not: a :class:`SearchAgent` acts in a given env.

An agent is set up on an env with an episode budget and a seed, then runs episodes until the budget is spent
(or it has nothing left to try). It reports every finished episode, as an
:class:`~ajpq_env.records.EpisodeRecord`, to its :class:`SearchHooks`, and says when its state is complete
(a *safe point*: between episodes, after any learning on them) so that the caller may checkpoint it with
:meth:`SearchAgent.save`. The leaderboard and ``ajpq search`` drive all agents through this interface:

>>> from ajpq_env import AJPQEnv
>>> from ajpq_env.tasks import synthetic_task
>>> from agents import make_agent
>>> result = make_agent("random").search(AJPQEnv(synthetic_task()), episodes=2, seed=0)
>>> result.episodes, result.best.size_ratio <= 0.125
(2, True)
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym

from ajpq_env.fileio import loads_json
from ajpq_env.records import EpisodeRecord

__all__ = ["MemoryHooks", "SearchAgent", "SearchHooks", "SearchResult", "better", "meets_budget"]

_STATE_FILE = "agent.json"


def meets_budget(record: EpisodeRecord, target: float, resource: str) -> bool:
    """Whether ``record``'s ``resource`` ratio is within ``target`` (the run's budget, not the record's own)."""
    ratio = getattr(record, f"{resource}_ratio")
    return not math.isnan(ratio) and ratio <= target * (1 + 1e-9)


def better(record: EpisodeRecord, best: EpisodeRecord | None, target: float, resource: str) -> bool:
    """Whether ``record`` beats ``best``: it meets the budget, and has a higher metric (ties: smaller resource)."""
    if not meets_budget(record, target, resource):
        return False
    if best is None:
        return True
    key = (record.metric, -getattr(record, f"{resource}_ratio"))
    return key > (best.metric, -getattr(best, f"{resource}_ratio"))


class SearchHooks:
    """What an agent reports to; the base class ignores everything."""

    def on_episode(self, record: EpisodeRecord) -> None:
        """A finished episode (its ``episode`` field is the 0-based index in the run)."""

    def on_safe_point(self, agent: SearchAgent) -> None:
        """``agent``'s state is complete (between episodes, after learning on them): it may be saved now."""


@dataclass
class MemoryHooks(SearchHooks):
    """Keeps every record in memory and the best one under the budget ``(target, resource)``."""

    target: float
    resource: str
    records: list[EpisodeRecord] = field(default_factory=list)
    best: EpisodeRecord | None = None

    def on_episode(self, record: EpisodeRecord) -> None:
        self.records.append(record)
        if better(record, self.best, self.target, self.resource):
            self.best = record


@dataclass
class SearchResult:
    """What :meth:`SearchAgent.search` returns.

    :param agent: the agent's name
    :param episodes: episodes run
    :param best: the best record under the env's budget (``None`` when no episode met it)
    :param records: every episode, in order
    :param walltime: seconds
    """

    agent: str
    episodes: int
    best: EpisodeRecord | None
    records: list[EpisodeRecord]
    walltime: float


class SearchAgent(ABC):
    """A policy search that acts in a given AJPQ env, one whole episode (one compression policy) at a time.

    Subclasses implement :meth:`setup` and :meth:`_run`, and extend :meth:`save`/:meth:`load` with their
    state. In :meth:`_run` they call :meth:`_finish_episode` after each episode's last step and
    ``hooks.on_safe_point(self)`` whenever their state is complete.

    :param name: the agent's name in records (``EpisodeRecord.agent``)
    """

    #: one line for listings
    description: str = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.env: gym.Env | None = None
        self.seed = 0
        self.total_episodes = 0
        self.episodes_done = 0
        self.exhausted = False  # nothing left to try: stop before the budget
        self._env_id = ""

    # ------------------------------------------------------------------ the interface
    def setup(self, env: gym.Env, *, episodes: int, seed: int) -> None:
        """Prepare to search ``env`` for ``episodes`` episodes (the whole run's budget) from ``seed``."""
        if episodes < 0:
            raise ValueError(f"episodes must be >= 0, got {episodes}")
        self.env, self.total_episodes, self.seed = env, int(episodes), int(seed)
        self._env_id = env.spec.id if env.spec is not None else ""

    @property
    def done(self) -> bool:
        return self.exhausted or self.episodes_done >= self.total_episodes

    def run(self, hooks: SearchHooks | None = None) -> None:
        """Run episodes until the budget is spent (continuing after :meth:`load`)."""
        if self.env is None:
            raise RuntimeError(f"call setup() before run() on agent {self.name!r}")
        hooks = hooks or SearchHooks()
        if not self.done:
            self._run(hooks)
        hooks.on_safe_point(self)

    @abstractmethod
    def _run(self, hooks: SearchHooks) -> None:
        """Run the remaining episodes."""

    def search(self, env: gym.Env, *, episodes: int, seed: int = 0, hooks: SearchHooks | None = None) -> SearchResult:
        """Set up and run a whole search in memory; the best record is judged by ``env``'s budget."""
        start = time.perf_counter()
        self.setup(env, episodes=episodes, seed=seed)
        budget = env.unwrapped.budget
        memory = MemoryHooks(budget.target, budget.resource)
        self.run(_Tee(memory, hooks) if hooks is not None else memory)
        return SearchResult(self.name, len(memory.records), memory.best, memory.records, time.perf_counter() - start)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The agent's JSON-serialisable state; subclasses extend it."""
        return {"name": self.name, "episodes_done": self.episodes_done, "exhausted": self.exhausted}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"the saved state is of agent {state.get('name')!r}, not {self.name!r}")
        self.episodes_done = int(state["episodes_done"])
        self.exhausted = bool(state["exhausted"])

    def save(self, directory: str | Path) -> None:
        """Write the agent's state into ``directory`` (created); subclasses add their files."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _STATE_FILE).write_text(json.dumps(self.state()))

    def load(self, directory: str | Path) -> None:
        """Restore what :meth:`save` wrote, after :meth:`setup` on an equal env; ``ValueError`` when it does not fit."""
        path = Path(directory) / _STATE_FILE
        try:
            state = loads_json(path.read_text())
            if not isinstance(state, dict):
                raise TypeError(f"expected a JSON object, got {type(state).__name__}")
            self.set_state(state)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"cannot restore the agent state {str(path)!r}: {err!r}") from None

    # ------------------------------------------------------------------ helpers for subclasses
    def _finish_episode(self, hooks: SearchHooks, env: gym.Env | None = None) -> EpisodeRecord:
        """Record the episode that just ended in ``env`` (default: the agent's env) and report it."""
        env = env if env is not None else self.env
        record = env.unwrapped.record(env_id=self._env_id, agent=self.name, seed=self.seed, episode=self.episodes_done)
        if env is not self.env:  # an env of the agent's own making (e.g. another mode): not replayable by id
            record = replace(record, env_id="")
        self.episodes_done += 1
        hooks.on_episode(record)
        return record


@dataclass
class _Tee(SearchHooks):
    first: SearchHooks
    second: SearchHooks

    def on_episode(self, record: EpisodeRecord) -> None:
        self.first.on_episode(record)
        self.second.on_episode(record)

    def on_safe_point(self, agent: SearchAgent) -> None:
        self.first.on_safe_point(agent)
        self.second.on_safe_point(agent)

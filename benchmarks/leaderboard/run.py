"""One run of the leaderboard, the same function in this process, a spawned worker or a Ray task: search with
:func:`agents.search.run_search`, replay the best recipe in a fresh env, fine-tune it with the entry's equal
budget and measure it on the test split, and return the finished :class:`~benchmarks.leaderboard.rows.LeaderboardRow`.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from benchmarks.leaderboard.entrants import Entrant
from benchmarks.leaderboard.finetuning import FinetuneBudget, finetune_row
from benchmarks.leaderboard.rows import LeaderboardRow, best_curve
from benchmarks.leaderboard.suites import Entry
from benchmarks.leaderboard.validate import validate_row, validation_message

if TYPE_CHECKING:
    import gymnasium as gym

    from agents.search import SearchConfig, SearchOutcome

__all__ = ["RUNS_DIR", "RunResult", "RunSpec", "execute_run"]

RUNS_DIR = "runs"


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs for one run (picklable).

    :param entry: the suite entry
    :param entrant: the agent
    :param seed: the run's seed
    :param seed_set: the seed's set in the suite (``"held-out"``, ``"tuning"``, ``"other"``)
    :param episodes: the episode budget
    :param out: the leaderboard's output directory
    :param finetune: the entry's equal fine-tune
    :param threads: torch CPU threads
    :param tolerance: of the replay check
    :param resume_dir: an interrupted run directory to continue
    """

    entry: Entry
    entrant: Entrant
    seed: int
    seed_set: str
    episodes: int
    out: str
    finetune: FinetuneBudget
    threads: int = 1
    tolerance: float = 1e-6
    resume_dir: str | None = None

    @property
    def agent(self) -> str:
        return self.entrant.name

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.entry.name, self.agent, self.seed)

    @property
    def prefix(self) -> str:
        """Start of the run directory's name: ``<entry>__<agent>__s<seed>`` (then ``__<time>``)."""
        slug = self.entry.name.replace("/", "-").replace(":", "-")
        return f"{slug}__{self.agent.replace(':', '-')}__s{self.seed}"

    def label(self) -> str:
        return f"{self.entry.name} {self.agent} s{self.seed}"


@dataclass
class RunResult:
    """A run's row, or its error (a traceback), or that it was interrupted; ``note``: anything worth printing."""

    spec: RunSpec
    row: LeaderboardRow | None = None
    error: str | None = None
    interrupted: bool = False
    note: str = ""


def _search_config(spec: RunSpec, out: Path, resume: bool) -> SearchConfig:
    from agents.search import SearchConfig

    e = spec.entry
    return SearchConfig(
        env=e.env, episodes=spec.episodes, target=e.target, resource=e.resource, seed=spec.seed, out=str(out),
        resume=resume, progress=False, threads=spec.threads, env_kwargs=json.dumps(e.env_kwargs) if e.env_kwargs else None,
        **({} if spec.entrant.custom else {"algo": spec.agent}),
    )


def _row(spec: RunSpec, env: gym.Env, outcome: SearchOutcome, run_dir: Path) -> LeaderboardRow:
    from ajpq_env.records import read_records

    base, best, e, nan = env.unwrapped, outcome.best, spec.entry, math.nan
    curve = best_curve(read_records(run_dir / "episodes.csv"), base.budget.target, base.budget.resource)
    return LeaderboardRow(
        entry=e.name, env_id=e.env, task=base.task.name, mode=base.mode, resource=e.resource, target=e.target,
        agent=spec.agent, seed=spec.seed, seed_set=spec.seed_set, episode_budget=spec.episodes,
        episodes=outcome.episodes, best_episode=None if best is None else best.episode,
        metric=nan if best is None else best.metric, fp32_metric=base.fp32_metric,
        size_ratio=nan if best is None else best.size_ratio, macs_ratio=nan if best is None else best.macs_ratio,
        bitops_ratio=nan if best is None else best.bitops_ratio, reward=nan if best is None else best.reward,
        walltime=outcome.walltime, validated=False, validation="", run=os.path.relpath(run_dir, spec.out),
        curve=curve, recipe={} if best is None else best.recipe, env_kwargs={**base.spec_kwargs, **e.env_kwargs},
    )


def execute_run(spec: RunSpec) -> RunResult:
    """Search, validate the best recipe in a fresh env, fine-tune it and measure it on test.

    Returns errors (as a traceback) instead of raising; an interrupt during the search comes back as
    ``interrupted`` (its checkpoint stays for ``--resume``); an interrupt after it propagates.
    """
    from agents.checkpoint import CheckpointError
    from agents.search import make_env, run_search

    torch.set_num_threads(spec.threads)
    note = ""
    envs: list[gym.Env] = []

    def env_factory(config: SearchConfig) -> gym.Env:
        envs.append(make_env(config))
        return envs[-1]

    def new_dir() -> Path:
        return Path(spec.out) / RUNS_DIR / f"{spec.prefix}__{time.strftime('%Y%m%d-%H%M%S')}"

    agent = {"agent": spec.entrant.build} if spec.entrant.custom else {}
    try:
        run_dir = Path(spec.resume_dir) if spec.resume_dir else new_dir()
        try:
            outcome = run_search(_search_config(spec, run_dir, spec.resume_dir is not None), env_factory=env_factory,
                                 **agent)
        except CheckpointError as err:
            if spec.resume_dir is None:
                raise
            note = f"cannot continue {run_dir} ({err}); started afresh"
            envs.clear()
            run_dir = new_dir()
            outcome = run_search(_search_config(spec, run_dir, False), env_factory=env_factory, **agent)
        if outcome.interrupted:
            return RunResult(spec, interrupted=True, note=note)
        row = _row(spec, envs[-1], outcome, run_dir)
        check = validate_row(row, spec.tolerance)
        row = replace(row, validated=check.ok, validation=validation_message(check))
        row = replace(row, **finetune_row(row, spec.finetune))
        return RunResult(spec, row, note=note)
    except Exception:  # noqa: BLE001 (reported by the caller; the other runs go on)
        return RunResult(spec, error=traceback.format_exc(), note=note)

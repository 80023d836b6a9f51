"""The leaderboard's CSV: one :class:`LeaderboardRow` per run, keyed by (entry, agent, seed).

A row holds the run's best recipe under the budget with its search-split numbers, the replay check, the
**test** metric after the entry's equal fine-tune, and the run's best-so-far curve (episode, elapsed search
seconds, metric), from which the tables rank the agents at equal episodes and at equal wall time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ajpq_env.fileio import atomic_write, csv_dicts, csv_header, loads_json

if TYPE_CHECKING:
    from ajpq_env.records import EpisodeRecord

__all__ = ["COLUMNS", "LeaderboardRow", "best_curve", "check_header", "drop_partial_line", "read_rows"]


@dataclass
class LeaderboardRow:
    """One run of the leaderboard: its key (``entry``, ``agent``, ``seed``), the best record under the budget, the
    run's totals, the replay check and the equal fine-tune. Fields named as in
    :class:`~ajpq_env.records.EpisodeRecord` mean the same, but ``walltime``, here the run's search time.

    :param entry: suite entry name
    :param env_id: the entry's env (a registered id, or a ``synthetic`` spec)
    :param task: task name
    :param mode: the env's mode
    :param resource: budgeted resource
    :param target: budget ratio
    :param agent: agent name
    :param seed: seed of the run
    :param seed_set: ``"held-out"``, ``"tuning"`` or ``"other"``: the seed's set in the suite that ran it
    :param episode_budget: episodes the run was given
    :param episodes: episodes it ran (baselines with few candidates stop early)
    :param best_episode: index of the best episode (``None``: no episode met the budget)
    :param metric: search-split metric of the best recipe (NaN when none)
    :param fp32_metric: search-split metric of the FP32 model
    :param size_ratio: storage of the best recipe / FP32 storage
    :param macs_ratio: MACs / FP32 MACs
    :param bitops_ratio: BitOPs / FP32 BitOPs
    :param reward: reward of the best episode
    :param walltime: seconds of the search (all sessions of the run; not the validation or the fine-tune)
    :param validated: the best recipe replayed in a fresh env to the same numbers and within the budget
    :param validation: ``"OK"`` or what did not match
    :param finetune_epochs: epochs of the equal fine-tune (0: none was made)
    :param finetune_samples: training samples per fine-tune epoch (``None``: the whole train split)
    :param test_metric: test-split metric of the best recipe after the fine-tune (NaN: none made)
    :param test_before_finetune: test-split metric of the best recipe as searched (BN recalibrated, no training)
    :param fp32_test_metric: test-split metric of the FP32 model
    :param finetune_search_metric: search-split metric after the fine-tune
    :param finetune_seconds: seconds of the fine-tune (with its test evaluations)
    :param run: the run's directory, relative to the leaderboard's ``OUT``
    :param curve: the best-so-far curve, ``[episode, elapsed search seconds, metric]`` at each new best under the
        budget, then a last point at the run's last episode (elapsed: the sum of ``episodes.csv``'s ``walltime``)
    :param recipe: the best recipe (JSON in the CSV)
    :param env_kwargs: arguments of :class:`~ajpq_env.AJPQEnv` (besides the task) that rebuild the env
    """

    entry: str
    env_id: str
    task: str
    mode: str
    resource: str
    target: float
    agent: str
    seed: int
    seed_set: str
    episode_budget: int
    episodes: int
    best_episode: int | None
    metric: float
    fp32_metric: float
    size_ratio: float
    macs_ratio: float
    bitops_ratio: float
    reward: float
    walltime: float
    validated: bool
    validation: str
    finetune_epochs: int = 0
    finetune_samples: int | None = None
    test_metric: float = math.nan
    test_before_finetune: float = math.nan
    fp32_test_metric: float = math.nan
    finetune_search_metric: float = math.nan
    finetune_seconds: float = math.nan
    run: str = ""
    curve: list[list[float]] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.entry, self.agent, self.seed)

    @property
    def found(self) -> bool:
        """Whether some episode met the budget."""
        return self.best_episode is not None

    @property
    def resource_ratio(self) -> float:
        return getattr(self, f"{self.resource}_ratio")

    @property
    def search_seconds(self) -> float:
        """Elapsed search seconds at the last episode (the curve's last point; NaN without one)."""
        return self.curve[-1][1] if self.curve else math.nan

    def best_by(self, seconds: float) -> float:
        """The best metric the run had reached within ``seconds`` of search (NaN: none yet)."""
        reached = [metric for _, elapsed, metric in self.curve[:-1] if elapsed <= seconds]
        return reached[-1] if reached else math.nan

    def record(self) -> EpisodeRecord:
        """The best episode as an :class:`~ajpq_env.records.EpisodeRecord` (what validation replays)."""
        from ajpq_env.envs import ENV_IDS
        from ajpq_env.records import EpisodeRecord

        return EpisodeRecord(
            env_id=self.env_id if self.env_id in ENV_IDS else "", task=self.task, mode=self.mode,
            resource=self.resource, target=self.target, agent=self.agent, seed=self.seed,
            episode=self.best_episode or 0, metric=self.metric, fp32_metric=self.fp32_metric,
            size_ratio=self.size_ratio, macs_ratio=self.macs_ratio, bitops_ratio=self.bitops_ratio,
            reward=self.reward, recipe=self.recipe, env_kwargs=self.env_kwargs,
        )

    def to_row(self) -> dict[str, str]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else (
                "" if value is None else str(value))
        return out

    @classmethod
    def from_row(cls, row: dict[str, str]) -> LeaderboardRow:
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw, hint = row.get(f.name) or "", hints[f.name]
            origin = typing.get_origin(hint)
            if origin in (dict, list):
                kwargs[f.name] = loads_json(raw) if raw else origin()
            elif hint is bool:
                if raw not in ("True", "False"):
                    raise ValueError(f"{f.name} must be True or False, got {raw!r}")
                kwargs[f.name] = raw == "True"
            elif hint is float:
                kwargs[f.name] = float(raw) if raw else math.nan
            elif hint in (int, int | None):
                kwargs[f.name] = int(raw) if raw else None
            else:
                kwargs[f.name] = raw
        row = cls(**kwargs)
        row.check()
        return row

    def check(self) -> None:
        """``ValueError`` naming the first field that is not what :meth:`to_row` writes (a row read by
        ``--table-only`` or ``benchmarks.claims`` is otherwise trusted by every table)."""
        from ajpq_env.compression.cost import RESOURCES
        from benchmarks.leaderboard.suites import SEED_SETS

        for name in ("entry", "env_id", "task", "agent"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty")
        if self.resource not in RESOURCES:
            raise ValueError(f"resource must be one of {list(RESOURCES)}, got {self.resource!r}")
        if self.seed_set not in SEED_SETS:
            raise ValueError(f"seed_set must be one of {list(SEED_SETS)}, got {self.seed_set!r}")
        if not 0 < self.target <= 1:
            raise ValueError(f"target must be in (0, 1], got {self.target}")
        for name in ("episodes", "finetune_epochs"):
            if getattr(self, name) is None or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)}")
        if self.episode_budget is None or self.episode_budget < 1:
            raise ValueError(f"episode_budget must be an integer >= 1, got {self.episode_budget}")
        if self.best_episode is not None and not 0 <= self.best_episode < max(self.episodes, 1):
            raise ValueError(f"best_episode must be in 0..{self.episodes - 1} (or empty), got {self.best_episode}")
        for name in ("size_ratio", "macs_ratio", "bitops_ratio", "walltime", "finetune_seconds"):
            if getattr(self, name) < 0:  # NaN (not measured) passes
                raise ValueError(f"{name} must be >= 0 or empty, got {getattr(self, name)}")
        for name in ("recipe", "env_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a JSON object, got {type(getattr(self, name)).__name__}")
        if not (isinstance(self.curve, list) and all(
                isinstance(point, list) and len(point) == 3
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in point) for point in self.curve)):
            raise ValueError("curve must be a JSON list of [episode, seconds, metric] number triples")


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LeaderboardRow))


def check_header(path: str | Path) -> None:
    """Refuse a CSV whose header is not exactly :data:`COLUMNS` (appending to it would shift its columns)."""
    with open(path, newline="") as f:
        try:
            header = csv_header(f)
        except ValueError as err:
            raise ValueError(f"{str(path)!r} {err}: choose another --out") from None
    if header and tuple(header) != COLUMNS:
        missing = [c for c in COLUMNS if c not in header]
        raise ValueError(
            f"{str(path)!r} is not a CSV of this leaderboard version ("
            + (f"it lacks the columns {missing}" if missing else "its columns differ")
            + "): choose another --out, or re-make its table with the version that wrote it"
        )


def read_rows(path: str | Path, *, complete_lines_only: bool = False) -> list[LeaderboardRow]:
    """The rows of a leaderboard CSV; ``ValueError`` naming the file (and line) when it is not one.

    :param complete_lines_only: ignore a last line without its newline (an interrupted write; see
        :func:`drop_partial_line`)
    """
    with open(path, newline="") as f:
        text = f.read()
    if complete_lines_only and text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        rows = csv_dicts(reader)
        try:
            header = reader.fieldnames or []
        except csv.Error as err:
            raise ValueError(f"{str(path)!r} line 1: not a CSV header ({err})") from None
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{str(path)!r} is not a leaderboard CSV of this version: it lacks the columns {missing}")
        try:
            return [LeaderboardRow.from_row(r) for r in rows]
        except (ValueError, TypeError) as err:
            raise ValueError(f"{str(path)!r}, line {reader.line_num}: unreadable row ({err})") from None


def drop_partial_line(path: Path) -> bool:
    """Cut a last line that an interrupted write left without its newline; whether there was one."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    atomic_write(path, data[: data.rfind(b"\n") + 1])
    return True


def best_curve(records: typing.Iterable[EpisodeRecord], target: float, resource: str) -> list[list[float]]:
    """The best-so-far curve of a run's episodes (see :attr:`LeaderboardRow.curve`), judged by the run's budget as
    ``ajpq search`` judges its best recipe (:func:`agents.base.better`)."""
    from agents.base import better

    curve: list[list[float]] = []
    best, elapsed, last = None, 0.0, None
    for record in records:
        elapsed += record.walltime if math.isfinite(record.walltime) else 0.0
        last = record
        if better(record, best, target, resource):
            best = record
            curve.append([record.episode, round(elapsed, 3), record.metric])
    if last is not None:
        curve.append([last.episode, round(elapsed, 3), best.metric if best is not None else math.nan])
    return curve

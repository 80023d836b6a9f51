"""The AJPQ leaderboard: fixed tasks and budgets, every agent, several seeds, every result validated by replay.

A *suite* is a fixed list of :class:`Entry` (env, budget target and resource, episode budget). For each entry,
agent and seed the leaderboard runs one ``ajpq search`` (:func:`agents.search.run_search`: an agent of the
registry acting in the entry's env, with the same defaults as the command line), replays the run's best recipe
in a **fresh** env (a new env on a freshly loaded task: ``AJPQEnv.validate``, mismatches recorded, never raised),
and appends one flushed row to ``OUT/leaderboard.csv`` (:class:`LeaderboardRow`). The Markdown table
(``OUT/leaderboard.md``, also printed) ranks the agents of every entry by their mean best metric over seeds.

    python -m benchmarks.leaderboard                                   # default suite, 6 agents, seeds 0 1 2
    python -m benchmarks.leaderboard --suite embedded --entries mnist5k-mobilenet_v2/size-0.125 --seeds 0 1
    python -m benchmarks.leaderboard --resume                          # after an interrupt: only what is missing
    python -m benchmarks.leaderboard --workers 2 --threads 1           # local processes (spawn)
    python -m benchmarks.leaderboard --ray auto                        # a Ray cluster (pip install -e ".[ray]")
    python -m benchmarks.leaderboard --table-only --out runs/leaderboard
    python -m benchmarks.leaderboard --list                            # suites, entries, agents

Layout of ``OUT`` (default ``runs/leaderboard``)::

    OUT/leaderboard.csv     one row per finished run, keyed by (entry, agent, seed); appended and flushed per run
    OUT/leaderboard.md      the table
    OUT/runs/<entry>__<agent>__s<seed>__<YYYYmmdd-HHMMSS>/   the run's ``ajpq search`` directory (episodes.csv,
                            best_recipe.json, TensorBoard; its checkpoint until the row is written, unless
                            ``--keep-checkpoints``)

``--resume`` skips runs already in the CSV and continues an interrupted run from its latest checkpoint in
``OUT/runs``. Entries whose data or weights are absent (CIFAR-10 needs ``AJPQ_DATA`` and ``AJPQ_WEIGHTS``) are
skipped with the reason printed. A run that raises is reported and leaves no row (``--resume`` retries it).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
import traceback
import typing
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import torch

from ajpq_env.records import RecordWriter

if TYPE_CHECKING:
    from agents.search import SearchConfig
    from ajpq_env import AJPQEnv
    from ajpq_env.records import EpisodeRecord, ValidationResult

__all__ = [
    "DEFAULT_AGENTS",
    "SUITES",
    "Entry",
    "LeaderboardConfig",
    "LeaderboardOutcome",
    "LeaderboardRow",
    "RunResult",
    "RunSpec",
    "execute_run",
    "main",
    "markdown_table",
    "parse_args",
    "read_rows",
    "replay_env",
    "run_leaderboard",
    "validate_row",
]

CSV_NAME, TABLE_NAME, RUNS_DIR = "leaderboard.csv", "leaderboard.md", "runs"
DEFAULT_AGENTS: tuple[str, ...] = ("td3-twolevel", "ddpg", "random", "uniform", "heuristic", "two-step")
RAY_HINT = 'install the optional extra: pip install -e ".[ray]"'


# ---------------------------------------------------------------------- the suites
@dataclass(frozen=True)
class Entry:
    """One fixed task of a suite.

    :param name: ``<task>/<resource>-<target>``, the entry's key in the CSV and the table
    :param env: a registered env id, or ``synthetic[-prune|-quant][:<model>]`` (as ``ajpq search --env``)
    :param target: budget as a ratio of the FP32 model's ``resource``
    :param resource: ``"size"``, ``"bitops"`` or ``"macs"``
    :param episodes: episode budget of each run (``--episodes`` overrides it)
    :param env_kwargs: further env arguments (e.g. ``{"search_size": 1000}``); JSON-serialisable
    """

    name: str
    env: str
    target: float
    resource: str
    episodes: int
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """The task name of the entry's env."""
        from ajpq_env.envs import ENV_IDS
        from ajpq_env.tasks import SYNTHETIC_PREFIX

        if self.env in ENV_IDS:
            return ENV_IDS[self.env]["task"]
        stem, _, model = self.env.partition(":")
        return SYNTHETIC_PREFIX + (model or "mobilenet_v2")

    def unavailable(self) -> str | None:
        """Why the entry cannot run here (missing data set or weights), or ``None``; loads nothing."""
        from ajpq_env.tasks import TASKS, resolve_weights

        spec = TASKS.get(self.task)
        if spec is None or spec.dataset in ("mnist5k", "synthetic"):
            return None  # shipped with the package (or made up)
        try:
            resolve_weights(spec, self.env_kwargs.get("weights"))
        except FileNotFoundError as err:
            return str(err)
        root = self.env_kwargs.get("data_root") or os.environ.get("AJPQ_DATA")
        if not root:
            return f"task {spec.name!r}: no {spec.dataset} data: the AJPQ_DATA environment variable is not set"
        if not Path(root).expanduser().exists():
            return f"task {spec.name!r}: the {spec.dataset} data root {root!r} does not exist"
        return None


def _entry(env: str, task: str, resource: str, target: float, episodes: int, **kwargs: Any) -> Entry:
    return Entry(f"{task}/{resource}-{target:g}", env, target, resource, episodes, kwargs)


#: suite name -> its entries (fixed: change them only with a new suite name, or old CSVs stop comparing)
SUITES: dict[str, tuple[Entry, ...]] = {
    "embedded": (
        _entry("AJPQ-MobileNet-v0", "mnist5k-mobilenet_v2", "size", 0.125, 150),
        _entry("AJPQ-MobileNet-v0", "mnist5k-mobilenet_v2", "bitops", 0.03, 150),
    ),
    "cifar10": (
        _entry("AJPQ-ResNet20-CIFAR10-v0", "cifar10-resnet20", "size", 0.125, 150),
        _entry("AJPQ-MobileNet-CIFAR10-v0", "cifar10-mobilenet_v2", "size", 0.125, 150),
    ),
    "smoke": (  # tiny random env: tests and demos
        _entry("synthetic", "synthetic-mobilenet_v2", "size", 0.125, 4),
        _entry("synthetic", "synthetic-mobilenet_v2", "bitops", 0.05, 4),
    ),
}
SUITES = {"default": SUITES["embedded"] + SUITES["cifar10"], **SUITES}


# ---------------------------------------------------------------------- configuration
def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


def _list(default: Sequence[Any], help: str) -> Any:
    return field(default_factory=lambda: list(default), metadata={"help": help})


@dataclass
class LeaderboardConfig:
    """Options of the leaderboard; each field is the command-line flag of the same name (``_`` -> ``-``)."""

    suite: str = _opt("default", "the suite of entries", choices=tuple(SUITES))
    entries: list[str] = _list((), "run only these entries of the suite (default: all of them)")
    agents: list[str] = _list(DEFAULT_AGENTS, "agents (names of ajpq search --list)")
    seeds: list[int] = _list((0, 1, 2), "seeds; each (entry, agent, seed) is one run")
    episodes: int | None = _opt(None, "episode budget of every run (default: each entry's)")
    out: str = _opt("runs/leaderboard", "output directory: leaderboard.csv, leaderboard.md, runs/")
    resume: bool = _opt(False, "skip the runs already in the CSV; continue interrupted ones from their checkpoints")
    workers: int = _opt(1, "runs in parallel in local processes (spawn)")
    ray: str | None = _opt(None, "run on a Ray cluster at this address ('auto': the local cluster's)")
    threads: int = _opt(1, "torch CPU threads of each run")
    tolerance: float = _opt(1e-6, "largest difference of a replayed number that still validates")
    keep_checkpoints: bool = _opt(False, "keep each finished run's last checkpoint (RL replay buffers: ~40 MB a run)")
    table_only: bool = _opt(False, "only (re)write the table from OUT/leaderboard.csv")

    def __post_init__(self) -> None:
        from agents.registry import ALIASES, agent_names

        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; valid suites: {', '.join(SUITES)}")
        names = [e.name for e in SUITES[self.suite]]
        unknown = [e for e in self.entries if e not in names]
        if unknown:
            raise ValueError(f"unknown entries {unknown} of suite {self.suite!r}; valid entries: {', '.join(names)}")
        self.agents = _unique(ALIASES.get(a, a) for a in self.agents)
        unknown = [a for a in self.agents if a not in agent_names()]
        if unknown:
            raise ValueError(f"unknown agents {unknown}; valid names: {', '.join(agent_names())}")
        self.entries, self.seeds = _unique(self.entries), _unique(self.seeds)
        if not self.agents or not self.seeds:
            raise ValueError("--agents and --seeds need at least one value each")
        if self.episodes is not None and self.episodes < (2 if "two-step" in self.agents else 1):
            raise ValueError(f"--episodes must be >= 1 (>= 2 with two-step), got {self.episodes}")
        if self.workers < 1 or self.threads < 1:
            raise ValueError(f"--workers and --threads must be >= 1, got {self.workers} and {self.threads}")
        if self.ray is not None and self.workers > 1:
            raise ValueError("--ray and --workers > 1 exclude each other: Ray schedules the runs itself")

    def selected_entries(self) -> list[Entry]:
        entries = SUITES[self.suite]
        return [e for e in entries if not self.entries or e.name in self.entries]


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def parse_args(argv: list[str] | None = None) -> LeaderboardConfig | None:
    """A :class:`LeaderboardConfig` from the command line (``None`` after ``--list``); bad input is a usage error."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard", description=__doc__.split("\n\n")[0])
    hints = typing.get_type_hints(LeaderboardConfig)
    for f in fields(LeaderboardConfig):
        flag, hint, meta = "--" + f.name.replace("_", "-"), hints[f.name], dict(f.metadata)
        if hint is bool:
            parser.add_argument(flag, action="store_true", help=meta["help"])
        elif typing.get_origin(hint) is list:
            default = f.default_factory()  # type: ignore[misc]
            parser.add_argument(flag, nargs="+", type=typing.get_args(hint)[0], default=default,
                                help=meta["help"] + (f" (default: {' '.join(map(str, default))})" if default else ""))
        else:
            kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
            suffix = "" if f.default is None or "default" in meta["help"] else f" (default: {f.default})"
            parser.add_argument(flag, type=kind, default=f.default, help=meta["help"] + suffix)
    parser.add_argument("--list", action="store_true", help="list the suites, their entries and the agents, and exit")
    args = vars(parser.parse_args(argv))
    if args.pop("list"):
        print(_listing())
        return None
    try:
        return LeaderboardConfig(**args)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def _listing() -> str:
    from agents.registry import agent_names

    lines = []
    for name, entries in SUITES.items():
        lines.append(f"suite {name}:")
        for e in entries:
            why = e.unavailable()
            lines.append(f"  {e.name:36s} {e.env:28s} {e.episodes:4d} episodes" + (f"  [skipped: {why}]" if why else ""))
    lines.append(f"agents: {', '.join(agent_names())} (default: {' '.join(DEFAULT_AGENTS)})")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the rows
@dataclass
class LeaderboardRow:
    """One run of the leaderboard: its key (``entry``, ``agent``, ``seed``), the best record under the budget, the
    run's totals, and the replay check. Fields named as in :class:`~ajpq_env.records.EpisodeRecord` mean the same,
    but ``walltime``, here the run's search time.

    :param entry: suite entry name
    :param env_id: the entry's env (a registered id, or a ``synthetic`` spec)
    :param task: task name
    :param mode: the env's mode
    :param resource: budgeted resource
    :param target: budget ratio
    :param agent: agent name
    :param seed: seed of the run
    :param episode_budget: episodes the run was given
    :param episodes: episodes it ran (baselines with few candidates stop early)
    :param best_episode: index of the best episode (``None``: no episode met the budget)
    :param metric: search-split metric of the best recipe (NaN when none)
    :param fp32_metric: search-split metric of the FP32 model
    :param size_ratio: storage of the best recipe / FP32 storage
    :param macs_ratio: MACs / FP32 MACs
    :param bitops_ratio: BitOPs / FP32 BitOPs
    :param reward: reward of the best episode
    :param walltime: seconds of the search (all sessions of the run; not the validation)
    :param validated: the best recipe replayed in a fresh env to the same numbers and within the budget
    :param validation: ``"OK"`` or what did not match
    :param run: the run's directory, relative to the leaderboard's ``OUT``
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
    run: str
    recipe: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.entry, self.agent, self.seed)

    def record(self) -> EpisodeRecord:
        """The best episode as an :class:`~ajpq_env.records.EpisodeRecord` (what :func:`validate_row` replays)."""
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
            out[f.name] = json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else (
                "" if value is None else str(value))
        return out

    @classmethod
    def from_row(cls, row: dict[str, str]) -> LeaderboardRow:
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw, hint = row.get(f.name) or "", hints[f.name]
            if typing.get_origin(hint) is dict:
                kwargs[f.name] = json.loads(raw) if raw else {}
            elif hint is bool:
                kwargs[f.name] = raw == "True"
            elif hint is float:
                kwargs[f.name] = float(raw) if raw else math.nan
            elif hint in (int, int | None):
                kwargs[f.name] = int(raw) if raw else None
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LeaderboardRow))


def read_rows(path: str | Path) -> list[LeaderboardRow]:
    """The rows of a leaderboard CSV; ``ValueError`` naming the file when it is not one."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{str(path)!r} is not a leaderboard CSV: it lacks the columns {missing}")
        try:
            return [LeaderboardRow.from_row(r) for r in reader]
        except ValueError as err:
            raise ValueError(f"{str(path)!r}, line {reader.line_num}: unreadable row ({err})") from None


def _drop_checkpoint(run_dir: Path) -> None:
    """Remove a finished run's checkpoint (manifest first, so the directory never claims a missing checkpoint)."""
    (run_dir / "checkpoint.json").unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _drop_partial_line(path: Path) -> bool:
    """Cut a last line that an interrupted write left without its newline; whether there was one."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data[: data.rfind(b"\n") + 1])
    os.replace(tmp, path)
    return True


# ---------------------------------------------------------------------- validation: replay in a fresh env
def replay_env(row: LeaderboardRow) -> AJPQEnv:
    """A fresh env for ``row``: a new :class:`~ajpq_env.AJPQEnv` on a freshly loaded task (nothing shared with the
    env that searched, not even the process's task cache), made with the row's ``env_kwargs``."""
    from ajpq_env import AJPQEnv
    from ajpq_env.tasks import load_task

    kwargs = dict(row.env_kwargs)
    task = load_task(row.task, **{k: kwargs.pop(k) for k in ("data_root", "weights", "search_size") if k in kwargs})
    return AJPQEnv(task, **kwargs)


def validate_row(row: LeaderboardRow, tolerance: float = 1e-6) -> ValidationResult:
    """Replay ``row``'s recipe in :func:`replay_env` and compare metric, ratios, reward and budget.

    Never raises for a bad row: an env that cannot be built, a recipe that does not apply or any other failure of
    the replay is one more line in :attr:`~ajpq_env.records.ValidationResult.errors`.
    """
    from ajpq_env.records import ValidationResult

    record = row.record()
    if row.best_episode is None:
        return ValidationResult(record, ["no episode met the budget: no recipe to replay"])
    try:
        env = replay_env(row)
    except Exception as err:  # noqa: BLE001 (a validator reports)
        return ValidationResult(record, [f"cannot build the env: {type(err).__name__}: {err}"])
    try:
        result = env.validate(record, tolerance)
    except Exception as err:  # noqa: BLE001
        return ValidationResult(record, [f"replay failed: {type(err).__name__}: {err}"])
    if not math.isclose(env.fp32_metric, row.fp32_metric, abs_tol=tolerance):
        result.errors.append(f"fp32_metric: recorded {row.fp32_metric:.6g}, replayed {env.fp32_metric:.6g}")
    budget = env.budget
    if (budget.target, budget.resource) != (row.target, row.resource):
        result.errors.append(f"budget: the row says {row.resource} <= {row.target:g}, its env_kwargs make "
                             f"{budget.resource} <= {budget.target:g}")
    return result


def _message(result: ValidationResult) -> str:
    return "OK" if result.ok else "; ".join(result.errors).replace("\n", " ")


# ---------------------------------------------------------------------- one run (in this process, a worker, or Ray)
@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs for one run (picklable)."""

    entry: Entry
    agent: str
    seed: int
    episodes: int
    out: str
    threads: int = 1
    tolerance: float = 1e-6
    resume_dir: str | None = None  # an interrupted run directory to continue

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.entry.name, self.agent, self.seed)

    @property
    def prefix(self) -> str:
        """Start of the run directory's name: ``<entry>__<agent>__s<seed>`` (then ``__<time>``)."""
        slug = self.entry.name.replace("/", "-").replace(":", "-")
        return f"{slug}__{self.agent}__s{self.seed}"

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
        env=e.env, algo=spec.agent, episodes=spec.episodes, target=e.target, resource=e.resource, seed=spec.seed,
        out=str(out), resume=resume, progress=False, threads=spec.threads,
        env_kwargs=json.dumps(e.env_kwargs) if e.env_kwargs else None,
    )


def execute_run(spec: RunSpec) -> RunResult:
    """Search (:func:`agents.search.run_search`), then validate the best recipe in a fresh env (:func:`validate_row`).

    The same function runs in this process, in a spawned worker and as a Ray task. It returns errors (as a
    traceback) instead of raising; an interrupt during the search comes back as ``interrupted``.
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

    try:
        run_dir = Path(spec.resume_dir) if spec.resume_dir else new_dir()
        try:
            outcome = run_search(_search_config(spec, run_dir, spec.resume_dir is not None), env_factory=env_factory)
        except CheckpointError as err:
            if spec.resume_dir is None:
                raise
            note = f"cannot continue {run_dir} ({err}); started afresh"
            envs.clear()
            run_dir = new_dir()
            outcome = run_search(_search_config(spec, run_dir, False), env_factory=env_factory)
        if outcome.interrupted:
            return RunResult(spec, interrupted=True, note=note)
        base, best, e = envs[0].unwrapped, outcome.best, spec.entry
        nan = math.nan
        row = LeaderboardRow(
            entry=e.name, env_id=e.env, task=base.task.name, mode=base.mode, resource=e.resource, target=e.target,
            agent=spec.agent, seed=spec.seed, episode_budget=spec.episodes, episodes=outcome.episodes,
            best_episode=None if best is None else best.episode,
            metric=nan if best is None else best.metric, fp32_metric=base.fp32_metric,
            size_ratio=nan if best is None else best.size_ratio, macs_ratio=nan if best is None else best.macs_ratio,
            bitops_ratio=nan if best is None else best.bitops_ratio, reward=nan if best is None else best.reward,
            walltime=outcome.walltime, validated=False, validation="", run=os.path.relpath(run_dir, spec.out),
            recipe={} if best is None else best.recipe, env_kwargs={**base.spec_kwargs, **e.env_kwargs},
        )
        check = validate_row(row, spec.tolerance)
        return RunResult(spec, replace(row, validated=check.ok, validation=_message(check)), note=note)
    except Exception:  # noqa: BLE001 (reported by the caller; the other runs go on)
        return RunResult(spec, error=traceback.format_exc(), note=note)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_local(specs: list[RunSpec], workers: int, threads: int, handle: Callable[[RunResult], None]) -> None:
    if workers == 1:
        for spec in specs:
            handle(execute_run(spec))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(specs)), mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(execute_run, spec): spec for spec in specs}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception as err:  # noqa: BLE001 (a worker died: e.g. killed for memory)
                    result = RunResult(futures[future], error=f"the worker failed: {type(err).__name__}: {err}")
                handle(result)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _run_ray(specs: list[RunSpec], address: str, threads: int, handle: Callable[[RunResult], None]) -> None:
    """Every run as a Ray task of :func:`execute_run` (``num_cpus=threads``). The cluster's nodes need this
    checkout installed; each run directory is written on the node that ran it (use a shared ``--out``), the rows
    come back here. Not exercised by the tests against a real cluster."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=threads)(execute_run)
    pending = {remote.remote(spec): spec for spec in specs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as err:  # noqa: BLE001 (a task or node failed)
                    result = RunResult(spec, error=f"the Ray task failed: {type(err).__name__}: {err}")
                handle(result)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        raise


# ---------------------------------------------------------------------- the table
def _mean_std(values: list[float]) -> tuple[float, float | None]:
    if not values:
        return math.nan, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def markdown_table(rows: Sequence[LeaderboardRow]) -> str:
    """Per entry (in order of first appearance), the agents ranked by mean best metric over seeds (± sample std
    with more than one seed; ties: smaller resource ratio), with ratios, episodes, walltime and validated runs."""
    by_entry: dict[str, dict[str, list[LeaderboardRow]]] = {}
    for row in rows:
        by_entry.setdefault(row.entry, {}).setdefault(row.agent, []).append(row)
    lines = ["# AJPQ leaderboard", ""]
    if not rows:
        return "\n".join([*lines, "No runs yet.", ""])
    failures = []
    for entry, agents in by_entry.items():
        first = next(iter(agents.values()))[0]
        seeds = sorted({r.seed for runs in agents.values() for r in runs})
        budgets = sorted({r.episode_budget for runs in agents.values() for r in runs})
        lines += [
            f"## {entry}", "",
            f"`{first.env_id}` (task {first.task}, {first.mode}): {first.resource} <= {first.target:g} of FP32, "
            f"{'/'.join(map(str, budgets))} episodes per run, FP32 metric {first.fp32_metric:.4f}, "
            f"seeds {', '.join(map(str, seeds))}.", "",
            "| rank | agent | best metric | Δ FP32 | size ratio | BitOPs ratio | episodes | walltime (s) | validated |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        stats = []
        for agent, runs in agents.items():
            found = [r for r in runs if r.best_episode is not None]
            mean, std = _mean_std([r.metric for r in found])
            ratio = statistics.fmean(getattr(r, f"{r.resource}_ratio") for r in found) if found else math.inf
            stats.append((agent, runs, found, mean, std, ratio))
            failures += [f"- {entry} {agent} seed {r.seed} ({r.run}): {r.validation}" for r in runs if not r.validated]
        stats.sort(key=lambda s: (math.isnan(s[3]), -s[3] if not math.isnan(s[3]) else 0.0, s[5], s[0]))
        for rank, (agent, runs, found, mean, std, _) in enumerate(stats, 1):
            def avg(key: str, fmt: str, runs: list[LeaderboardRow] = found) -> str:
                return format(statistics.fmean(getattr(r, key) for r in runs), fmt) if runs else "—"

            if found:
                metric = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
                metric += f" ({len(found)}/{len(runs)} runs)" if len(found) < len(runs) else ""
                delta = f"{mean - statistics.fmean(r.fp32_metric for r in found):+.4f}"
            else:
                metric, delta = "none within budget", "—"
            lines.append(
                f"| {rank} | {agent} | {metric} | {delta} | {avg('size_ratio', '.4f')} | {avg('bitops_ratio', '.4f')} "
                f"| {avg('episodes', '.0f', runs)} | {avg('walltime', '.0f', runs)} "
                f"| {sum(r.validated for r in runs)}/{len(runs)} |"
            )
        lines.append("")
    lines += [
        "Best metric: search-split metric of each run's best recipe within the budget, mean over seeds (± sample "
        "std); ratios against FP32 (mean); episodes run of the budget (baselines may stop early); walltime: search "
        "seconds per run; validated: runs whose best recipe replayed to the same numbers in a fresh env.", "",
    ]
    if failures:
        lines += ["Not validated:", "", *failures, ""]
    return "\n".join(lines)


def write_table(out: Path, rows: Sequence[LeaderboardRow]) -> str:
    table = markdown_table(_latest_per_key(rows))
    (out / TABLE_NAME).write_text(table)
    return table


def _latest_per_key(rows: Sequence[LeaderboardRow]) -> list[LeaderboardRow]:
    latest: dict[tuple[str, str, int], LeaderboardRow] = {}
    for row in rows:
        if row.key in latest:
            print(f"warning: {row.key} appears twice in the CSV; the table uses the later row", file=sys.stderr)
        latest[row.key] = row
    return list(latest.values())


# ---------------------------------------------------------------------- the leaderboard
@dataclass
class LeaderboardOutcome:
    """What :func:`run_leaderboard` returns: every row of the CSV, the runs that failed (label, error), the entries
    skipped (name, reason), whether it was interrupted, and the table."""

    rows: list[LeaderboardRow]
    failed: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    interrupted: bool
    table: str


class LeaderboardError(ValueError):
    """The leaderboard cannot start: an output directory in the way, a CSV of other runs, no Ray."""


def _pending(config: LeaderboardConfig, entries: list[Entry], done: dict[tuple[str, str, int], LeaderboardRow],
             out: Path) -> list[RunSpec]:
    specs = []
    for entry in entries:
        episodes = config.episodes or entry.episodes
        for agent in config.agents:
            for seed in config.seeds:
                spec = RunSpec(entry, agent, seed, episodes, str(out), config.threads, config.tolerance)
                row = done.get(spec.key)
                if row is not None:
                    theirs = (row.env_id, row.target, row.resource, row.episode_budget)
                    if theirs != (entry.env, entry.target, entry.resource, episodes):
                        raise LeaderboardError(
                            f"the CSV's run {spec.label()} was made with (env, target, resource, episodes) {theirs}, "
                            f"this one asks for {(entry.env, entry.target, entry.resource, episodes)}: choose another --out"
                        )
                    continue
                if config.resume:
                    interrupted = sorted((out / RUNS_DIR).glob(f"{spec.prefix}__*/checkpoint.json"))
                    if interrupted:
                        spec = replace(spec, resume_dir=str(interrupted[-1].parent))
                specs.append(spec)
    return specs


def run_leaderboard(config: LeaderboardConfig) -> LeaderboardOutcome:
    """Run (or ``--resume``, or ``--table-only``) the leaderboard of ``config``; prints progress and the table.

    :raises LeaderboardError: an existing CSV without ``--resume``, a CSV of other runs, ``--ray`` without Ray
    """
    out = Path(config.out)
    csv_path = out / CSV_NAME
    if config.table_only:
        if not csv_path.exists():
            raise LeaderboardError(f"no {CSV_NAME} in {str(out)!r}: run the leaderboard first (or check --out)")
        rows = read_rows(csv_path)
        return LeaderboardOutcome(rows, [], [], False, write_table(out, rows))

    rows: list[LeaderboardRow] = []
    if csv_path.exists():
        if config.resume and _drop_partial_line(csv_path):
            print(f"resume: dropped an incomplete last line of {csv_path}")
        rows = read_rows(csv_path)
        if rows and not config.resume:
            raise LeaderboardError(
                f"{str(csv_path)!r} already holds {len(rows)} runs; pass --resume to complete it, or choose another --out"
            )
    entries, skipped = [], []
    for entry in config.selected_entries():
        why = entry.unavailable()
        if why is None:
            entries.append(entry)
        else:
            skipped.append((entry.name, why))
            print(f"skip {entry.name}: {why}")
    specs = _pending(config, entries, {r.key: r for r in rows}, out.resolve() if config.ray else out)
    total = len(entries) * len(config.agents) * len(config.seeds)
    where = f"Ray at {config.ray}" if config.ray else f"{config.workers} local worker(s)"
    print(f"leaderboard: suite {config.suite}, {len(entries)} entries x {len(config.agents)} agents x "
          f"{len(config.seeds)} seeds = {total} runs; {total - len(specs)} in the CSV, {len(specs)} to run on {where}",
          flush=True)

    failed: list[tuple[str, str]] = []
    interrupted = False
    writer = RecordWriter(csv_path, LeaderboardRow)
    finished = 0

    def handle(result: RunResult) -> None:
        nonlocal finished, interrupted
        finished += 1
        head = f"[{finished}/{len(specs)}] {result.spec.label()}"
        if result.note:
            print(f"{head}: {result.note}", flush=True)
        if result.interrupted:
            interrupted = True
            print(f"{head}: interrupted", flush=True)
            raise KeyboardInterrupt
        if result.error is not None:
            failed.append((result.spec.label(), result.error))
            print(f"{head}: FAILED\n{result.error}", file=sys.stderr, flush=True)
            return
        row = result.row
        writer.write(row)
        rows.append(row)
        if not config.keep_checkpoints:  # the row is on disk: the run's checkpoint is of no further use
            _drop_checkpoint(Path(result.spec.out) / row.run)
        found = "no recipe within the budget" if row.best_episode is None else (
            f"metric {row.metric:.4f}, {row.resource} {getattr(row, row.resource + '_ratio'):.4f}")
        print(f"{head}: {found}, {row.episodes} episodes in {row.walltime:.0f} s; validation {row.validation}",
              flush=True)

    try:
        if specs and config.ray is not None:
            _run_ray(specs, config.ray, config.threads, handle)
        elif specs:
            _run_local(specs, config.workers, config.threads, handle)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        writer.close()
    table = write_table(out, rows)
    return LeaderboardOutcome(rows, failed, skipped, interrupted, table)


def main(argv: list[str] | None = None) -> int:
    """0 when done, 1 when a run failed, 2 for bad options, 130 when interrupted (continue with ``--resume``)."""
    config = parse_args(argv)
    if config is None:
        return 0
    try:
        outcome = run_leaderboard(config)
    except (LeaderboardError, RuntimeError) as err:
        print(f"leaderboard: error: {err}", file=sys.stderr)
        return 2
    print()
    print(outcome.table)
    print(f"wrote {Path(config.out) / TABLE_NAME} ({len(outcome.rows)} runs in {Path(config.out) / CSV_NAME})")
    if outcome.interrupted:
        print(f"interrupted: run the same command with --resume to finish (--out {config.out})")
        return 130
    if outcome.failed:
        print(f"{len(outcome.failed)} run(s) failed: {', '.join(label for label, _ in outcome.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run as the importable module, so that workers and Ray unpickle RunSpec / execute_run by their real name.
    from benchmarks.leaderboard import main as _main

    sys.exit(_main())

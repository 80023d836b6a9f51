"""The leaderboard's options: one dataclass, each field the command-line flag of the same name (``_`` -> ``-``)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ajpq_env.fileio import loads_json
from benchmarks.leaderboard.entrants import Entrant, resolve_entrant
from benchmarks.leaderboard.finetuning import FinetuneBudget
from benchmarks.leaderboard.suites import SUITES, Entry, Suite

if TYPE_CHECKING:
    from agents.base import SearchAgent

__all__ = ["DEFAULT_AGENTS", "LeaderboardConfig", "listing", "parse_args"]

DEFAULT_AGENTS: tuple[str, ...] = ("td3-twolevel", "ddpg", "random", "uniform", "heuristic", "two-step")


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


def _list(default: Sequence[Any], help: str, **kwargs: Any) -> Any:
    return field(default_factory=lambda: list(default), metadata={"help": help, "nargs": "+", **kwargs})


@dataclass
class LeaderboardConfig:
    """Options of the leaderboard (programs may pass ``SearchAgent`` objects or factories in ``agents``).

    After construction ``seeds`` is the list of seeds, ``seed_choice`` says where they came from
    (``"held-out"``, ``"tuning"`` or ``"chosen"``) and ``entrants`` holds the resolved agents.
    """

    suite: str = _opt("default", "the suite of entries", choices=tuple(SUITES))
    entries: list[str] = _list((), "run only these entries of the suite (default: all of them)")
    agents: list[str | SearchAgent | Callable[[], SearchAgent]] = _list(
        DEFAULT_AGENTS, "agents: names of `ajpq search --list`, or module:attr of a SearchAgent written outside the "
        "package (see benchmarks/leaderboard/SUBMITTING.md)")
    seeds: list[int | str] | str = _list(("held-out",), "'held-out' (the suite's held-out seeds: what tables report), 'tuning' (the "
                       "seeds defaults may be tuned on) or seeds; each (entry, agent, seed) is one run")
    episodes: int | None = _opt(None, "episode budget of every run (default: each entry's)", type=int)
    finetune_epochs: int | None = _opt(
        None, "epochs of the equal fine-tune of each run's best recipe before its test metric (default: each "
        "entry's; 0: no fine-tune)", type=int)
    finetune_samples: int | None = _opt(
        None, "training samples per fine-tune epoch (default: each entry's; 0: the whole train split)", type=int)
    out: str = _opt("runs/leaderboard", "output directory: leaderboard.csv, leaderboard.md, runs/")
    resume: bool = _opt(False, "skip the runs already in the CSV; continue interrupted ones from their checkpoints")
    workers: int = _opt(1, "runs in parallel in local processes (spawn)", type=int)
    ray: str | None = _opt(None, "run on Ray: 'local' starts a private instance on 127.0.0.1 only; or the address "
                           "of a running cluster ('auto', 'host:6379', 'ray://host:10001')")
    ray_cpus: int | None = _opt(None, "--ray local: CPUs of the instance (default: Ray's choice, all of them)", type=int)
    ray_init: str | None = _opt(None, "JSON object of further ray.init() keyword arguments, e.g. "
                                "'{\"object_store_memory\": 200000000}'")
    threads: int = _opt(1, "torch CPU threads of each run", type=int)
    tolerance: float = _opt(1e-6, "largest difference of a replayed number that still validates", type=float)
    walltime_cutoff: float | None = _opt(
        None, "tables: the equal-wall-time ranking's cut-off in search seconds (default: per entry, the shortest "
        "mean search time of the agents that spent their whole episode budget)", type=float)
    keep_checkpoints: bool = _opt(False, "keep each finished run's last checkpoint (RL replay buffers: ~40 MB a run)")
    table_only: bool = _opt(False, "only (re)write the table from OUT/leaderboard.csv")
    seed_choice: str = field(default="", init=False, metadata={"cli": False})
    entrants: list[Entrant] = field(default_factory=list, init=False, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; valid suites: {', '.join(SUITES)}")
        suite = SUITES[self.suite]
        names = [e.name for e in suite.entries]
        unknown = [e for e in self.entries if e not in names]
        if unknown:
            raise ValueError(f"unknown entries {unknown} of suite {self.suite!r}; valid entries: {', '.join(names)}")
        self.entries = _unique(self.entries)
        self.seeds, self.seed_choice = _seeds(suite, self.seeds)
        for name, value, low in (("--workers", self.workers, 1), ("--threads", self.threads, 1),
                                 ("--episodes", self.episodes, 1), ("--ray-cpus", self.ray_cpus, 1),
                                 ("--finetune-epochs", self.finetune_epochs, 0),
                                 ("--finetune-samples", self.finetune_samples, 0)):
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.finetune_samples == 1:
            raise ValueError("--finetune-samples must be 0 (the whole train split) or >= 2 (BatchNorm needs 2 samples)")
        if self.walltime_cutoff is not None and not (math.isfinite(self.walltime_cutoff) and self.walltime_cutoff > 0):
            raise ValueError(f"--walltime-cutoff must be a positive number of seconds, got {self.walltime_cutoff}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"--tolerance must be a number >= 0, got {self.tolerance}")
        if self.ray is not None and self.workers > 1:
            raise ValueError("--ray and --workers > 1 exclude each other: Ray schedules the runs itself")
        if (self.ray_cpus is not None or self.ray_init is not None) and self.ray is None:
            raise ValueError("--ray-cpus and --ray-init are options of --ray; add --ray local (or a cluster address)")
        self.ray_options()  # a bad --ray-init is a usage error now, not after the first run
        if not self.agents:
            raise ValueError("--agents needs at least one agent")
        remote = self.workers > 1 or self.ray is not None
        self.entrants = _unique_by_name(resolve_entrant(a, picklable=remote) for a in self.agents)
        if self.episodes is not None and self.episodes < 2 and "two-step" in self.agent_names:
            raise ValueError(f"--episodes must be >= 2 with two-step (one episode per stage), got {self.episodes}")

    @property
    def agent_names(self) -> list[str]:
        return [e.name for e in self.entrants]

    def selected_entries(self) -> list[Entry]:
        return [e for e in SUITES[self.suite].entries if not self.entries or e.name in self.entries]

    def suite_spec(self) -> Suite:
        return SUITES[self.suite]

    def finetune_budget(self, entry: Entry) -> FinetuneBudget:
        """The equal fine-tune of ``entry``'s runs (the entry's, unless the options say otherwise)."""
        epochs = entry.finetune_epochs if self.finetune_epochs is None else self.finetune_epochs
        samples = entry.finetune_samples if self.finetune_samples is None else (self.finetune_samples or None)
        return FinetuneBudget(epochs, samples)

    def ray_options(self) -> dict[str, Any]:
        """Keyword arguments of ``ray.init`` from ``--ray-cpus`` and ``--ray-init``."""
        options: dict[str, Any] = {}
        if self.ray_init is not None:
            try:
                options = loads_json(self.ray_init)
            except json.JSONDecodeError as err:
                raise ValueError(f"--ray-init must be a JSON object, got {self.ray_init!r} ({err})") from None
            if not isinstance(options, dict):
                raise ValueError(f"--ray-init must be a JSON object, got {self.ray_init!r}")
        if self.ray_cpus is not None:
            options["num_cpus"] = self.ray_cpus
        return options


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _unique_by_name(entrants: Iterable[Entrant]) -> list[Entrant]:
    out: dict[str, Entrant] = {}
    for entrant in entrants:
        other = out.get(entrant.name)
        if other is not None and other != entrant:
            raise ValueError(f"two agents are named {entrant.name!r} ({other.label()} and {entrant.label()})")
        out.setdefault(entrant.name, entrant)
    return list(out.values())


def _seeds(suite: Suite, seeds: Any) -> tuple[list[int], str]:
    values = [seeds] if isinstance(seeds, (str, int)) else list(seeds)
    if len(values) == 1 and values[0] in ("held-out", "tuning"):
        return list(suite.seeds(values[0])), values[0]
    try:
        chosen = _unique(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"--seeds takes 'held-out', 'tuning' or integers, got {values}") from None
    if not chosen or any(s < 0 for s in chosen):
        raise ValueError(f"--seeds must be integers >= 0, got {values}")
    return chosen, "chosen"


def parse_args(argv: list[str] | None = None, *, description: str = "") -> LeaderboardConfig | None:
    """A :class:`LeaderboardConfig` from the command line (``None`` after ``--list``); bad input is a usage error."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard", description=description)
    for f in fields(LeaderboardConfig):
        meta = dict(f.metadata)
        if meta.get("cli") is False:
            continue
        flag, help_ = "--" + f.name.replace("_", "-"), meta["help"]
        if isinstance(f.default, bool):
            parser.add_argument(flag, action="store_true", help=help_)
        elif meta.get("nargs"):
            default = f.default_factory()  # type: ignore[misc]
            parser.add_argument(flag, nargs="+", default=default,
                                help=help_ + (f" (default: {' '.join(map(str, default))})" if default else ""))
        else:
            suffix = "" if f.default is None or "default" in help_ else f" (default: {f.default})"
            parser.add_argument(flag, type=meta.get("type", str), default=f.default, choices=meta.get("choices"),
                                help=help_ + suffix)
    parser.add_argument("--list", action="store_true", help="list the suites, their entries and seeds, and exit")
    args = vars(parser.parse_args(argv))
    if args.pop("list"):
        print(listing())
        return None
    try:
        return LeaderboardConfig(**args)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def listing() -> str:
    """The suites (entries, seeds, fine-tune budgets, what is skipped here) and the registry's agents."""
    from agents.registry import agent_names

    lines = []
    for suite in SUITES.values():
        lines.append(f"suite {suite.name}: {suite.description}")
        lines.append(f"  seeds: tuning {' '.join(map(str, suite.tuning_seeds))}; held-out (tables) "
                     f"{' '.join(map(str, suite.heldout_seeds))}")
        for e in suite.entries:
            why = e.unavailable()
            ft = FinetuneBudget(e.finetune_epochs, e.finetune_samples).describe()
            lines.append(f"  {e.name:36s} {e.env:28s} {e.episodes:4d} episodes, fine-tune {ft}"
                         + (f"  [skipped: {why}]" if why else ""))
    lines.append(f"agents: {', '.join(agent_names())} (default: {' '.join(DEFAULT_AGENTS)}); or module:attr")
    return "\n".join(lines)

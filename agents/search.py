"""``ajpq search``: search a compression policy with an RL agent or a baseline, with checkpoints and resume.

    ajpq search --env AJPQ-MobileNet-v0 --algo td3-twolevel --episodes 150 --target 0.125 --seed 0
    ajpq search --env AJPQ-MobileNet-v0 --algo uniform --episodes 150 --out runs/uniform
    ajpq search --out runs/demo --resume ...          # same options: continues where the run stopped

``--env`` takes a registered id (``ajpq envs``) or ``synthetic[-prune|-quant][:<model>]``, a tiny env on random
data and a randomly initialised model (``ajpq_env.tasks.synthetic_task``; for tests and demos). ``--algo``
takes any name of :func:`agents.registry.agent_names`. Every finished episode is appended to
``<out>/episodes.csv`` (an :class:`~ajpq_env.records.EpisodeRecord` row) as it ends; ``<out>/best_recipe.json``
holds the best recipe within the budget; TensorBoard logs go to ``<out>/tb`` (SB3's logger); checkpoints
(:mod:`agents.checkpoint`) are written every ``--checkpoint-every`` episodes and at the end. Without ``--out``
the run directory is ``runs/<env>__<algo>__s<seed>__<time>``. Programs call :func:`run_search` with a
:class:`SearchConfig` (and optionally their own env factory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.logger import configure as configure_logger
from stable_baselines3.common.utils import set_random_seed
from tqdm.auto import tqdm

from agents.base import SearchAgent, SearchHooks, better
from agents.checkpoint import (
    CheckpointError,
    Manifest,
    count_rows,
    load_rng,
    read_manifest,
    restore_rng,
    truncate_rows,
    write_checkpoint,
)
from agents.registry import ALGORITHMS, ALIASES, DEFAULT_ALGO, agent_names, make_agent, parse_hyperparam
from agents.schedule import SearchSchedule
from ajpq_env.compression import Policy
from ajpq_env.records import EpisodeRecord, RecordWriter

__all__ = ["SearchConfig", "SearchOutcome", "main", "make_env", "parse_args", "run_search"]


# ---------------------------------------------------------------------- configuration
def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class SearchConfig:
    """Options of ``ajpq search``; each field is the command-line flag of the same name (``_`` -> ``-``)."""

    env: str = _opt("AJPQ-MobileNet-v0", "a registered env id, or synthetic[-prune|-quant][:<model>] (tiny, random data)")
    algo: str = _opt(DEFAULT_ALGO, "agent: an algorithm of the registry or a baseline (see --list)")
    episodes: int = _opt(150, "episode budget of the whole run (one episode = one compression policy)")
    target: float | None = _opt(None, "budget as a ratio of the FP32 model's resource (default: the env's)")
    resource: str | None = _opt(None, "budgeted resource (default: the env's)", choices=("size", "bitops", "macs"))
    seed: int = _opt(0, "seed of the agent and of every global generator")
    out: str | None = _opt(None, "run directory (default runs/<env>__<algo>__s<seed>__<time>)")
    resume: bool = _opt(False, "continue the run in --out from its latest checkpoint (same options)")
    checkpoint_every: int = _opt(10, "episodes between checkpoints (one is also written at the end)")
    warmup_episodes: int | None = _opt(None, "episodes of random actions before learning (default min(5, episodes // 5))")
    noise_sigma: float = _opt(0.2, "initial sigma of the truncated-normal exploration noise (0: the YAML's noise)")
    noise_decay: float = _opt(0.98, "per-episode decay of the noise's sigma")
    gamma: float = _opt(1.0, "discount factor (the schedule's gamma = 1)")
    credit: bool = _opt(True, "store every step of an episode with its final reward (off-policy algorithms)")
    schedule: bool = _opt(True, "apply the AMC/HAQ schedule; --no-schedule runs the YAML hyperparameters as RL Zoo would")
    stage_algo: str = _opt("ddpg", "two-step only: the agent of both stages")
    prune_target: float | None = _opt(None, "two-step only: the prune stage's budget ratio (default: geometric split)")
    hyperparams: list[str] = field(
        default_factory=list, metadata={"help": "hyperparameter overrides KEY=VALUE (Python literals, RL-Zoo style)"}
    )
    hyperparams_path: str | None = _opt(None, "YAML directory or file instead of agents/hyperparams")
    env_kwargs: str | None = _opt(None, "JSON object of extra env arguments, e.g. '{\"finetune_steps\": 10}'")
    progress: bool = _opt(True, "show a progress bar")
    verbose: int = _opt(0, "Stable-Baselines3 verbosity")
    device: str = _opt("cpu", "torch device of the agent")
    threads: int | None = _opt(None, "torch CPU threads (default: torch's choice)")

    #: options a resume must repeat
    IDENTITY: typing.ClassVar[tuple[str, ...]] = (
        "env", "algo", "target", "resource", "seed", "warmup_episodes", "noise_sigma", "noise_decay", "gamma",
        "credit", "schedule", "stage_algo", "prune_target", "hyperparams", "hyperparams_path", "env_kwargs",
    )

    def __post_init__(self) -> None:
        self.algo = ALIASES.get(self.algo, self.algo)
        if self.algo not in agent_names():
            raise ValueError(f"unknown agent {self.algo!r}; valid names: {', '.join(agent_names())}")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.resume and self.out is None:
            raise ValueError("--resume needs --out, the run directory to continue")
        for item in self.hyperparams:
            if "=" not in item:
                raise ValueError(f"--hyperparams takes KEY=VALUE items, got {item!r}")

    def identity(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.IDENTITY}

    def search_schedule(self) -> SearchSchedule:
        if not self.schedule:
            return SearchSchedule.off()
        warmup = self.warmup_episodes if self.warmup_episodes is not None else min(5, self.episodes // 5)
        return SearchSchedule(
            warmup_episodes=warmup, noise_sigma=self.noise_sigma or None, noise_decay=self.noise_decay,
            gamma=self.gamma, credit_final_reward=self.credit,
        )

    def hyperparam_overrides(self) -> dict[str, Any]:
        return {key: parse_hyperparam(value) for key, _, value in (item.partition("=") for item in self.hyperparams)}


def _flag_type(hint: Any) -> Any:
    """The argparse type of a field's hint (``X | None`` -> ``X``)."""
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def parse_args(argv: list[str] | None = None) -> SearchConfig:
    """A :class:`SearchConfig` from the command line (``ValueError``s of the config become usage errors)."""
    parser = argparse.ArgumentParser(prog="ajpq search", description=__doc__.split("\n\n")[0].replace("``", ""))
    hints = typing.get_type_hints(SearchConfig)
    for f in fields(SearchConfig):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        hint = hints[f.name]
        if "default" not in meta["help"] and not any(f.default is v for v in (None, False, dataclasses.MISSING)):
            meta["help"] += f" (default: {f.default})"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=meta["help"])
        elif typing.get_origin(hint) is list:
            parser.add_argument(flag, nargs="*", default=[], metavar="KEY=VALUE", help=meta["help"])
        else:
            parser.add_argument(flag, type=_flag_type(hint), default=f.default, help=meta["help"],
                                choices=meta.get("choices"))
    parser.add_argument("--list", action="store_true", help="list the agents and exit")
    args = vars(parser.parse_args(argv))
    if args.pop("list"):
        _print_agents()
        raise SystemExit(0)
    try:
        return SearchConfig(**args)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def _print_agents() -> None:
    from agents.baselines import BASELINES

    table = Table(title="agents of ajpq search")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("description")
    for name, spec in ALGORITHMS.items():
        table.add_row(name + (" (default)" if name == DEFAULT_ALGO else ""), "RL", spec.description)
    for name, cls in BASELINES.items():
        table.add_row(name, "baseline", cls.description)
    Console().print(table)


# ---------------------------------------------------------------------- env and agent
def make_env(config: SearchConfig) -> gym.Env:
    """The env of ``config``: ``gym.make(id, ...)``, or the synthetic env for ``synthetic[-prune|-quant][:<model>]``."""
    kwargs: dict[str, Any] = json.loads(config.env_kwargs) if config.env_kwargs else {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"--env-kwargs must be a JSON object, got {config.env_kwargs!r}")
    if config.target is not None:
        kwargs["target"] = config.target
    if config.resource is not None:
        kwargs["resource"] = config.resource
    stem, _, model = config.env.partition(":")
    if stem in ("synthetic", "synthetic-prune", "synthetic-quant"):
        from ajpq_env import AJPQEnv
        from ajpq_env.tasks import synthetic_task

        mode = {"synthetic": "joint", "synthetic-prune": "prune", "synthetic-quant": "quant"}[stem]
        return AJPQEnv(synthetic_task(model or "mobilenet_v2"), **{"mode": mode, **kwargs})
    import ajpq_env  # noqa: F401  (registers the ids)

    if config.env not in gym.registry:
        ids = sorted(i for i in gym.registry if i.startswith("AJPQ"))
        raise ValueError(f"unknown env {config.env!r}; registered AJPQ ids: {', '.join(ids)}; or synthetic[:<model>]")
    return gym.make(config.env, **kwargs)


def build_agent(config: SearchConfig, out: Path) -> SearchAgent:
    """The agent of ``config`` with its options (schedule, hyperparameters, TensorBoard directory)."""
    from agents.baselines import BASELINES

    rl = {
        "schedule": config.search_schedule(), "hyperparams": config.hyperparam_overrides(),
        "hyperparams_path": config.hyperparams_path, "tensorboard_log": str(out / "tb"),
        "verbose": config.verbose, "device": config.device,
    }
    if config.algo in ALGORITHMS:
        return make_agent(config.algo, **rl)
    if config.algo == "two-step":
        stage = ALIASES.get(config.stage_algo, config.stage_algo)
        return make_agent("two-step", stage_algo=stage, prune_target=config.prune_target,
                          **(rl if stage in ALGORITHMS else {}))
    assert config.algo in BASELINES
    return make_agent(config.algo)


# ---------------------------------------------------------------------- the run: what happens at each episode
class SearchRun(SearchHooks):
    """Writes each episode (CSV, TensorBoard, progress bar, best recipe) and checkpoints at safe points."""

    def __init__(self, config: SearchConfig, out: Path, env: gym.Env, start: Manifest | None) -> None:
        self.config, self.out = config, out
        budget = env.unwrapped.budget
        self.target, self.resource = budget.target, budget.resource
        self.episodes = start.episodes if start else 0
        self.best = EpisodeRecord.from_row(start.best) if start and start.best else None
        self.checkpointed = self.episodes if start else -1
        self.walltime_before = start.walltime if start else 0.0
        self.started = time.perf_counter()
        self.extra_callback: Callable[[EpisodeRecord], None] | None = None
        self.writer = RecordWriter(out / "episodes.csv")
        self.logger = configure_logger(str(out / "tb" / "search"), ["tensorboard"])
        self.bar = tqdm(total=config.episodes, initial=self.episodes, unit="ep", desc=config.algo,
                        disable=not config.progress, dynamic_ncols=True)
        self._show_best()

    @property
    def walltime(self) -> float:
        return self.walltime_before + time.perf_counter() - self.started

    def on_episode(self, record: EpisodeRecord) -> None:
        if record.episode != self.episodes:
            raise RuntimeError(f"episode {record.episode} reported, {self.episodes} expected: this is a bug")
        self.writer.write(record)
        self.episodes += 1
        if better(record, self.best, self.target, self.resource):
            self.best = record
            _atomic_write(self.out / "best_recipe.json", Policy.from_dict(record.recipe).to_json(indent=1))
        for key in ("metric", "reward", "size_ratio", "macs_ratio", "bitops_ratio", "walltime"):
            self.logger.record(f"search/{key}", getattr(record, key))
        if self.best is not None:
            self.logger.record("search/best_metric", self.best.metric)
        self.logger.dump(step=record.episode)
        self.bar.update(1)
        self._show_best()
        if self.extra_callback is not None:
            self.extra_callback(record)

    def on_safe_point(self, agent: SearchAgent) -> None:
        due = self.episodes - max(self.checkpointed, 0) >= self.config.checkpoint_every or agent.done
        if self.episodes != self.checkpointed and due:
            manifest = Manifest(self.episodes, self.config.identity(), "", self.best.to_row() if self.best else None,
                                self.walltime)
            write_checkpoint(self.out, agent, manifest)
            self.checkpointed = self.episodes

    def _show_best(self) -> None:
        if self.best is not None:
            self.bar.set_postfix(best=f"{self.best.metric:.4f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.logger.close()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the search
@dataclass
class SearchOutcome:
    """What :func:`run_search` returns: the run directory, episodes in ``episodes.csv``, the best record under the
    budget, total wall time over all sessions, and whether this session was interrupted."""

    out: Path
    episodes: int
    best: EpisodeRecord | None
    walltime: float
    interrupted: bool = False


def default_out(config: SearchConfig) -> Path:
    """``runs/<env>__<algo>__s<seed>__<YYYYmmdd-HHMMSS>``."""
    env = config.env.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{env}__{config.algo}__s{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def run_search(
    config: SearchConfig,
    *,
    env_factory: Callable[[SearchConfig], gym.Env] | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
) -> SearchOutcome:
    """Run (or, with ``config.resume``, continue) the search of ``config``.

    :param env_factory: builds the env from the config (default :func:`make_env`)
    :param on_episode: called after each episode is written (e.g. to stop a run from a program or a test by
        raising ``KeyboardInterrupt``, which ends the session as Ctrl-C does)
    :raises CheckpointError: ``--resume`` of a missing, corrupt or mismatched checkpoint (nothing is touched)
    :raises ValueError: a bad option, or a new search into a directory that already holds one
    """
    out = Path(config.out) if config.out else default_out(config)
    csv_path = out / "episodes.csv"
    manifest: Manifest | None = None
    if config.resume:
        manifest = read_manifest(out, config.identity())
        if manifest.episodes > config.episodes:
            raise CheckpointError(
                f"the checkpoint has {manifest.episodes} episodes, more than --episodes {config.episodes}"
            )
        rows = count_rows(csv_path)
        if rows < manifest.episodes:
            raise CheckpointError(
                f"{str(csv_path)!r} has {rows} rows but the checkpoint has {manifest.episodes} episodes: the run "
                "directory was modified; start a new search"
            )
    elif csv_path.exists() or (out / "checkpoint.json").exists():
        raise ValueError(f"{str(out)!r} already holds a search; pass --resume to continue it, or choose another --out")

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    set_random_seed(config.seed)
    env = (env_factory or make_env)(config)
    agent = build_agent(config, out)
    agent.setup(env, episodes=config.episodes, seed=config.seed)
    if manifest is not None:
        rng = load_rng(out, manifest)
        try:
            agent.load(out / manifest.directory / "agent")
        except (ValueError, OSError) as err:
            raise CheckpointError(f"corrupt checkpoint in {str(out)!r}: {err}") from None
        if agent.episodes_done != manifest.episodes:
            raise CheckpointError(
                f"corrupt checkpoint: the agent state has {agent.episodes_done} episodes, the manifest {manifest.episodes}"
            )
        restore_rng(rng)
        # Everything is loaded: only now drop the rows written after the checkpoint and restore its best recipe.
        truncate_rows(csv_path, manifest.episodes)
        if manifest.best:
            _atomic_write(out / "best_recipe.json", json.dumps(json.loads(manifest.best["recipe"]), indent=1))
        else:
            (out / "best_recipe.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    run = SearchRun(config, out, env, manifest)
    run.extra_callback = on_episode
    interrupted = False
    try:
        agent.run(run)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        run.close()
        env.close()
    return SearchOutcome(out, run.episodes, run.best, run.walltime, interrupted)


def summary_table(config: SearchConfig, outcome: SearchOutcome) -> Table:
    """The end-of-run table (rich)."""
    table = Table(title=f"ajpq search: {config.algo} on {config.env}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    best = outcome.best
    rows = [
        ("episodes", f"{outcome.episodes} / {config.episodes}" + (" (interrupted)" if outcome.interrupted else "")),
        ("seed", str(config.seed)),
        ("best metric", "none within the budget" if best is None else f"{best.metric:.4f} (episode {best.episode})"),
    ]
    if best is not None:
        rows += [
            ("fp32 metric", f"{best.fp32_metric:.4f}"),
            ("budget", f"{best.target:g} of {best.resource}"),
            ("size / MACs / BitOPs", f"{best.size_ratio:.4f} / {best.macs_ratio:.4f} / {best.bitops_ratio:.4f}"),
        ]
    rows += [("wall time", f"{outcome.walltime:.1f} s"), ("run directory", str(outcome.out))]
    for key, value in rows:
        table.add_row(key, value)
    return table


def main(argv: list[str] | None = None) -> int:
    """``ajpq search``: 0 when done, 130 when interrupted (resume with ``--resume``), 2 for bad options."""
    config = parse_args(argv)
    console = Console()
    try:
        outcome = run_search(config)
    except (CheckpointError, ValueError) as err:
        print(f"ajpq search: error: {err}", file=sys.stderr)
        return 2
    console.print(summary_table(config, outcome))
    if outcome.interrupted:
        console.print(f"interrupted: run the same command with --resume --out {outcome.out} to continue", highlight=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

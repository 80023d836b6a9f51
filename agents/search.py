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

A new search starts only in a new or empty folder, and marks it as its run folder (``ajpq-run.json``, with the
run's resolved options). ``--resume`` continues a run folder from its latest checkpoint, or from episode 0 when
it was stopped before its first one; it compares resolved options (``--target 0.125`` equals an unset target
whose env default is 0.125) and keeps the schedule of the first session: an unset ``--warmup-episodes`` takes
the stored warm-up length whatever ``--episodes`` now says. Every option is checked before the env or agent
loads (:mod:`agents.preflight`), and the checkpoint before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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

from agents import preflight
from agents.base import SearchAgent, SearchHooks, better
from agents.checkpoint import (
    CheckpointError,
    Manifest,
    check_csv_prefix,
    check_new_run_folder,
    compare_identity,
    load_rng,
    read_manifest,
    read_run_marker,
    restore_rng,
    truncate_rows,
    write_checkpoint,
    write_run_marker,
)
from agents.guide import GuideSettings
from agents.registry import ALGORITHMS, ALIASES, DEFAULT_ALGO, agent_names, make_agent, parse_hyperparam
from agents.schedule import SearchSchedule
from ajpq_env.compression import Policy
from ajpq_env.fileio import atomic_write, loads_json
from ajpq_env.records import EpisodeRecord, RecordWriter

__all__ = ["SearchConfig", "SearchOutcome", "check_options", "main", "make_env", "parse_args", "run_search"]


# ---------------------------------------------------------------------- configuration
def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class SearchConfig:
    """Options of ``ajpq search``; each field is the command-line flag of the same name (``_`` -> ``-``)."""

    env: str = _opt("AJPQ-MobileNet-v0", "a registered env id, or synthetic[-prune|-quant][:<model>] (tiny, random data)")
    algo: str = _opt(DEFAULT_ALGO, "agent: an algorithm of the registry or a baseline (see --list)")
    episodes: int = _opt(150, "episode budget of the whole run (one episode = one compression policy), at most 10^7")
    target: float | None = _opt(None, "budget as a ratio of the FP32 model's resource (default: the env's)")
    resource: str | None = _opt(None, "budgeted resource (default: the env's)", choices=("size", "bitops", "macs"))
    seed: int = _opt(0, "seed of the agent and of every global generator")
    out: str | None = _opt(None, "run directory (default runs/<env>__<algo>__s<seed>__<time>)")
    resume: bool = _opt(False, "continue the run in --out from its latest checkpoint, or from 0 (same options)")
    checkpoint_every: int = _opt(10, "episodes between checkpoints (one is also written at the end)")
    warmup_episodes: int | None = _opt(None, "episodes of random actions before learning (default min(5, episodes // 5))")
    noise_sigma: float = _opt(0.2, "initial sigma of the truncated-normal exploration noise (0: the YAML's noise)")
    noise_decay: float = _opt(0.98, "per-episode decay of the noise's sigma")
    gamma: float = _opt(1.0, "discount factor (the schedule's gamma = 1)")
    credit: bool = _opt(True, "store every step of an episode with its final reward (off-policy algorithms)")
    schedule: bool = _opt(True, "apply the AMC/HAQ schedule; --no-schedule runs the YAML hyperparameters as RL Zoo would")
    guide: bool = _opt(True, "prior-guided search for the guided agents (td3-twolevel, ddpg-twolevel): prior "
                             "episodes from non-learning rules, behaviour cloning, exploitation around the best")
    guide_priors: str = _opt("sensitivity,heuristic,uniform", "comma-separated rules whose plans open a guided search "
                                                             "(sensitivity, heuristic, uniform; empty: none)")
    exploit_fraction: float = _opt(0.3, "guided search: fraction of the episodes, at the end, spent around the best")
    bc_steps: int = _opt(GuideSettings.bc_steps, "guided search: behaviour-cloning steps of the actor on the best "
                                                 "episode before learning (0: off)")
    exploit_sigma: float = _opt(GuideSettings.exploit_sigma, "guided search: standard deviation of the exploitation "
                                                             "noise, in action units, in (0, 2]")
    exploit_layers: float = _opt(GuideSettings.exploit_layers, "guided search: fraction of the layers an exploitation "
                                                               "episode perturbs, in (0, 1]")
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
    threads: int | None = _opt(None, "torch CPU threads, >= 1 (default: torch's choice)")

    #: options a resume must repeat (compared as resolved values: see :meth:`identity`)
    IDENTITY: typing.ClassVar[tuple[str, ...]] = (
        "env", "algo", "target", "resource", "seed", "warmup_episodes", "noise_sigma", "noise_decay", "gamma",
        "credit", "schedule", "guide", "guide_priors", "exploit_fraction", "bc_steps", "exploit_sigma",
        "exploit_layers", "stage_algo", "prune_target", "hyperparams", "hyperparams_path", "env_kwargs",
    )
    #: the resolved options known only once the env is built (its default budget)
    ENV_RESOLVED: typing.ClassVar[tuple[str, ...]] = ("target", "resource")
    MAX_EPISODES: typing.ClassVar[int] = 10**7
    MAX_THREADS: typing.ClassVar[int] = 1024

    def __post_init__(self) -> None:
        self.algo = ALIASES.get(self.algo, self.algo)
        if self.algo not in agent_names():
            raise ValueError(f"unknown agent {self.algo!r}; valid names: {', '.join(agent_names())}")
        self.stage_algo = ALIASES.get(self.stage_algo, self.stage_algo)
        if self.stage_algo not in agent_names() or self.stage_algo == "two-step":
            raise ValueError(f"--stage-algo: unknown agent {self.stage_algo!r}; valid names: {', '.join(agent_names())}")
        _check_int("--episodes", self.episodes, 1, self.MAX_EPISODES)
        _check_int("--checkpoint-every", self.checkpoint_every, 1, self.MAX_EPISODES)
        if self.warmup_episodes is not None:
            _check_int("--warmup-episodes", self.warmup_episodes, 0, self.MAX_EPISODES)
        if self.threads is not None:
            _check_int("--threads", self.threads, 1, self.MAX_THREADS)
        _check_int("--seed", self.seed, 0, 2**32 - 1)
        _check_int("--verbose", self.verbose, 0, 2)
        _check_int("--bc-steps", self.bc_steps, 0, 10**6)
        for name, value, low, high, low_open in (
            ("--target", self.target, 0.0, 1.0, True), ("--prune-target", self.prune_target, 0.0, 1.0, True),
            ("--noise-sigma", self.noise_sigma, 0.0, 10.0, False), ("--noise-decay", self.noise_decay, 0.0, 1.0, True),
            ("--gamma", self.gamma, 0.0, 1.0, False), ("--exploit-fraction", self.exploit_fraction, 0.0, 0.99, False),
            ("--exploit-sigma", self.exploit_sigma, 0.0, 2.0, True), ("--exploit-layers", self.exploit_layers, 0.0, 1.0, True),
        ):
            above_low = value is not None and (value > low if low_open else value >= low)
            if value is not None and not (math.isfinite(value) and above_low and value <= high):
                interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
                raise ValueError(f"{name} must be a number in {interval}, got {value}")
        if self.resume and self.out is None:
            raise ValueError("--resume needs --out, the run directory to continue")
        self.guide_settings()  # unknown prior names are usage errors
        for item in self.hyperparams:
            if "=" not in item or not item.partition("=")[0].strip():
                raise ValueError(f"--hyperparams takes KEY=VALUE items, got {item!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(f"--device: {self.device!r} is not a torch device (e.g. cpu, cuda, cuda:0)") from None

    def resolved_warmup(self) -> int | None:
        """The warm-up length the schedule uses (``None``: schedule off)."""
        if not self.schedule:
            return None
        return self.warmup_episodes if self.warmup_episodes is not None else min(5, self.episodes // 5)

    def identity(self, env: gym.Env | None = None) -> dict[str, Any]:
        """The options a resume must repeat, as resolved values: aliases resolved, the warm-up length, the parsed
        ``--env-kwargs`` and ``--hyperparams``, and (given the built ``env``) its budget's target and resource."""
        identity = {key: getattr(self, key) for key in self.IDENTITY}
        identity["warmup_episodes"] = self.resolved_warmup()
        identity["noise_sigma"] = self.noise_sigma if self.schedule and self.noise_sigma else None
        identity["env_kwargs"] = loads_json(self.env_kwargs) if self.env_kwargs else {}
        identity["hyperparams"] = {k.strip(): repr(v) for k, v in self.hyperparam_overrides().items()}
        identity["hyperparams_path"] = str(Path(self.hyperparams_path).resolve()) if self.hyperparams_path else None
        for key in ("bc_steps", "exploit_sigma", "exploit_layers"):
            if getattr(self, key) == getattr(GuideSettings, key):  # the default: runs made before the option resume
                identity[key] = None
        if self.algo != "two-step":
            identity["stage_algo"] = identity["prune_target"] = None
        if env is not None:
            budget = env.unwrapped.budget
            identity["target"], identity["resource"] = float(budget.target), str(budget.resource)
        return identity

    def search_schedule(self) -> SearchSchedule:
        if not self.schedule:
            return SearchSchedule.off()
        return SearchSchedule(
            warmup_episodes=self.resolved_warmup(), noise_sigma=self.noise_sigma or None,
            noise_decay=self.noise_decay, gamma=self.gamma, credit_final_reward=self.credit,
        )

    def guide_settings(self) -> GuideSettings:
        """The prior-guided search of ``--guide``, ``--guide-priors``, ``--exploit-*`` and ``--bc-steps``."""
        if not self.guide:
            return GuideSettings.off()
        priors = tuple(p.strip() for p in self.guide_priors.split(",") if p.strip())
        try:
            return GuideSettings(priors=priors, exploit_fraction=self.exploit_fraction, bc_steps=self.bc_steps,
                                 exploit_sigma=self.exploit_sigma, exploit_layers=self.exploit_layers)
        except ValueError as err:
            raise ValueError(f"--guide-priors / --exploit-fraction: {err}") from None

    def hyperparam_overrides(self) -> dict[str, Any]:
        return {key.strip(): parse_hyperparam(value) for key, _, value in (item.partition("=") for item in self.hyperparams)}


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high:,}, got {value}")


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
    kwargs = preflight.env_kwargs(config.env, config.env_kwargs)
    if config.target is not None:
        kwargs["target"] = config.target
    if config.resource is not None:
        kwargs["resource"] = config.resource
    stem, _, model = config.env.partition(":")
    if stem in preflight.SYNTHETIC_STEMS:
        from ajpq_env import AJPQEnv
        from ajpq_env.tasks import synthetic_task

        return AJPQEnv(synthetic_task(model or "mobilenet_v2"), **{"mode": preflight.SYNTHETIC_STEMS[stem], **kwargs})
    preflight.check_env(config.env, kwargs)
    return gym.make(config.env, **kwargs)


def check_options(config: SearchConfig) -> None:
    """Every check of ``config`` that needs no env, model or agent (see :mod:`agents.preflight`)."""
    kwargs = preflight.env_kwargs(config.env, config.env_kwargs)
    preflight.check_env(config.env, kwargs)
    preflight.check_agent(config.algo, config.stage_algo, config.hyperparam_overrides(), config.hyperparams_path)


def build_agent(config: SearchConfig, out: Path) -> SearchAgent:
    """The agent of ``config`` with its options (schedule, hyperparameters, TensorBoard directory)."""
    from agents.baselines import BASELINES

    rl = {
        "schedule": config.search_schedule(), "hyperparams": config.hyperparam_overrides(),
        "hyperparams_path": config.hyperparams_path, "tensorboard_log": str(out / "tb"),
        "verbose": config.verbose, "device": config.device,
    }
    if config.algo in ALGORITHMS:
        guided = ALGORITHMS[config.algo].guided
        return make_agent(config.algo, **rl, **({"guide": config.guide_settings()} if guided else {}))
    if config.algo == "two-step":
        stage = ALIASES.get(config.stage_algo, config.stage_algo)
        guided = stage in ALGORITHMS and ALGORITHMS[stage].guided  # --guide* options reach guided stage agents
        return make_agent("two-step", stage_algo=stage, prune_target=config.prune_target,
                          **(rl if stage in ALGORITHMS else {}), **({"guide": config.guide_settings()} if guided else {}))
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
        self.identity: dict[str, Any] = {}  # what the run marker holds; every checkpoint repeats it
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
            atomic_write(self.out / "best_recipe.json", Policy.from_dict(record.recipe).to_json(indent=1))
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
            manifest = Manifest(self.episodes, self.identity, "", self.best.to_row() if self.best else None,
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


@dataclass
class _Resume:
    """What a resume starts from, all read and checked before anything is written."""

    config: SearchConfig
    stored: dict[str, Any]
    manifest: Manifest | None


def _prepare_resume(config: SearchConfig, out: Path) -> _Resume:
    """Read and check the run folder's marker, manifest, checkpoint files and kept CSV rows; compare the options
    known without the env. Writes nothing.

    :raises CheckpointError: nothing to resume, a damaged run folder, or other options
    """
    stored = read_run_marker(out)
    if config.warmup_episodes is None and config.schedule and isinstance(stored.get("warmup_episodes"), int):
        # the schedule is the first session's, whatever --episodes now says
        config = dataclasses.replace(config, warmup_episodes=stored["warmup_episodes"])
    now = config.identity()
    compare_identity(stored, now, out, tuple(k for k in now if k not in SearchConfig.ENV_RESOLVED))
    if config.algo == "two-step" and stored.get("episodes") != config.episodes:
        raise CheckpointError(
            f"two-step splits its episode budget between its stages when the run starts; {str(out)!r} was started "
            f"with --episodes {stored.get('episodes')}: resume it with that budget"
        )
    manifest = read_manifest(out)
    if manifest is not None:
        if _jsonable(manifest.identity) != _jsonable(stored):
            raise CheckpointError(f"corrupt checkpoint in {str(out)!r}: its options differ from the run marker's")
        if manifest.episodes > config.episodes:
            raise CheckpointError(
                f"the checkpoint has {manifest.episodes} episodes, more than --episodes {config.episodes}"
            )
    rows = check_csv_prefix(out / "episodes.csv", manifest.episodes if manifest else 0)
    if manifest is not None and manifest.best is not None and rows[int(manifest.best["episode"])] != manifest.best:
        raise CheckpointError(
            f"corrupt checkpoint: its best record (episode {manifest.best['episode']}) differs from that row of "
            f"{str(out / 'episodes.csv')!r}"
        )
    return _Resume(config, stored, manifest)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _custom_agent(agent: SearchAgent | Callable[[], SearchAgent], config: SearchConfig) -> tuple[SearchAgent, SearchConfig]:
    """The agent given to :func:`run_search` and ``config`` relabelled with its name (schedule off)."""
    built = agent if isinstance(agent, SearchAgent) else agent() if callable(agent) else agent
    if not isinstance(built, SearchAgent):
        raise TypeError(f"agent= takes a SearchAgent or a zero-argument factory of one, got {type(built).__name__}")
    if built.name in agent_names() or built.name in ALIASES:
        raise ValueError(f"agent= is named {built.name!r}, a name of the registry: give the agent another name")
    config = dataclasses.replace(config, schedule=False)
    config.algo = built.name  # a label from here on (not a registry name, so not re-validated)
    return built, config


def run_search(
    config: SearchConfig,
    *,
    env_factory: Callable[[SearchConfig], gym.Env] | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
    agent: SearchAgent | Callable[[], SearchAgent] | None = None,
) -> SearchOutcome:
    """Run (or, with ``config.resume``, continue) the search of ``config``.

    Order: the options are checked (no env yet), then the run folder (a new search needs a new or empty
    folder; a resume reads and checks its whole checkpoint), then the env and agent are built and the
    checkpoint's state loaded into them; only then is anything written.

    :param env_factory: builds the env from the config (default :func:`make_env`)
    :param on_episode: called after each episode is written (e.g. to stop a run from a program or a test by
        raising ``KeyboardInterrupt``, which ends the session as Ctrl-C does)
    :param agent: an agent from outside the registry, searched with instead of ``config.algo``'s: a
        :class:`~agents.base.SearchAgent` not yet set up, or a zero-argument factory of one. Its ``name`` (not a
        registry name) replaces ``config.algo`` in the run's name and recorded options, so a resume needs an agent
        of the same name; the AMC/HAQ schedule options (``--warmup-episodes``...) are for the registry's agents.
    :raises CheckpointError: ``--resume`` of a missing, corrupt or mismatched run folder (nothing is touched)
    :raises ValueError: a bad option, or a new search into a folder that is not new or empty (nothing is touched)
    """
    custom = None
    if agent is not None:
        custom, config = _custom_agent(agent, config)
    out = Path(config.out) if config.out else default_out(config)
    if env_factory is None:
        check_options(config)
    resume = _prepare_resume(config, out) if config.resume else None
    if resume is None:
        check_new_run_folder(out)
    else:
        config = resume.config
    manifest = resume.manifest if resume else None

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    set_random_seed(config.seed)
    env = (env_factory or make_env)(config)
    try:
        identity = config.identity(env)
        if resume is not None:
            compare_identity(resume.stored, identity, out, SearchConfig.ENV_RESOLVED)
        agent = custom if custom is not None else build_agent(config, out)
        agent.setup(env, episodes=config.episodes, seed=config.seed)
        if manifest is not None:
            rng = load_rng(out, manifest)
            try:
                agent.load(out / manifest.directory / "agent")
            except Exception as err:  # noqa: BLE001 (a damaged state can fail anywhere in the agent; nothing is written yet)
                raise CheckpointError(f"corrupt checkpoint in {str(out)!r}: {err}") from None
            if agent.episodes_done != manifest.episodes:
                raise CheckpointError(
                    f"corrupt checkpoint: the agent state has {agent.episodes_done} episodes, the manifest "
                    f"{manifest.episodes}"
                )
            restore_rng(rng)
    except BaseException:
        env.close()
        raise

    # Everything is checked and loaded: only now write.
    if resume is None:
        write_run_marker(out, {**identity, "episodes": config.episodes})
    else:  # drop the rows written after the checkpoint (all of them when there is none) and restore its best
        truncate_rows(out / "episodes.csv", manifest.episodes if manifest else 0)
        if manifest is not None and manifest.best:
            atomic_write(out / "best_recipe.json", Policy.from_dict(loads_json(manifest.best["recipe"])).to_json(indent=1))
        else:
            (out / "best_recipe.json").unlink(missing_ok=True)

    run = SearchRun(config, out, env, manifest)
    run.identity = resume.stored if resume else {**identity, "episodes": config.episodes}
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
    except (CheckpointError, ValueError, OSError) as err:  # OSError: a missing or unwritable path, a name too long...
        print(f"ajpq search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = Path(config.out) if config.out else None
        started = out is not None and (out / "ajpq-run.json").is_file()
        hint = f"; run the same command with --resume --out {out} to continue" if started else ""
        print(f"ajpq search: interrupted before the first episode{hint}", file=sys.stderr)
        return 130
    console.print(summary_table(config, outcome))
    if outcome.interrupted:
        console.print(f"interrupted: run the same command with --resume --out {outcome.out} to continue", highlight=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reward fidelity: does the env's search metric rank recipes the way the standard fine-tune does? (issue 8, item 2)

The env rewards a recipe with its compressed network's metric on the search split *before* fine-tuning; users
deploy it *after* the standard fine-tune (``ajpq finetune --epochs 2 --samples-per-epoch 10000``). This benchmark
measures how well the first predicts the second, and which reward setting of the env predicts it best for its cost:

1. **Recipes**: >= 20 varied recipes that all meet the budget (``--target`` of ``--resource``), spread over the
   prune-vs-quantize trade-off: the candidates of :class:`~agents.baselines.UniformPrecision` (one bit-width, the
   least uniform pruning that fits) and of :class:`~agents.baselines.ImportanceHeuristic` (one per ``beta`` and
   exponent), random-action episodes of the joint env, prune-heavy episodes (``mode="prune"`` at 5, 6 or 8 bits,
   and joint episodes asking for much pruning at high bits) and bit-heavy ones (``mode="quant"``: no pruning,
   per-layer bits). Saved as JSON recipes under ``<out>/recipes/`` (``ajpq finetune --recipe`` reads them).
2. **Target**: each recipe's **test** metric after the standard fine-tune
   (:func:`ajpq_env.deploy.finetune`, ``--finetune-epochs`` x ``--finetune-samples``, seed ``--finetune-seeds``;
   several seeds are averaged and their agreement is the noise ceiling of any reward).
3. **Rewards**: each recipe's search metric under every ``--settings`` entry (``env.apply(recipe)``), with the
   seconds per evaluation: the env's wall-clock ``eval_seconds`` and the process CPU seconds (robust to other load).
4. **Table**: per setting, Spearman and Kendall rank correlations with the fine-tuned test metric (95% interval of
   Spearman by Fisher's z with the Fieller-Hartley-Pearson variance 1.06 / (n - 3)), Spearman among the better half
   of the recipes (what a search needs: order among good recipes), Spearman with the same setting on the full search
   split (for reduced splits), and the cost: seconds per evaluation, and CPU time in FP32 passes (an evaluation of
   ``--timing-recipes`` recipes per setting, each timed back to back with one forward pass of the FP32 model over the
   whole search split, so other load on the machine cancels out). Written to ``<out>/fidelity.csv`` and
   ``<out>/fidelity.md``.

A setting is a ``+``-joined list of tokens (order free; the canonical name orders them): ``default`` (the env's
defaults: 1 calibration batch of 64, no fine-tune steps, the whole search split), ``bn<B>x<S>`` (``B`` calibration
batches of ``S`` samples), ``qat<N>@<lr>`` (``N`` quantization-aware SGD steps at learning rate ``lr``, batches of
the calibration batch size), ``split<N>`` (the env's ``search_size=N``: a class-balanced subset of ``N`` search
samples, part of any larger one), e.g. ``bn8x64+qat50@0.01+split2000``.

Everything is resumable: the recipes, each fine-tune (``<out>/finetune/*.json``) and each measurement
(``<out>/search.csv``, ``<out>/timing.csv``) are written as they finish and skipped when the command is run again with the same ``--out``.

    nice -n 10 python -m benchmarks.reward_fidelity --out /tmp/fidelity --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajpq_env import AJPQEnv
from ajpq_env.compression import Policy
from ajpq_env.deploy.resolve import resolve_task
from ajpq_env.envs import random_episode
from ajpq_env.tasks import Split, Task
from ajpq_env.tasks.data import balanced_subset

__all__ = ["DEFAULT_SETTINGS", "Config", "RewardSetting", "main", "parse_args", "summarize", "with_search_subset"]

#: Settings measured by default: the env's default, more BatchNorm data, quantization-aware steps, smaller splits.
DEFAULT_SETTINGS = (
    "default", "bn4x64", "bn16x64",
    "qat10@0.01", "qat25@0.01", "qat50@0.01", "qat100@0.01", "qat25@0.02", "qat50@0.02",
    "bn8x64+qat50@0.01",
    "split1000", "split2000", "qat50@0.01+split2000",
)
_TOKENS = {
    "bn": re.compile(r"bn(\d+)x(\d+)"),
    "qat": re.compile(r"qat(\d+)@([0-9.eE+-]+)"),
    "split": re.compile(r"split(\d+)"),
}


@dataclass(frozen=True)
class RewardSetting:
    """How the env measures a recipe: its reward settings (arguments of :class:`~ajpq_env.AJPQEnv`)."""

    bn_calibration_batches: int = 1
    calibration_batch_size: int = 64
    finetune_steps: int = 0
    finetune_lr: float = 1e-3
    search_size: int | None = None

    @classmethod
    def parse(cls, text: str) -> RewardSetting:
        """Parse ``default`` or ``+``-joined ``bn<B>x<S>``, ``qat<N>@<lr>``, ``split<N>`` tokens (module docstring)."""
        values: dict[str, Any] = {}
        for token in text.strip().split("+"):
            matched = False
            for kind, pattern in _TOKENS.items():
                m = pattern.fullmatch(token)
                if m is None:
                    continue
                if kind in values:
                    raise ValueError(f"setting {text!r} has two {kind!r} tokens; give each at most once")
                values[kind] = m.groups()
                matched = True
            if not matched and token != "default":
                raise ValueError(f"setting {text!r}: unknown token {token!r}; expected default, bn<B>x<S> (e.g. "
                                 "bn8x64), qat<N>@<lr> (e.g. qat50@0.01) or split<N> (e.g. split2000), joined by '+'")
        setting = cls()
        kwargs = asdict(setting)
        if "bn" in values:
            kwargs["bn_calibration_batches"], kwargs["calibration_batch_size"] = map(int, values["bn"])
        if "qat" in values:
            kwargs["finetune_steps"], kwargs["finetune_lr"] = int(values["qat"][0]), float(values["qat"][1])
        if "split" in values:
            kwargs["search_size"] = int(values["split"][0])
        setting = cls(**kwargs)
        if setting.bn_calibration_batches < 1 or setting.calibration_batch_size < 1:
            raise ValueError(f"setting {text!r}: calibration batches and batch size must be >= 1")
        if setting.search_size is not None and setting.search_size < 1:
            raise ValueError(f"setting {text!r}: split size must be >= 1")
        if not (math.isfinite(setting.finetune_lr) and setting.finetune_lr > 0):
            raise ValueError(f"setting {text!r}: the qat learning rate must be a finite number > 0")
        return setting

    @property
    def name(self) -> str:
        """Canonical name (``default`` when every value is the env's default)."""
        parts = []
        if (self.bn_calibration_batches, self.calibration_batch_size) != (1, 64):
            parts.append(f"bn{self.bn_calibration_batches}x{self.calibration_batch_size}")
        if self.finetune_steps:
            parts.append(f"qat{self.finetune_steps}@{self.finetune_lr:g}")
        if self.search_size is not None:
            parts.append(f"split{self.search_size}")
        return "+".join(parts) or "default"

    @property
    def full_split(self) -> RewardSetting:
        """The same setting on the whole search split."""
        return RewardSetting(self.bn_calibration_batches, self.calibration_batch_size, self.finetune_steps,
                             self.finetune_lr)

    def env_kwargs(self) -> dict[str, Any]:
        return {"bn_calibration_batches": self.bn_calibration_batches,
                "calibration_batch_size": self.calibration_batch_size,
                "finetune_steps": self.finetune_steps, "finetune_lr": self.finetune_lr}


@dataclass
class Config:
    """Command-line options.

    :param out: output folder (recipes, fine-tune results, measurements, tables); re-running resumes it
    :param task: task name (see ``ajpq envs``), or ``synthetic-mobilenet_v2`` (tiny random task, for tests)
    :param data: data root for CIFAR-10 / ImageNet tasks (default ``$AJPQ_DATA``)
    :param weights: FP32 weights file or folder (default: packaged, then ``$AJPQ_WEIGHTS``)
    :param target: budget as a ratio of the FP32 model's ``resource``
    :param resource: ``size``, ``bitops`` or ``macs``
    :param seed: seed of the random-action recipes
    :param random_recipes: joint-env episodes with uniformly random actions
    :param prune_recipes: prune-heavy episodes (alternately ``mode="prune"`` at 5/6/8 bits and joint episodes asking
        for much pruning at high bits)
    :param quant_recipes: bit-heavy ``mode="quant"`` episodes (no pruning, random per-layer bits)
    :param baselines: whose candidates are recipes: ``uniform`` (:class:`~agents.baselines.UniformPrecision`),
        ``heuristic`` (:class:`~agents.baselines.ImportanceHeuristic`, once per ``heuristic_exponents`` entry)
    :param heuristic_exponents: exponents of :class:`~agents.baselines.ImportanceHeuristic` whose candidates are used
    :param settings: reward settings to measure (module docstring)
    :param finetune_epochs: epochs of the standard fine-tune
    :param finetune_samples: training samples per epoch (``0``: the whole train split)
    :param finetune_seeds: seeds of the fine-tune; the target is their mean
    :param goal: the Spearman correlation a setting should reach
    :param timing_recipes: recipes whose evaluation is timed back to back with an FP32 pass, per setting (0: none)
    :param leaderboard: a ``leaderboard.csv`` whose fine-tuned rows of the same task, resource, target and fine-tune
        budget add their best recipes, with the test metric of the leaderboard's fine-tune (its seed is the run's)
    :param phases: what to compute (``finetune``, ``search``, ``timing``); the table is made from whatever is cached,
        so one process may fine-tune while another measures the settings in the same ``out`` folder
    :param threads: torch intra-op threads (0 = torch's default)
    """

    out: Path = Path("runs/reward_fidelity")
    task: str = "cifar10-mobilenet_v2"
    data: str | None = None
    weights: str | None = None
    target: float = 0.125
    resource: str = "size"
    seed: int = 0
    random_recipes: int = 5
    prune_recipes: int = 6
    quant_recipes: int = 3
    baselines: tuple[str, ...] = ("uniform", "heuristic")
    heuristic_exponents: tuple[float, ...] = (0.5,)
    settings: tuple[str, ...] = DEFAULT_SETTINGS
    finetune_epochs: int = 2
    finetune_samples: int = 10_000
    finetune_seeds: tuple[int, ...] = (0,)
    goal: float = 0.8
    timing_recipes: int = 3
    phases: tuple[str, ...] = ("finetune", "search", "timing")
    threads: int = 1
    leaderboard: Path | None = None

    def recipe_key(self) -> dict[str, Any]:
        """The options that define the recipe set (a resumed folder must have been made with the same)."""
        return {k: getattr(self, k) for k in ("task", "target", "resource", "seed", "random_recipes", "prune_recipes",
                                               "quant_recipes")} | {
            "baselines": list(self.baselines), "heuristic_exponents": list(self.heuristic_exponents)}


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Config()
    parser.add_argument("--out", type=Path, default=d.out, help="output folder; re-running resumes it")
    parser.add_argument("--task", default=d.task)
    parser.add_argument("--data", default=None, help="data root (default $AJPQ_DATA)")
    parser.add_argument("--weights", default=None, help="FP32 weights (default: packaged, then $AJPQ_WEIGHTS)")
    parser.add_argument("--target", type=float, default=d.target)
    parser.add_argument("--resource", default=d.resource, choices=("size", "bitops", "macs"))
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the random-action recipes")
    parser.add_argument("--random-recipes", type=int, default=d.random_recipes)
    parser.add_argument("--prune-recipes", type=int, default=d.prune_recipes)
    parser.add_argument("--quant-recipes", type=int, default=d.quant_recipes)
    parser.add_argument("--baselines", nargs="*", default=list(d.baselines), choices=("uniform", "heuristic"),
                        help="baselines whose candidates are recipes (none: only episodes)")
    parser.add_argument("--heuristic-exponents", type=float, nargs="+", default=list(d.heuristic_exponents))
    parser.add_argument("--settings", nargs="+", default=list(d.settings),
                        help="reward settings, e.g. default bn8x64 qat50@0.01 split2000 (see the module docstring)")
    parser.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    parser.add_argument("--finetune-samples", type=int, default=d.finetune_samples,
                        help="training samples per fine-tune epoch (0: the whole train split)")
    parser.add_argument("--finetune-seeds", type=int, nargs="+", default=list(d.finetune_seeds))
    parser.add_argument("--goal", type=float, default=d.goal, help="Spearman correlation to reach")
    parser.add_argument("--timing-recipes", type=int, default=d.timing_recipes,
                        help="per setting, recipes timed against an FP32 pass over the search split (0: none)")
    parser.add_argument("--phases", nargs="+", default=list(d.phases), choices=d.phases,
                        help="what to compute; the table uses whatever is cached (run finetune and search in two "
                             "processes on one --out to use two cores)")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = torch's default)")
    parser.add_argument("--leaderboard", type=Path, default=None,
                        help="a leaderboard.csv whose fine-tuned best recipes of this task, resource and target (same "
                             "fine-tune budget) join the recipes, with the test metric its equal fine-tune measured")
    args = vars(parser.parse_args(argv))
    for key in ("baselines", "heuristic_exponents", "settings", "finetune_seeds", "phases"):
        args[key] = tuple(args[key])
    config = Config(**args)
    for name in ("random_recipes", "prune_recipes", "quant_recipes", "finetune_samples", "timing_recipes", "threads"):
        if getattr(config, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if config.leaderboard is not None and not config.leaderboard.is_file():
        parser.error(f"--leaderboard: no such file {str(config.leaderboard)!r}")
    if config.finetune_epochs < 1:
        parser.error(f"--finetune-epochs must be >= 1, got {config.finetune_epochs}")
    try:
        for text in config.settings:
            RewardSetting.parse(text)
    except ValueError as err:
        parser.error(str(err))
    return config


# ---------------------------------------------------------------------------------------------- search splits
def with_search_subset(task: Task, n: int | None) -> Task:
    """``task`` whose search split is :func:`~ajpq_env.tasks.data.balanced_subset` of ``n`` samples, the subset that
    ``load_task(..., search_size=n)`` takes, without loading the data again (the same task when ``n`` is None or not
    smaller than the split)."""
    search = task.splits["search"]
    if n is None or n >= len(search):
        return task
    idx = balanced_subset(search.labels.numpy(), n)
    subset = Split(search.images[idx], search.labels.numpy()[idx], search.normalization)
    return Task(task.spec, task.model, {**task.splits, "search": subset})


# ---------------------------------------------------------------------------------------------- recipes
@dataclass
class Recipe:
    """One recipe of the benchmark: its name, family and policy."""

    name: str
    family: str
    policy: Policy
    info: dict[str, float] = field(default_factory=dict)


def build_recipes(task: Task, config: Config) -> list[Recipe]:
    """The benchmark's recipes (see the module docstring), deduplicated, all meeting the budget."""
    from agents.baselines import ImportanceHeuristic, UniformPrecision

    common = {"target": config.target, "resource": config.resource, "cache_size": 0}
    joint = AJPQEnv(task, **common)
    found: list[tuple[str, Policy, dict[str, float]]] = []
    agents = [UniformPrecision()] if "uniform" in config.baselines else []
    if "heuristic" in config.baselines:
        agents += [ImportanceHeuristic(e) for e in config.heuristic_exponents]
    for agent in agents:
        agent.setup(joint, episodes=1, seed=config.seed)
        family = agent.name if agent.name == "uniform" else f"heuristic{agent.exponent:g}"
        found += [(family, plan.recipe, {}) for plan in agent.candidates]

    rng = np.random.default_rng(config.seed)
    envs: dict[tuple[str, int], AJPQEnv] = {("joint", 8): joint}

    def env_for(mode: str, bits: int = 8) -> AJPQEnv:
        if (mode, bits) not in envs:
            envs[(mode, bits)] = AJPQEnv(task, mode=mode, fixed_bits=bits, **common)
        return envs[(mode, bits)]

    def play(family: str, env: AJPQEnv, low: Sequence[float], high: Sequence[float]) -> None:
        info = random_episode(env, rng, low=low, high=high)
        overhead = info["walltime"] - info["eval_seconds"]  # the steps of an episode, without its evaluation
        found.append((family, Policy.from_dict(info["recipe"]), {"episode_overhead_s": overhead}))

    for _ in range(config.random_recipes):
        play("random", joint, (-1, -1), (1, 1))
    for i in range(config.prune_recipes):
        if i % 2 == 0:
            play("prune-mode", env_for("prune", int(rng.choice([5, 6, 8]))), (-1, -1), (1, 1))
        else:  # joint, asking for much pruning at high bits
            play("prune-heavy", joint, (0.2, 0.4), (1, 1))
    for _ in range(config.quant_recipes):
        play("quant-mode", env_for("quant"), (-1, -1), (1, 1))

    recipes: list[Recipe] = []
    seen: set[str] = set()
    counts: dict[str, int] = {}
    meta = {"task": task.name, "model": task.spec.model, "target": config.target, "resource": config.resource}
    for family, policy, info in found:
        if policy.digest() in seen:
            continue
        seen.add(policy.digest())
        cost = joint.costs(policy)
        if cost.resource(config.resource) > joint.budget.budget:
            raise RuntimeError(f"a {family} recipe exceeds the budget; the env's clipping should prevent that")
        ratios = cost.ratios(joint.costs.fp32)
        kept = sum(policy.kept(g.leader) for g in joint.graph.groups if not g.locked)
        prunable = sum(g.channels for g in joint.graph.groups if not g.locked)
        counts[family] = counts.get(family, 0) + 1
        info = {**info, "size_ratio": ratios["size"], "macs_ratio": ratios["macs"],
                "bitops_ratio": ratios["bitops"], "pruned_fraction": 1 - kept / max(prunable, 1),
                "mean_bits": policy.mean_bits()}
        recipes.append(Recipe(f"{family}-{counts[family]:02d}", family, Policy(policy, {**meta, "family": family}),
                              info))
    return recipes


def load_or_build_recipes(task: Task, config: Config) -> list[Recipe]:
    """The recipes of ``config.out`` (built and saved on the first run; a resumed folder must match ``config``)."""
    index = config.out / "recipes.json"
    if index.is_file():
        saved = json.loads(index.read_text())
        if saved["config"] != json.loads(json.dumps(config.recipe_key())):
            raise SystemExit(f"{index} was made with {saved['config']}, not {config.recipe_key()}; use another --out "
                             "or the same recipe options")
        return [Recipe(r["name"], r["family"], Policy.load(config.out / "recipes" / f"{r['name']}.json"), r["info"])
                for r in saved["recipes"]]
    recipes = build_recipes(task, config)
    (config.out / "recipes").mkdir(parents=True, exist_ok=True)
    for recipe in recipes:
        recipe.policy.save(config.out / "recipes" / f"{recipe.name}.json")
    rows = [{"name": r.name, "family": r.family, "digest": r.policy.digest(), "info": r.info} for r in recipes]
    index.write_text(json.dumps({"config": config.recipe_key(), "recipes": rows}, indent=1))
    return recipes


def leaderboard_recipes(config: Config) -> tuple[list[Recipe], dict[str, float]]:
    """The best recipes of ``config.leaderboard``'s rows that match the benchmark (task, resource, target and the
    fine-tune budget), named ``lb-<agent>-s<seed>``, and their test metric after the leaderboard's equal fine-tune:
    the recipes a search actually hands on, all near the budget, which is where a reward must rank well."""
    from benchmarks.leaderboard.rows import read_rows

    recipes, targets = [], {}
    samples = config.finetune_samples or None
    for row in read_rows(config.leaderboard) if config.leaderboard is not None else []:
        if (row.task != config.task or row.resource != config.resource or not math.isclose(row.target, config.target)
                or row.finetune_epochs != config.finetune_epochs or row.finetune_samples != samples
                or not row.recipe or not math.isfinite(row.test_metric)):
            continue
        policy = Policy.from_dict(row.recipe)
        bits = np.concatenate([np.asarray(policy[name]) for name in policy])
        name = f"lb-{row.agent}-s{row.seed}"
        recipes.append(Recipe(name, "leaderboard", policy, {
            "size_ratio": row.size_ratio, "macs_ratio": row.macs_ratio, "bitops_ratio": row.bitops_ratio,
            "pruned_fraction": float(np.mean(bits == 0)), "mean_bits": policy.mean_bits()}))
        targets[name] = row.test_metric
    return recipes, targets


# ---------------------------------------------------------------------------------------------- measurements
def _finetune_path(recipe: Recipe, config: Config, seed: int) -> Path:
    samples = config.finetune_samples or "all"
    return config.out / "finetune" / f"{recipe.name}-e{config.finetune_epochs}-n{samples}-s{seed}.json"


def cached_finetune(recipe: Recipe, config: Config, seed: int) -> dict[str, Any] | None:
    """The cached result of :func:`finetuned_metric`, or ``None``."""
    path = _finetune_path(recipe, config, seed)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["digest"] == recipe.policy.digest():
            return cached
    return None


def finetuned_metric(task: Task, recipe: Recipe, config: Config, seed: int) -> dict[str, Any]:
    """The recipe's test metric after the standard fine-tune with ``seed`` (cached in ``<out>/finetune``)."""
    from ajpq_env.deploy import FinetuneConfig, finetune

    cached = cached_finetune(recipe, config, seed)
    if cached is not None:
        return cached
    samples = config.finetune_samples or None
    path = _finetune_path(recipe, config, seed)
    start = time.perf_counter()
    tuned = finetune(task, recipe.policy, FinetuneConfig(
        epochs=config.finetune_epochs, samples_per_epoch=samples, seed=seed, progress=False,
        evaluate_search=False, evaluate_baselines=False))
    result = {"recipe": recipe.name, "digest": recipe.policy.digest(), "seed": seed,
              "epochs": config.finetune_epochs, "samples_per_epoch": samples, "test": tuned.metrics["test"],
              "search_after": tuned.metrics["search"], "seconds": time.perf_counter() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


_SEARCH_FIELDS = ("setting", "recipe", "digest", "metric", "eval_seconds", "cpu_seconds", "search_samples",
                  "budget_met")


def read_measurements(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``(setting, digest) -> row`` of ``<out>/search.csv``."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {(row["setting"], row["digest"]): row for row in csv.DictReader(f)}


def measure_setting(task: Task, recipes: Sequence[Recipe], setting: RewardSetting, config: Config,
                    done: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Search metric of every recipe not yet measured under ``setting``, appended to ``<out>/search.csv``."""
    todo = [r for r in recipes if (setting.name, r.policy.digest()) not in done]
    if not todo:
        return
    env = AJPQEnv(with_search_subset(task, setting.search_size), target=config.target, resource=config.resource,
                  cache_size=0, **setting.env_kwargs())
    path = config.out / "search.csv"
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_SEARCH_FIELDS)
        if new:
            writer.writeheader()
        for recipe in todo:
            cpu = time.process_time()
            result = env.apply(recipe.policy)
            row = {"setting": setting.name, "recipe": recipe.name, "digest": recipe.policy.digest(),
                   "metric": result["metric"], "eval_seconds": result["eval_seconds"],
                   "cpu_seconds": time.process_time() - cpu, "search_samples": len(env.task.splits["search"]),
                   "budget_met": result["budget_met"]}
            writer.writerow(row)
            f.flush()
            done[(setting.name, row["digest"])] = {k: str(v) for k, v in row.items()}
            print(f"  {setting.name:<24} {recipe.name:<16} metric {result['metric']:.4f}  "
                  f"{row['cpu_seconds']:.1f} s CPU", flush=True)


def time_settings(task: Task, recipes: Sequence[Recipe], settings: Sequence[RewardSetting], config: Config,
                  compute: bool = True) -> dict[str, float]:
    """Per setting, the CPU time of one evaluation in units of one FP32 forward pass over the whole search split
    (each of ``config.timing_recipes`` recipes evaluated, then the pass timed right after it): a cost that other
    load on the machine changes far less than seconds do. Cached in ``<out>/timing.csv`` (only read when not
    ``compute``)."""
    path = config.out / "timing.csv"
    fields = ("setting", "recipes", "eval_cpu_seconds", "fp32_pass_cpu_seconds", "fp32_passes")
    done: dict[str, float] = {}
    if path.is_file():
        with path.open(newline="") as f:
            done = {row["setting"]: float(row["fp32_passes"]) for row in csv.DictReader(f)}
    k = min(config.timing_recipes, len(recipes))
    if not k or not compute:
        return done
    picks = [recipes[i] for i in np.linspace(0, len(recipes) - 1, k).round().astype(int)]
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        for setting in settings:
            if setting.name in done:
                continue
            env = AJPQEnv(with_search_subset(task, setting.search_size), target=config.target,
                          resource=config.resource, cache_size=0, **setting.env_kwargs())
            evals, passes = [], []
            for recipe in picks:
                start = time.process_time()
                env.apply(recipe.policy)
                evals.append(time.process_time() - start)
                start = time.process_time()
                task.evaluate(task.model, "search", env.evaluator.eval_batch_size)
                passes.append(time.process_time() - start)
            ratio = float(np.mean(np.asarray(evals) / np.asarray(passes)))
            writer.writerow({"setting": setting.name, "recipes": k, "eval_cpu_seconds": float(np.mean(evals)),
                             "fp32_pass_cpu_seconds": float(np.mean(passes)), "fp32_passes": ratio})
            f.flush()
            done[setting.name] = ratio
            print(f"  timed {setting.name:<24} {ratio:.2f} FP32 passes per evaluation", flush=True)
    return done


# ---------------------------------------------------------------------------------------------- statistics
def rank_correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and Kendall's tau-b of ``x`` and ``y`` (NaN for fewer than 3 pairs or a constant side)."""
    from scipy import stats  # scipy is installed with mlxtend, a dependency of the package

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    return float(stats.spearmanr(x, y).statistic), float(stats.kendalltau(x, y).statistic)


def spearman_interval(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of Spearman's rho by Fisher's z with variance 1.06 / (n - 3) (Fieller, Hartley and
    Pearson, 1957)."""
    from scipy import stats

    if n <= 3 or not math.isfinite(rho):
        return math.nan, math.nan
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def summarize(recipes: Sequence[Recipe], targets: dict[str, float], measured: dict[tuple[str, str], dict[str, Any]],
              settings: Iterable[RewardSetting], passes: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per setting: rank correlations with ``targets`` (recipe name -> fine-tuned test metric) and cost
    (mean seconds per evaluation, wall and CPU, and ``passes``: setting -> cost in FP32 passes, when timed)."""
    rows = []
    for setting in settings:
        pairs = [(measured[(setting.name, r.policy.digest())], targets[r.name]) for r in recipes
                 if (setting.name, r.policy.digest()) in measured and r.name in targets]
        metric = [float(m["metric"]) for m, _ in pairs]
        test = [t for _, t in pairs]
        rho, tau = rank_correlations(metric, test)
        low, high = spearman_interval(rho, len(pairs))
        top = [i for i, t in enumerate(test) if t >= np.median(test)] if test else []
        rho_top, _ = rank_correlations([metric[i] for i in top], [test[i] for i in top])
        row = {"setting": setting.name, "n": len(pairs), "spearman": rho, "spearman_low": low, "spearman_high": high,
               "kendall": tau, "spearman_top_half": rho_top, "spearman_vs_full_split": math.nan,
               "eval_seconds": float(np.mean([float(m["eval_seconds"]) for m, _ in pairs])) if pairs else math.nan,
               "cpu_seconds": float(np.mean([float(m["cpu_seconds"]) for m, _ in pairs])) if pairs else math.nan,
               "fp32_passes": (passes or {}).get(setting.name, math.nan)}
        if setting.search_size is not None:
            full = setting.full_split.name
            both = [(float(measured[(setting.name, r.policy.digest())]["metric"]),
                     float(measured[(full, r.policy.digest())]["metric"])) for r in recipes
                    if (setting.name, r.policy.digest()) in measured and (full, r.policy.digest()) in measured]
            if both:
                row["spearman_vs_full_split"] = rank_correlations(*zip(*both))[0]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- output
def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown(rows: Sequence[dict[str, Any]], recipes: Sequence[Recipe], targets: dict[str, float],
             measured: dict[tuple[str, str], dict[str, Any]], config: Config, seed_agreement: float) -> str:
    head = ("| setting | n | Spearman | 95% interval | Kendall | Spearman, better half | vs full split | "
            "eval s (wall) | eval s (CPU) | cost (FP32 passes) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| {r['setting']} | {r['n']} | {_fmt(r['spearman'])} | {_fmt(r['spearman_low'], 2)}..."
             f"{_fmt(r['spearman_high'], 2)} | {_fmt(r['kendall'])} | {_fmt(r['spearman_top_half'])} | "
             f"{_fmt(r['spearman_vs_full_split'])} | {_fmt(r['eval_seconds'], 2)} | {_fmt(r['cpu_seconds'], 2)} | "
             f"{_fmt(r['fp32_passes'], 2)} |"
             for r in rows]
    names = [r["setting"] for r in rows]
    per_recipe = ["| recipe | size | MACs | pruned | mean bits | test after fine-tune | "
                  + " | ".join(names) + " |", "|---|" + "---:|" * (5 + len(names))]
    for r in sorted(recipes, key=lambda r: -targets.get(r.name, -1.0)):
        cells = [_fmt(float(measured[(n, r.policy.digest())]["metric"])) if (n, r.policy.digest()) in measured
                 else "" for n in names]
        per_recipe.append(f"| {r.name} | {_fmt(r.info['size_ratio'], 4)} | {_fmt(r.info['macs_ratio'])} | "
                          f"{_fmt(r.info['pruned_fraction'], 2)} | {_fmt(r.info['mean_bits'], 2)} | "
                          f"{_fmt(targets.get(r.name, math.nan), 4)} | " + " | ".join(cells) + " |")
    samples = config.finetune_samples or "all"
    seeds = " ".join(map(str, config.finetune_seeds))
    text = (f"# Reward fidelity: {config.task}, {config.resource} <= {config.target:g} of FP32\n\n"
            f"Rank correlation between each reward setting's search metric and the **test** metric after the "
            f"standard fine-tune ({config.finetune_epochs} epochs x {samples} samples, seeds {seeds}) over "
            f"{len(recipes)} recipes. Command: `python -m benchmarks.reward_fidelity "
            f"{' '.join(sys.argv[1:])}`\n\n" + head + "\n".join(lines) + "\n")
    imported = sum(r.family == "leaderboard" for r in recipes)
    if imported:
        text += (f"\n{imported} recipes (`lb-<agent>-s<seed>`) are leaderboard runs' best recipes ({config.leaderboard}); "
                 "their test metric is the leaderboard's equal fine-tune, made with the run's seed.\n")
    if math.isfinite(seed_agreement):
        text += f"\nSpearman between the fine-tune seeds' test metrics (noise ceiling): {seed_agreement:.3f}\n"
    return text + "\n## Per recipe (search metric under each setting)\n\n" + "\n".join(per_recipe) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    config = parse_args(argv)
    if config.threads:
        torch.set_num_threads(config.threads)
    config.out.mkdir(parents=True, exist_ok=True)
    task = resolve_task(config.task, data_root=config.data, weights=config.weights)
    recipes = load_or_build_recipes(task, config)
    print(f"{len(recipes)} recipes of {config.task} at {config.resource} <= {config.target:g} in {config.out}",
          flush=True)

    imported, imported_targets = leaderboard_recipes(config)
    known = {r.policy.digest() for r in recipes}
    imported = [r for r in imported if r.policy.digest() not in known]
    if imported:
        print(f"{len(imported)} fine-tuned recipes from {config.leaderboard}", flush=True)
    settings = [RewardSetting.parse(text) for text in config.settings]
    settings = list({s.name: s for s in settings}.values())
    measured = read_measurements(config.out / "search.csv")
    if "search" in config.phases:
        measure_setting(task, recipes, settings[0], config, measured)  # the cheap first setting: an early look

    per_seed: dict[int, dict[str, float]] = {s: {} for s in config.finetune_seeds}
    for recipe in recipes:
        for seed in config.finetune_seeds:
            if "finetune" in config.phases:
                result = finetuned_metric(task, recipe, config, seed)
                print(f"  fine-tuned {recipe.name:<16} seed {seed}: test {result['test']:.4f} "
                      f"({result['seconds']:.0f} s)", flush=True)
            else:
                result = cached_finetune(recipe, config, seed)
            if result is not None:
                per_seed[seed][recipe.name] = result["test"]
    targets = {r.name: float(np.mean([per_seed[s][r.name] for s in config.finetune_seeds])) for r in recipes
               if all(r.name in per_seed[s] for s in config.finetune_seeds)}
    seed_agreement = math.nan
    if len(config.finetune_seeds) >= 2:
        first, second = (per_seed[s] for s in config.finetune_seeds[:2])
        both = [r.name for r in recipes if r.name in first and r.name in second]
        seed_agreement = rank_correlations([first[n] for n in both], [second[n] for n in both])[0]

    targets.update({r.name: imported_targets[r.name] for r in imported})
    recipes = recipes + imported
    if "search" in config.phases:
        for setting in settings[1 if not imported else 0:]:
            measure_setting(task, recipes, setting, config, measured)
    passes = time_settings(task, recipes, settings, config, compute="timing" in config.phases)
    rows = summarize(recipes, targets, measured, settings, passes)
    with (config.out / "fidelity.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows, recipes, targets, measured, config, seed_agreement)
    (config.out / "fidelity.md").write_text(text)
    print(text.split("\n## ")[0])
    reached = [r for r in rows if r["spearman"] >= config.goal]
    if reached:
        timed = all(math.isfinite(r["fp32_passes"]) for r in reached)
        best = min(reached, key=lambda r: r["fp32_passes"] if timed else r["cpu_seconds"])
        print(f"cheapest setting with Spearman >= {config.goal:g}: {best['setting']} ({best['spearman']:.3f}, "
              f"{best['cpu_seconds']:.2f} s CPU, {best['fp32_passes']:.2f} FP32 passes per evaluation)")
    else:
        best = max(rows, key=lambda r: -math.inf if math.isnan(r["spearman"]) else r["spearman"])
        print(f"no setting reaches Spearman {config.goal:g}; the best is {best['setting']} ({best['spearman']:.3f})")
    return rows


if __name__ == "__main__":
    main()

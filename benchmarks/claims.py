"""Regenerate ``benchmarks/results/CLAIMS.md``: the paper's claims, measured on our tasks.

Rows (each with the command that produced its numbers, the seeds, and mean ± sample std over them):

(a) **a 0-bit channel is a removed channel**: the largest output difference between the policy simulated in place
    (0-bit channels zeroed with their BatchNorm shift) and the physically pruned network, on random recipes of three
    models; measured here, in seconds;
(b) **joint one-step vs two-step** (prune, then quantize) at equal size and equal fine-tune: the test metric after
    the leaderboard's equal fine-tune of each run's best recipe, held-out seeds only;
(c) **compression at which the fine-tuned joint recipe stays within 1 pt of FP32**: the 5x (size 0.2) and 10x
    (size 0.1) entries of the leaderboard, held-out seeds only;
(d) **SkyNet at fixed precision**: read from a results JSON written by the SkyNet claim run
    (``--skynet FILE``: a JSON list of rows with ``claim``, ``measured``, ``command``, ``seeds``).

Rows (b) and (c) read leaderboard CSVs (``--leaderboard DIR [DIR ...]``, each holding ``leaderboard.csv``; the
same run with the same fine-tune budget in two of them is refused): the numbers are never re-typed, and a missing
entry or fewer than 3 held-out seeds is written as "not measured" with the reason. Row (b) is written for the CIFAR-10
size-1/8 entry and for every other entry with 3 held-out runs of both agents. The same runs may be measured after
several fine-tune budgets (a leaderboard run with ``--finetune-epochs/--finetune-samples`` into another folder): rows
(b) and (c) and the tables then come once per budget, never mixing two. After the rows, the held-out leaderboard
table of every entry and budget found, each with the command that made it.

    python -m benchmarks.claims --leaderboard runs/lb-cifar runs/lb-embedded   # SkyNet: benchmarks/results/skynet_claim.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ajpq_env.fileio import atomic_write, loads_json

__all__ = ["Board", "ClaimRow", "ClaimsConfig", "held_out_tables", "joint_vs_two_step", "joint_vs_two_step_rows", "main",
           "render", "suite_of", "within_one_point", "within_one_point_rows", "zero_bit_rows"]

RESULTS = Path(__file__).parent / "results" / "CLAIMS.md"
#: the SkyNet claim run's rows (measured by the commands they name; a search + fine-tune takes about 40 min on 2 cores)
SKYNET_ROWS = Path(__file__).parent / "results" / "skynet_claim.json"
JOINT_AGENT, TWO_STEP = "td3-twolevel", "two-step"
#: a fine-tune budget: (epochs, samples per epoch or None for the whole train split)
Budget = tuple[int, int | None]
LEADERBOARD_CMD = ("python -m benchmarks.leaderboard --suite {suite} --entries {entry} --agents {agents} "
                   "--seeds held-out --workers 2 --threads 1 --out {out}")
#: the entry of row (b) that is always written (as "not measured" when the leaderboard lacks it)
MAIN_ENTRY = "cifar10-mobilenet_v2/size-0.125"


@dataclass
class ClaimsConfig:
    """Options of ``python -m benchmarks.claims``.

    :param leaderboard: folders of leaderboard runs, each holding ``leaderboard.csv`` (none: rows (b), (c) say so)
    :param skynet: JSON file of the SkyNet claim rows (``None``: row (d) says so)
    :param out: the Markdown file written
    :param zero_bit_seeds: random recipes per model for row (a)
    """

    leaderboard: Sequence[Path] = ()
    skynet: Path | None = SKYNET_ROWS
    out: Path = RESULTS
    zero_bit_seeds: int = 3


@dataclass
class ClaimRow:
    """One row of CLAIMS.md: the paper's claim, what we measured, how, and on which seeds."""

    claim: str
    measured: str
    command: str
    seeds: str = ""
    notes: list[str] = field(default_factory=list)


def _mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


# ---------------------------------------------------------------------- (a) 0-bit == removed
@torch.no_grad()
def zero_bit_rows(seeds: int = 3) -> ClaimRow:
    """Max |simulated - physically pruned| over random recipes of MobileNetV2, ResNet-20 and MobileNetV1."""
    from ajpq_env.compression import CompressionGraph, Policy, compress, simulate
    from ajpq_env.tasks import synthetic_task

    parts = []
    for model, shape in (("mobilenet_v2", (3, 32, 32)), ("resnet20", (3, 32, 32)), ("mobilenet_v1", (3, 32, 32))):
        task = synthetic_task(model, input_shape=shape)
        graph = CompressionGraph(task.model, task.example_input())
        x = task.splits["search"].tensor()
        worst = 0.0
        for seed in range(seeds):
            policy = Policy.random(graph, np.random.default_rng(seed), max_sparsity=0.8)
            worst = max(worst, float((simulate(task.model, graph, policy)(x) - compress(task.model, graph, policy)(x))
                                     .abs().max()))
        parts.append(f"{model} {worst:.1e}")
    return ClaimRow(
        "pruning a channel is quantizing it to 0 bits",
        "max |output difference| between the 0-bit simulation and the physically pruned network: " + ", ".join(parts),
        "python -m benchmarks.claims (random recipes, max sparsity 0.8, random weights and BatchNorm statistics)",
        f"recipe seeds 0..{seeds - 1}",
    )


# ---------------------------------------------------------------------- (b), (c) from the leaderboard
@dataclass
class Board:
    """Leaderboard rows read from one or more runs' folders, and the folder each (entry, agent, seed) came from."""

    rows: list = field(default_factory=list)
    source: dict = field(default_factory=dict)

    @staticmethod
    def run_key(row) -> tuple:  # noqa: ANN001 (a LeaderboardRow)
        """A run measured after one fine-tune budget: (entry, agent, seed, epochs, samples)."""
        return (*row.key, *budget_of(row))

    @classmethod
    def read(cls, folders: Sequence[Path]) -> Board:
        """The rows of ``FOLDER/leaderboard.csv`` of every folder (the later row of a run a CSV holds twice).

        :raises ValueError: one run (entry, agent, seed) with the same fine-tune budget in two folders: which one a
            claim should quote is unclear
        """
        from benchmarks.leaderboard.rows import read_rows
        from benchmarks.leaderboard.table import latest_per_key

        board = cls()
        for folder in folders:
            for row in latest_per_key(read_rows(Path(folder) / "leaderboard.csv")):
                key = cls.run_key(row)
                if key in board.source:
                    raise ValueError(f"run {row.key} ({describe(budget_of(row))}) is in both "
                                     f"{str(board.source[key])!r} and {str(folder)!r}; pass each run's leaderboard once")
                board.source[key] = Path(folder)
                board.rows.append(row)
        return board

    def out(self, entry: str, budget: Budget | None = None) -> Path:
        """The folder of ``entry``'s runs (after ``budget`` when given; the first found; ``runs/leaderboard`` for an
        entry not run)."""
        default = Path("runs/leaderboard")
        return next((self.source.get(self.run_key(r), default) for r in self.rows
                     if r.entry == entry and budget in (None, budget_of(r))), default)

    def budgets(self, entry: str, agent: str | None = None) -> list[Budget]:
        """The fine-tune budgets of ``entry``'s held-out runs (of ``agent`` when given), in order of appearance."""
        return list(dict.fromkeys(budget_of(r) for r in self.rows if r.entry == entry and r.seed_set == "held-out"
                                  and agent in (None, r.agent)))

    def entries(self) -> list[str]:
        """Entries with held-out runs, in the order of first appearance."""
        return list(dict.fromkeys(r.entry for r in self.rows if r.seed_set == "held-out"))

    def command(self, entry: str, agents: str, budget: Budget | None = None) -> str:
        """The leaderboard command that made the folder of ``entry``'s runs (after ``budget``): every entry and agent
        that folder holds, so that all claims quoting one folder print one command (two commands with one ``--out``
        would collide: the second stops with "pass --resume"); with the fine-tune options when the folder's budget
        is not its entries' own. For an entry not run: ``entry`` and ``agents`` into ``runs/leaderboard``."""
        out = self.out(entry, budget)
        here = [r for r in self.rows if self.source.get(self.run_key(r)) == out]
        entries = list(dict.fromkeys(r.entry for r in here)) or [entry]
        agents = " ".join(dict.fromkeys(r.agent for r in here)) or agents
        command = LEADERBOARD_CMD.format(suite=suite_of(entry), entry=" ".join(entries), agents=agents, out=out)
        made = [(budget_of(r), r.entry) for r in here] or [(budget, entry)]
        foreign = next((b for b, e in made if b is not None and b != entry_budget(e)), None)
        if foreign is not None:
            epochs, samples = foreign
            command += f" --finetune-epochs {epochs} --finetune-samples {samples or 0}"
        return command


def budget_of(row) -> Budget:  # noqa: ANN001 (a LeaderboardRow)
    return (row.finetune_epochs, row.finetune_samples)


def describe(budget: Budget) -> str:
    return f"{budget[0]} epochs x {budget[1] or 'all'} samples"


def entry_budget(entry: str) -> Budget | None:
    """The fine-tune budget a suite gives ``entry`` (``None`` for an entry of no suite)."""
    from benchmarks.leaderboard.suites import SUITES

    try:
        found = SUITES[suite_of(entry)].entry(entry)
    except KeyError:
        return None
    return (found.finetune_epochs, found.finetune_samples)


def suite_of(entry: str) -> str:
    """The smallest leaderboard suite holding ``entry`` (``default`` holds them all)."""
    from benchmarks.leaderboard.suites import SUITES

    holding = [s for s in SUITES.values() if any(e.name == entry for e in s.entries)]
    return min(holding, key=lambda s: len(s.entries)).name if holding else "default"


def _held_out_seeds(rows: list) -> str:
    """The seeds column of a claim row: ``rows``' seeds in order (parallel workers finish in any order)."""
    return "held-out " + ", ".join(str(seed) for seed in sorted(r.seed for r in rows))


def _held_out(rows: list, entry: str, agent: str, budget: Budget | None = None) -> list:
    return [r for r in rows if r.entry == entry and r.agent == agent and r.seed_set == "held-out" and r.found
            and budget in (None, budget_of(r))]


def _only_budget(board: Board, entry: str, budget: Budget | None) -> Budget | None:
    """``budget``, or the single budget of ``entry``'s held-out runs; two or more without a choice: ValueError."""
    found = board.budgets(entry)
    if budget is None and len(found) > 1:
        raise ValueError(f"{entry}: runs after several fine-tune budgets ({', '.join(map(describe, found))}); "
                         "name one")
    return budget if budget is not None else (found[0] if found else None)


def joint_vs_two_step(board: Board, entry: str = MAIN_ENTRY, budget: Budget | None = None) -> ClaimRow:
    """Row (b): test after the equal fine-tune (``budget``; default the entry's only one), joint agent vs two-step,
    held-out seeds."""
    budget = _only_budget(board, entry, budget)
    joint, two = _held_out(board.rows, entry, JOINT_AGENT, budget), _held_out(board.rows, entry, TWO_STEP, budget)
    command = board.command(entry, f"{JOINT_AGENT} {TWO_STEP}", budget)
    if len(joint) < 3 or len(two) < 3:
        return ClaimRow("joint (one search) beats prune-then-quantize at equal size", "not measured: fewer than 3 "
                        f"held-out runs of each agent in {entry} ({len(joint)}, {len(two)})", command)
    ft = joint[0]
    gap = statistics.fmean(r.test_metric for r in joint) - statistics.fmean(r.test_metric for r in two)
    return ClaimRow(
        f"joint (one search) beats prune-then-quantize at equal {ft.resource}",
        f"{entry}: test after the equal fine-tune ({describe(budget_of(ft))}) {JOINT_AGENT} {_mean_std([r.test_metric for r in joint])}"
        f" vs {TWO_STEP} {_mean_std([r.test_metric for r in two])} ({gap * 100:+.2f} pt); search metric "
        f"{_mean_std([r.metric for r in joint])} vs {_mean_std([r.metric for r in two])}; {ft.resource} ratios "
        f"{statistics.fmean(r.resource_ratio for r in joint):.4f} vs "
        f"{statistics.fmean(r.resource_ratio for r in two):.4f}",
        command, _held_out_seeds(joint),
    )


def joint_vs_two_step_rows(board: Board) -> list[ClaimRow]:
    """Row (b) for :data:`MAIN_ENTRY` and for every other entry with 3 held-out runs of both agents, once per
    fine-tune budget with 3 runs of both."""
    rows = []
    for entry in dict.fromkeys((MAIN_ENTRY, *board.entries())):
        budgets = [b for b in board.budgets(entry)
                   if min(len(_held_out(board.rows, entry, a, b)) for a in (JOINT_AGENT, TWO_STEP)) >= 3]
        if entry == MAIN_ENTRY and not budgets:
            budgets = board.budgets(entry)[:1] or [None]
        rows += [joint_vs_two_step(board, entry, b) for b in budgets]
    return rows


def within_one_point(board: Board, entry: str, label: str, budget: Budget | None = None) -> ClaimRow:
    """Row (c): the fine-tuned joint recipe of ``entry`` (after ``budget``; default the entry's only one) against
    FP32 test accuracy, held-out seeds."""
    budget = _only_budget(board, entry, budget)
    joint = _held_out(board.rows, entry, JOINT_AGENT, budget)
    command = board.command(entry, JOINT_AGENT, budget)
    claim = f"{label} smaller weights within 1 pt of FP32 after fine-tuning"
    if len(joint) < 3:
        return ClaimRow(claim, f"not measured: {len(joint)} held-out runs of {JOINT_AGENT} in {entry}", command)
    fp32 = statistics.fmean(r.fp32_test_metric for r in joint)
    test = [r.test_metric for r in joint]
    gap = statistics.fmean(test) - fp32
    verdict = "within 1 pt" if gap >= -0.01 else "NOT within 1 pt"
    ft = joint[0]
    return ClaimRow(
        claim,
        f"{entry}: size ratio {statistics.fmean(r.size_ratio for r in joint):.4f} "
        f"({1 / statistics.fmean(r.size_ratio for r in joint):.1f}x), test {_mean_std(test)} vs FP32 {fp32:.4f} "
        f"({gap * 100:+.2f} pt, {verdict}) after {ft.finetune_epochs} epochs x {ft.finetune_samples or 'all'} samples",
        command, _held_out_seeds(joint),
    )


def within_one_point_rows(board: Board, entry: str, label: str) -> list[ClaimRow]:
    """Row (c) of ``entry`` once per fine-tune budget of its joint runs ("not measured" when there is none)."""
    return [within_one_point(board, entry, label, b) for b in board.budgets(entry, JOINT_AGENT) or [None]]


# ---------------------------------------------------------------------- the file
def held_out_tables(board: Board) -> list[str]:
    """The held-out leaderboard section of every entry of ``board``, each after the command that made it."""
    from benchmarks.leaderboard.table import LEGEND, entry_sections

    lines = []
    for entry in board.entries():
        for budget in board.budgets(entry):
            rows = [r for r in board.rows if r.entry == entry and r.seed_set == "held-out" and budget_of(r) == budget]
            section = entry_sections(rows)
            agents = " ".join(dict.fromkeys(r.agent for r in rows))
            lines += ["#" + section[0], "", f"`{board.command(entry, agents, budget)}`", *section[1:]]
    return ["## Held-out leaderboard tables", "", *lines, LEGEND, ""] if lines else []


def render(rows: list[ClaimRow], tables: Sequence[str] = ()) -> str:
    lines = [
        "# AJPQ's claims, measured",
        "",
        "Regenerated by `python -m benchmarks.claims`; every number comes from the command beside it. Search-quality",
        "rows use held-out seeds only (mean ± sample std). CIFAR-10 numbers are on the JPEG copy of CIFAR-10",
        "(`../shared/data/cifar10`), not comparable with published CIFAR-10 figures.",
        "",
        "| claim (paper) | measured here | command | seeds |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row.claim} | {row.measured} | `{row.command}` | {row.seeds} |")
    notes = [note for row in rows for note in row.notes]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    if tables:
        lines += ["", *tables]
    return "\n".join(lines).rstrip("\n") + "\n"


def _skynet_rows(path: Path | None) -> list[ClaimRow]:
    claim = ">5x smaller, 2x less compute at fixed precision, IoU not lower (SkyNet, DAC-SDC)"
    if path is None or not path.is_file():
        return [ClaimRow(claim, "not measured here: no SkyNet results file given (--skynet)", "")]
    data = loads_json(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of claim rows")
    return [ClaimRow(str(d["claim"]), str(d["measured"]), str(d["command"]), str(d.get("seeds", "")),
                     [str(n) for n in d.get("notes", [])]) for d in data]


def build(config: ClaimsConfig) -> tuple[list[ClaimRow], list[str]]:
    """The claim rows and the held-out tables' lines."""
    rows = [zero_bit_rows(config.zero_bit_seeds)]
    board = Board.read(config.leaderboard)
    rows += joint_vs_two_step_rows(board)
    rows += within_one_point_rows(board, "cifar10-mobilenet_v2/size-0.2", "5x")
    rows += within_one_point_rows(board, "cifar10-mobilenet_v2/size-0.1", "10x")
    rows.extend(_skynet_rows(config.skynet))
    return rows, held_out_tables(board)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaderboard", type=Path, nargs="+", default=[], metavar="DIR",
                        help="leaderboard folders, each holding leaderboard.csv")
    parser.add_argument("--skynet", type=Path, default=SKYNET_ROWS,
                        help=f"JSON rows of the SkyNet claim run (default {SKYNET_ROWS})")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"the Markdown file (default {RESULTS})")
    parser.add_argument("--zero-bit-seeds", type=int, default=3, help="random recipes per model for row (a)")
    args = parser.parse_args(argv)
    if args.zero_bit_seeds < 1:
        parser.error("--zero-bit-seeds must be >= 1")
    for folder in args.leaderboard:
        if not (folder / "leaderboard.csv").is_file():
            parser.error(f"--leaderboard: no leaderboard.csv in {str(folder)!r}")
    try:
        rows, tables = build(ClaimsConfig(args.leaderboard, args.skynet, args.out, args.zero_bit_seeds))
    except (ValueError, KeyError) as err:
        print(f"benchmarks.claims: error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = render(rows, tables)
    atomic_write(args.out, text)
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

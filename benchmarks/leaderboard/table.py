"""The leaderboard's Markdown table: per entry and per seed set (held-out first), the agents with three rankings.

* **at equal episodes**: the best search-split metric each run reached within its episode budget (the same for
  every agent of an entry), mean ± sample std over seeds; ties: the smaller resource ratio;
* **after the equal fine-tune**: the test-split metric of each run's best recipe after the entry's fine-tune;
* **at equal wall time**: the best search metric each run had reached after ``T`` seconds of search (its
  best-so-far curve, elapsed time summed from ``episodes.csv``'s ``walltime``). ``T`` defaults to the shortest
  mean search time among the agents that spent their whole episode budget, so that agents that stop early
  (nothing left to try) keep their result and the others are cut at the same clock.

Held-out sections are what claims may quote; tuning sections say that the agents may have been tuned on them.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.leaderboard.rows import LeaderboardRow
from benchmarks.leaderboard.suites import SEED_SETS

__all__ = ["LEGEND", "TABLE_NAME", "AgentStats", "default_walltime_cutoff", "entry_sections", "latest_per_key",
           "markdown_table", "write_table"]

TABLE_NAME = "leaderboard.md"
_SEED_SET_NOTES = {
    "held-out": "held-out seeds {seeds}",
    "tuning": "tuning seeds {seeds} (defaults may have been tuned on them: not for claims)",
    "other": "seeds {seeds} (neither tuning nor held-out seeds of the suite)",
}


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


@dataclass
class AgentStats:
    """One agent's runs in one section and its means (NaN: no value)."""

    agent: str
    runs: list[LeaderboardRow]
    search: tuple[float, float | None]
    test: tuple[float, float | None]
    by_time: tuple[float, float | None]
    ratio: float

    @classmethod
    def of(cls, agent: str, runs: list[LeaderboardRow], cutoff: float) -> AgentStats:
        found = [r for r in runs if r.found]
        return cls(
            agent, runs, _mean_std([r.metric for r in found]), _mean_std([r.test_metric for r in found]),
            _mean_std([r.best_by(cutoff) for r in found]) if math.isfinite(cutoff) else (math.nan, None),
            statistics.fmean(r.resource_ratio for r in found) if found else math.inf,
        )

    def count(self, values: list[float]) -> str:
        n = sum(not math.isnan(v) for v in values)
        return f" ({n}/{len(self.runs)} runs)" if n < len(self.runs) else ""


def _ranks(stats: list[AgentStats], key: str) -> dict[str, int]:
    """Agent -> rank by the mean of ``key`` (higher first; ties: smaller resource ratio, then name); no value: none."""
    scored = [s for s in stats if not math.isnan(getattr(s, key)[0])]
    scored.sort(key=lambda s: (-getattr(s, key)[0], s.ratio, s.agent))
    return {s.agent: rank for rank, s in enumerate(scored, 1)}


def default_walltime_cutoff(runs: Sequence[LeaderboardRow]) -> float:
    """The default cut-off of the equal-wall-time ranking (see the module doc); NaN when the rows have no curves."""
    by_agent: dict[str, list[LeaderboardRow]] = {}
    for row in runs:
        by_agent.setdefault(row.agent, []).append(row)
    full = [statistics.fmean(r.search_seconds for r in rs) for rs in by_agent.values()
            if all(r.episodes >= r.episode_budget for r in rs)]
    full = [t for t in full if not math.isnan(t)]
    if full:
        return min(full)
    times = [r.search_seconds for r in runs if not math.isnan(r.search_seconds)]
    return max(times) if times else math.nan


def _fmt(value: tuple[float, float | None], suffix: str = "") -> str:
    mean, std = value
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "") + suffix


def _avg(runs: list[LeaderboardRow], key: str, fmt: str) -> str:
    values = [getattr(r, key) for r in runs]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return format(statistics.fmean(values), fmt) if values else "—"


def _section(entry: str, seed_set: str, agents: dict[str, list[LeaderboardRow]], cutoff: float | None) -> list[str]:
    runs = [r for rs in agents.values() for r in rs]
    first, seeds = runs[0], sorted({r.seed for r in runs})
    cut = default_walltime_cutoff(runs) if cutoff is None else cutoff
    stats = [AgentStats.of(agent, rs, cut) for agent, rs in agents.items()]
    by_search, by_test, by_time = _ranks(stats, "search"), _ranks(stats, "test"), _ranks(stats, "by_time")
    stats.sort(key=lambda s: (by_search.get(s.agent, math.inf), s.agent))
    budgets = "/".join(map(str, sorted({r.episode_budget for r in runs})))
    fine = sorted({(r.finetune_epochs, r.finetune_samples) for r in runs}, key=str)
    fine_text = ", ".join("none" if not e else f"{e} epoch(s) x {s or 'the train split'}"
                          + (" samples" if s else "") for e, s in fine)
    fp32_test = _avg(runs, "fp32_test_metric", ".4f")
    note = _SEED_SET_NOTES[seed_set].format(seeds=", ".join(map(str, seeds)))
    if seed_set == "held-out" and len(seeds) < 3:
        note += " (fewer than 3: not for claims)"
    lines = [
        f"## {entry}: {note}", "",
        f"`{first.env_id}` (task {first.task}, {first.mode}): {first.resource} <= {first.target:g} of FP32, "
        f"{budgets} episodes per run. FP32 metric: search {first.fp32_metric:.4f}, test {fp32_test}. "
        f"Equal fine-tune: {fine_text}. Equal wall time: "
        + (f"{cut:.0f} s of search." if math.isfinite(cut) else "— (no curves)."), "",
        "| rank | agent | search metric | test after fine-tune (rank) | search metric at equal time (rank) "
        "| Δ FP32 test | size ratio | BitOPs ratio | episodes | search s | fine-tune s | validated |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    def ranked(value: str, ranks: dict[str, int], agent: str) -> str:
        return f"{value} ({ranks[agent]})" if agent in ranks else value

    for s in stats:
        found = [r for r in s.runs if r.found]
        search = _fmt(s.search, s.count([r.metric for r in s.runs])) if found else "none within budget"
        test = _fmt(s.test, s.count([r.test_metric for r in s.runs]))
        timed = _fmt(s.by_time, s.count([r.best_by(cut) if r.found else math.nan for r in s.runs]))
        delta = "—"
        if not math.isnan(s.test[0]):
            delta = f"{s.test[0] - statistics.fmean(r.fp32_test_metric for r in found):+.4f}"
        lines.append(
            f"| {by_search.get(s.agent, '—')} | {s.agent} | {search} | {ranked(test, by_test, s.agent)} "
            f"| {ranked(timed, by_time, s.agent)} | {delta} | {_avg(found, 'size_ratio', '.4f')} "
            f"| {_avg(found, 'bitops_ratio', '.4f')} | {_avg(s.runs, 'episodes', '.0f')} "
            f"| {_avg(s.runs, 'walltime', '.0f')} | {_avg(s.runs, 'finetune_seconds', '.0f')} "
            f"| {sum(r.validated for r in s.runs)}/{len(s.runs)} |"
        )
    return [*lines, ""]


#: what the columns of a section mean (the table's closing paragraph)
LEGEND = (
    "Search metric: search-split metric of each run's best recipe within the budget after the episode budget "
    "(rank: at equal episodes), mean over seeds ± sample std; test after fine-tune: test-split metric of that "
    "recipe after the entry's equal fine-tune (Δ FP32 test: against the FP32 model on test); at equal time: "
    "the best search metric each run had reached after the stated seconds of search; ratios against FP32 "
    "(mean); episodes run of the budget (baselines may stop early); search s / fine-tune s: seconds per run; "
    "validated: runs whose best recipe replayed to the same numbers in a fresh env. Only held-out sections "
    "with 3 or more seeds are for claims."
)


def entry_sections(rows: Sequence[LeaderboardRow], *, walltime_cutoff: float | None = None,
                   seed_sets: Sequence[str] | None = None) -> list[str]:
    """The Markdown lines of one section per entry (in order of first appearance) and seed set (held-out, tuning,
    other) of ``rows``, each headed ``## <entry>: <seed set> seeds ...``; see :func:`markdown_table`."""
    grouped: dict[str, dict[str, dict[str, list[LeaderboardRow]]]] = {}
    for row in rows:
        if seed_sets is None or row.seed_set in seed_sets:
            grouped.setdefault(row.entry, {}).setdefault(row.seed_set, {}).setdefault(row.agent, []).append(row)
    lines: list[str] = []
    for entry, sets in grouped.items():
        for seed_set in sorted(sets, key=lambda s: SEED_SETS.index(s) if s in SEED_SETS else len(SEED_SETS)):
            lines += _section(entry, seed_set, sets[seed_set], walltime_cutoff)
    return lines


def markdown_table(rows: Sequence[LeaderboardRow], *, walltime_cutoff: float | None = None,
                   seed_sets: Sequence[str] | None = None) -> str:
    """The table of ``rows``: one section per entry (in order of first appearance) and seed set (held-out, tuning,
    other), agents ranked at equal episodes, with their rank after the equal fine-tune and at equal wall time
    (``walltime_cutoff`` seconds of search; default per section, see :func:`default_walltime_cutoff`).

    :param seed_sets: only these seed sets (e.g. ``("held-out",)`` for a README or claims table); default all
    """
    rows = [r for r in rows if seed_sets is None or r.seed_set in seed_sets]
    lines = ["# AJPQ leaderboard", ""]
    if not rows:
        return "\n".join([*lines, "No runs yet.", ""])
    lines += [*entry_sections(rows, walltime_cutoff=walltime_cutoff), LEGEND, ""]
    failures = [f"- {r.entry} {r.agent} seed {r.seed} ({r.run}): {r.validation}" for r in rows if not r.validated]
    if failures:
        lines += ["Not validated:", "", *failures, ""]
    return "\n".join(lines)


def latest_per_key(rows: Sequence[LeaderboardRow]) -> list[LeaderboardRow]:
    """One row per (entry, agent, seed): the later one when the CSV holds two (with a warning)."""
    latest: dict[tuple[str, str, int], LeaderboardRow] = {}
    for row in rows:
        if row.key in latest:
            print(f"warning: {row.key} appears twice in the CSV; the table uses the later row", file=sys.stderr)
        latest[row.key] = row
    return list(latest.values())


def write_table(out: Path, rows: Sequence[LeaderboardRow], *, walltime_cutoff: float | None = None) -> str:
    """Write ``OUT/leaderboard.md`` from ``rows``; the table."""
    table = markdown_table(latest_per_key(rows), walltime_cutoff=walltime_cutoff)
    (out / TABLE_NAME).write_text(table)
    return table

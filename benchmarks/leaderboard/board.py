"""The leaderboard run: what is pending, where it runs, one flushed CSV row per finished run, and the table.

Order: everything is read and checked first (options, an existing CSV and its version, which runs are
missing, the Ray connection); only then is anything written (the output directory, the CSV, the table).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from agents.checkpoint import RUN_MARKER
from ajpq_env.records import RecordWriter
from benchmarks.leaderboard.config import LeaderboardConfig
from benchmarks.leaderboard.parallel import LeaderboardError, connect_ray, interrupt_on_sigterm, run_local, run_ray
from benchmarks.leaderboard.rows import LeaderboardRow, check_header, drop_partial_line, read_rows
from benchmarks.leaderboard.run import RUNS_DIR, RunResult, RunSpec
from benchmarks.leaderboard.suites import Entry
from benchmarks.leaderboard.table import write_table

__all__ = ["CSV_NAME", "LeaderboardOutcome", "run_leaderboard"]

CSV_NAME = "leaderboard.csv"


@dataclass
class LeaderboardOutcome:
    """What :func:`run_leaderboard` returns: every row of the CSV, the runs that failed (label, error), the entries
    skipped (name, reason), whether it was interrupted (and by which signal), and the table."""

    rows: list[LeaderboardRow]
    failed: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    interrupted: bool
    table: str
    signal: int | None = None


def _drop_checkpoint(run_dir: Path) -> None:
    """Remove a finished run's checkpoint (manifest first, so the directory never claims a missing checkpoint)."""
    import shutil

    (run_dir / "checkpoint.json").unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _pending(config: LeaderboardConfig, entries: list[Entry], done: dict[tuple[str, str, int], LeaderboardRow],
             out: Path) -> list[RunSpec]:
    suite = config.suite_spec()
    specs = []
    for entry in entries:
        episodes, finetune = config.episodes or entry.episodes, config.finetune_budget(entry)
        wanted = (entry.env, entry.target, entry.resource, episodes, finetune.epochs, finetune.samples_per_epoch)
        for entrant in config.entrants:
            for seed in config.seeds:
                spec = RunSpec(entry, entrant, seed, suite.seed_set(seed), episodes, str(out), finetune,
                               config.threads, config.tolerance)
                row = done.get(spec.key)
                if row is not None:
                    theirs = (row.env_id, row.target, row.resource, row.episode_budget, row.finetune_epochs,
                              row.finetune_samples)
                    if theirs != wanted:
                        raise LeaderboardError(
                            f"the CSV's run {spec.label()} was made with (env, target, resource, episodes, fine-tune "
                            f"epochs, fine-tune samples) {theirs}, this one asks for {wanted}: choose another --out"
                        )
                    continue
                if config.resume:  # continue the latest run folder of this run (from its checkpoint, or from 0)
                    interrupted = sorted((out / RUNS_DIR).glob(f"{spec.prefix}__*/{RUN_MARKER}"))
                    if interrupted:
                        spec = replace(spec, resume_dir=str(interrupted[-1].parent))
                specs.append(spec)
    return specs


def _read_existing(config: LeaderboardConfig, csv_path: Path) -> list[LeaderboardRow]:
    """The rows already in the CSV (read only: a partial last line is dropped later, when writing starts)."""
    if not csv_path.exists():
        return []
    try:
        check_header(csv_path)
        rows = read_rows(csv_path, complete_lines_only=config.resume)
    except ValueError as err:
        raise LeaderboardError(str(err)) from None
    if rows and not config.resume:
        raise LeaderboardError(
            f"{str(csv_path)!r} already holds {len(rows)} runs; pass --resume to complete it, or choose another --out"
        )
    return rows


def run_leaderboard(config: LeaderboardConfig) -> LeaderboardOutcome:
    """Run (or ``--resume``, or ``--table-only``) the leaderboard of ``config``; prints progress and the table.

    SIGTERM interrupts it as Ctrl-C does (finished rows stay, workers are stopped, ``--resume`` continues).

    :raises LeaderboardError: an existing CSV without ``--resume``, a CSV of other runs or of another version,
        ``--ray`` without Ray or without a cluster (nothing is written then)
    """
    out = Path(config.out)
    csv_path = out / CSV_NAME
    if config.table_only:
        if not csv_path.exists():
            raise LeaderboardError(f"no {CSV_NAME} in {str(out)!r}: run the leaderboard first (or check --out)")
        try:
            rows = read_rows(csv_path)
        except ValueError as err:
            raise LeaderboardError(str(err)) from None
        return LeaderboardOutcome(rows, [], [], False, write_table(out, rows, walltime_cutoff=config.walltime_cutoff))

    rows = _read_existing(config, csv_path)
    entries, skipped = [], []
    for entry in config.selected_entries():
        why = entry.unavailable()
        if why is None:
            entries.append(entry)
        else:
            skipped.append((entry.name, why))
            print(f"skip {entry.name}: {why}")
    specs = _pending(config, entries, {r.key: r for r in rows}, out.resolve() if config.ray else out)
    total = len(entries) * len(config.entrants) * len(config.seeds)
    where = f"Ray ({config.ray})" if config.ray else f"{config.workers} local worker(s)"
    print(f"leaderboard: suite {config.suite}, {len(entries)} entries x {len(config.entrants)} agents x "
          f"{len(config.seeds)} seeds ({config.seed_choice}: {' '.join(map(str, config.seeds))}) = {total} runs; "
          f"{total - len(specs)} in the CSV, {len(specs)} to run on {where}", flush=True)
    ray = connect_ray(config.ray, config.ray_options()) if specs and config.ray is not None else None

    # From here on, things are written.
    if config.resume and csv_path.exists() and drop_partial_line(csv_path):
        print(f"resume: dropped an incomplete last line of {csv_path}")
    failed: list[tuple[str, str]] = []
    interrupted, finished = False, 0
    writer = RecordWriter(csv_path, LeaderboardRow)

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
        if result.error is not None or result.row is None:
            failed.append((result.spec.label(), result.error or "no row"))
            print(f"{head}: FAILED\n{result.error}", file=sys.stderr, flush=True)
            return
        row = result.row
        writer.write(row)
        rows.append(row)
        if not config.keep_checkpoints:  # the row is on disk: the run's checkpoint is of no further use
            _drop_checkpoint(Path(result.spec.out) / row.run)
        found = "no recipe within the budget" if not row.found else (
            f"metric {row.metric:.4f}, {row.resource} {row.resource_ratio:.4f}")
        tested = "" if row.test_metric != row.test_metric else f", test {row.test_metric:.4f} after fine-tune"
        print(f"{head}: {found}{tested}, {row.episodes} episodes in {row.walltime:.0f} s; validation {row.validation}",
              flush=True)

    received: list[int] = []
    try:
        with interrupt_on_sigterm() as received:
            if ray is not None:
                run_ray(ray, specs, config.threads, handle)
            elif specs:
                run_local(specs, config.workers, config.threads, handle)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        writer.close()
        if ray is not None:
            ray.shutdown()
    table = write_table(out, rows, walltime_cutoff=config.walltime_cutoff)
    sig = received[0] if received else (signal.SIGINT if interrupted else None)
    return LeaderboardOutcome(rows, failed, skipped, interrupted, table, sig)

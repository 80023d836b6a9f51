"""``python -m benchmarks.leaderboard`` (and ``ajpq leaderboard``): the command line."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.leaderboard.board import CSV_NAME, run_leaderboard
from benchmarks.leaderboard.config import parse_args
from benchmarks.leaderboard.parallel import LeaderboardError
from benchmarks.leaderboard.table import TABLE_NAME

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """0 when done, 1 when a run failed, 2 for bad options (nothing written), 128 + the signal when interrupted
    (130 Ctrl-C, 143 SIGTERM; continue with ``--resume``)."""
    import benchmarks.leaderboard as package

    config = parse_args(argv, description=(package.__doc__ or "").split("\n\n")[0])
    if config is None:
        return 0
    try:
        outcome = run_leaderboard(config)
    except LeaderboardError as err:
        print(f"leaderboard: error: {err}", file=sys.stderr)
        return 2
    print()
    print(outcome.table)
    print(f"wrote {Path(config.out) / TABLE_NAME} ({len(outcome.rows)} runs in {Path(config.out) / CSV_NAME})")
    if outcome.interrupted:
        print(f"interrupted: run the same command with --resume to finish (--out {config.out})")
        return 128 + int(outcome.signal or 2)
    if outcome.failed:
        print(f"{len(outcome.failed)} run(s) failed: {', '.join(label for label, _ in outcome.failed)}", file=sys.stderr)
        return 1
    return 0

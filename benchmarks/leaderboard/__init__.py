"""The AJPQ leaderboard: fixed suites, every agent, held-out seeds, an equal fine-tune, every result validated.

A *suite* (:mod:`.suites`) is a fixed list of entries (env, budget, episode budget, fine-tune budget) with the
seeds its agents may be tuned on and the **held-out** seeds its tables report. For each entry, agent and seed the
leaderboard runs one ``ajpq search`` (:func:`agents.search.run_search`), replays the run's best recipe in a
**fresh** env (:mod:`.validate`: mismatches recorded, never raised), fine-tunes it with the entry's equal budget
and measures it on the **test** split (:mod:`.finetuning`, through :func:`ajpq_env.deploy.finetune`), and appends
one flushed row to ``OUT/leaderboard.csv`` (:mod:`.rows`). The table (``OUT/leaderboard.md``, also printed;
:mod:`.table`) ranks the agents of every entry and seed set at equal episodes, after the fine-tune and at equal
wall time. Runs execute in this process, in spawned workers or on Ray (:mod:`.parallel`). Any
:class:`~agents.base.SearchAgent` may enter (:mod:`.entrants`, ``SUBMITTING.md``).

    python -m benchmarks.leaderboard                                   # default suite, 6 agents, held-out seeds
    python -m benchmarks.leaderboard --suite embedded --entries mnist5k-mobilenet_v2/size-0.125 --seeds tuning
    python -m benchmarks.leaderboard --agents td3-twolevel my_pkg.agents:MyAgent      # an agent from outside
    python -m benchmarks.leaderboard --finetune-epochs 2 --finetune-samples 10000     # the equal fine-tune
    python -m benchmarks.leaderboard --resume                          # after an interrupt: only what is missing
    python -m benchmarks.leaderboard --workers 2 --threads 1           # local processes (spawn)
    python -m benchmarks.leaderboard --ray local --ray-cpus 2          # a private Ray instance on 127.0.0.1
    python -m benchmarks.leaderboard --ray auto                        # a running Ray cluster (pip install -e ".[ray]")
    python -m benchmarks.leaderboard --table-only --out runs/leaderboard --walltime-cutoff 120
    python -m benchmarks.leaderboard --list                            # suites, entries, seeds, agents

From a program::

    from benchmarks.leaderboard import LeaderboardConfig, run_leaderboard
    outcome = run_leaderboard(LeaderboardConfig(suite="smoke", agents=["random", MyAgent()], out="runs/lb"))

Layout of ``OUT`` (default ``runs/leaderboard``)::

    OUT/leaderboard.csv     one row per finished run, keyed by (entry, agent, seed); appended and flushed per run
    OUT/leaderboard.md      the table
    OUT/runs/<entry>__<agent>__s<seed>__<YYYYmmdd-HHMMSS>/   the run's ``ajpq search`` directory (episodes.csv,
                            best_recipe.json, TensorBoard; its checkpoint until the row is written, unless
                            ``--keep-checkpoints``)

``--resume`` skips runs already in the CSV and continues an interrupted run from its latest checkpoint in
``OUT/runs``. Entries whose env, data or weights are absent (CIFAR-10 needs ``AJPQ_DATA`` and ``AJPQ_WEIGHTS``)
are skipped with the reason printed. A run that raises is reported and leaves no row (``--resume`` retries it).
Exit codes: 0 done, 1 a run failed, 2 bad options (nothing written), 130 / 143 interrupted by Ctrl-C / SIGTERM.
"""

from benchmarks.leaderboard.board import CSV_NAME, LeaderboardOutcome, run_leaderboard
from benchmarks.leaderboard.config import DEFAULT_AGENTS, LeaderboardConfig, listing, parse_args
from benchmarks.leaderboard.entrants import Entrant, resolve_entrant
from benchmarks.leaderboard.finetuning import FinetuneBudget, finetune_row
from benchmarks.leaderboard.main import main
from benchmarks.leaderboard.parallel import LeaderboardError, connect_ray
from benchmarks.leaderboard.rows import COLUMNS, LeaderboardRow, best_curve, read_rows
from benchmarks.leaderboard.run import RunResult, RunSpec, execute_run
from benchmarks.leaderboard.suites import SUITES, Entry, Suite, entry
from benchmarks.leaderboard.table import TABLE_NAME, default_walltime_cutoff, markdown_table, write_table
from benchmarks.leaderboard.validate import replay_env, validate_row

__all__ = [
    "COLUMNS",
    "CSV_NAME",
    "DEFAULT_AGENTS",
    "SUITES",
    "TABLE_NAME",
    "Entrant",
    "Entry",
    "FinetuneBudget",
    "LeaderboardConfig",
    "LeaderboardError",
    "LeaderboardOutcome",
    "LeaderboardRow",
    "RunResult",
    "RunSpec",
    "Suite",
    "best_curve",
    "connect_ray",
    "default_walltime_cutoff",
    "entry",
    "execute_run",
    "finetune_row",
    "listing",
    "main",
    "markdown_table",
    "parse_args",
    "read_rows",
    "replay_env",
    "resolve_entrant",
    "run_leaderboard",
    "validate_row",
    "write_table",
]

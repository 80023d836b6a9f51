"""Every row validated by replay: the best recipe rebuilt and re-measured in a **fresh** env (a new env on a freshly
loaded task, nothing shared with the env that searched), in the manner of CompilerGym's ``validate()``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from benchmarks.leaderboard.rows import LeaderboardRow

if TYPE_CHECKING:
    from ajpq_env import AJPQEnv
    from ajpq_env.records import ValidationResult
    from ajpq_env.tasks import Task

__all__ = ["load_row_task", "replay_env", "validation_message", "validate_row"]

_TASK_KWARGS = ("data_root", "weights", "search_size")


def load_row_task(row: LeaderboardRow) -> Task:
    """``row``'s task, freshly loaded with the data and weights its ``env_kwargs`` name."""
    from ajpq_env.tasks import load_task

    return load_task(row.task, **{k: row.env_kwargs[k] for k in _TASK_KWARGS if k in row.env_kwargs})


def replay_env(row: LeaderboardRow) -> AJPQEnv:
    """A fresh env for ``row``: a new :class:`~ajpq_env.AJPQEnv` on :func:`load_row_task`, made with the row's
    ``env_kwargs``."""
    from ajpq_env import AJPQEnv

    kwargs = {k: v for k, v in row.env_kwargs.items() if k not in _TASK_KWARGS}
    return AJPQEnv(load_row_task(row), **kwargs)


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


def validation_message(result: ValidationResult) -> str:
    """``"OK"`` or the mismatches on one line."""
    return "OK" if result.ok else "; ".join(result.errors).replace("\n", " ")

"""The equal fine-tune: every run's best recipe gets the same quantization-aware fine-tune (the entry's epochs and
samples per epoch, seeded by the run's seed), then its **test**-split metric is measured, because the paper's
claims are about the network after fine-tuning. It goes through the library's API,
:func:`ajpq_env.deploy.finetune`, exactly as ``ajpq finetune --epochs N --samples-per-epoch M`` does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from benchmarks.leaderboard.rows import LeaderboardRow
from benchmarks.leaderboard.validate import load_row_task

__all__ = ["FinetuneBudget", "finetune_row"]


@dataclass(frozen=True)
class FinetuneBudget:
    """The equal fine-tune of an entry.

    :param epochs: passes over ``samples_per_epoch`` training samples (0: no fine-tune)
    :param samples_per_epoch: training samples per epoch (``None``: the whole train split)
    """

    epochs: int
    samples_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"--finetune-epochs must be >= 0 (0: no fine-tune), got {self.epochs}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 2:
            raise ValueError(f"--finetune-samples must be >= 2 (BatchNorm needs 2 samples), got {self.samples_per_epoch}")

    def describe(self) -> str:
        if not self.epochs:
            return "no fine-tune"
        per = "the train split" if self.samples_per_epoch is None else f"{self.samples_per_epoch} samples"
        return f"{self.epochs} epoch(s) x {per}"


def finetune_row(row: LeaderboardRow, budget: FinetuneBudget) -> dict[str, float | int | None]:
    """Fine-tune ``row``'s best recipe on a freshly loaded task; the row's fine-tune fields (none when the row has no
    recipe or ``budget.epochs`` is 0: its test fields stay NaN)."""
    from ajpq_env.compression import Policy
    from ajpq_env.deploy import FinetuneConfig, finetune

    fields: dict[str, float | int | None] = {
        "finetune_epochs": budget.epochs, "finetune_samples": budget.samples_per_epoch,
    }
    if not budget.epochs or not row.found:
        return fields
    start = time.perf_counter()
    config = FinetuneConfig(
        epochs=budget.epochs, samples_per_epoch=budget.samples_per_epoch, seed=row.seed, progress=False,
        evaluate_search=False, evaluate_baselines=True,
    )
    tuned = finetune(load_row_task(row), Policy.from_dict(row.recipe), config)
    metrics = tuned.metrics
    return {
        **fields,
        "test_metric": metrics["test"],
        "test_before_finetune": metrics.get("before_test", math.nan),
        "fp32_test_metric": metrics.get("fp32_test", math.nan),
        "finetune_search_metric": metrics.get("search", math.nan),
        "finetune_seconds": time.perf_counter() - start,
    }

"""AJPQ tasks: model + weights + data splits + metric. The data loaders live in :mod:`ajpq_env.tasks.data`."""

from ajpq_env.tasks.registry import (
    SYNTHETIC_PREFIX,
    TASKS,
    Split,
    Task,
    TaskSpec,
    dataset_splits,
    load_splits,
    load_task,
    resolve_weights,
    synthetic_task,
)

__all__ = [
    "SYNTHETIC_PREFIX",
    "TASKS",
    "Split",
    "Task",
    "TaskSpec",
    "dataset_splits",
    "load_splits",
    "load_task",
    "resolve_weights",
    "synthetic_task",
]

"""AJPQ tasks: model + weights + data splits + metric. The data loaders live in :mod:`ajpq_env.tasks.data`."""

from ajpq_env.tasks.registry import TASKS, Split, Task, TaskSpec, load_task, resolve_weights, synthetic_task

__all__ = ["TASKS", "Split", "Task", "TaskSpec", "load_task", "resolve_weights", "synthetic_task"]

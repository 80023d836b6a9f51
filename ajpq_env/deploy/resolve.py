"""Where a deployment step gets its task, architecture and recipe from, and the checks that they belong together.

A recipe (a :class:`~ajpq_env.compression.Policy` saved as JSON) carries ``meta["task"]`` and ``meta["model"]``
when it comes from a search. Every deploy step checks them against the task it is given and refuses a recipe
made for another task or model with a message that names both; a recipe without that meta is still checked
layer by layer against the model's compression graph.

Task names are those of :data:`ajpq_env.tasks.TASKS`, plus ``synthetic-<model>`` for the tiny random task of
:func:`ajpq_env.tasks.synthetic_task` (random weights and data; for tests and demos).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ajpq_env import tasks
from ajpq_env.compression import B_MAX, B_MIN, CompressionGraph, Policy
from ajpq_env.models import MODELS, build_model
from ajpq_env.tasks import SYNTHETIC_PREFIX, TASKS, Split, Task, load_task, synthetic_task

__all__ = ["SYNTHETIC_PREFIX", "Architecture", "check_recipe", "fit_recipe", "load_recipe", "load_splits",
           "recipe_task_name", "resolve_task", "task_architecture"]


def _known_tasks() -> str:
    return ", ".join([*sorted(TASKS), f"{SYNTHETIC_PREFIX}<model> (model in {sorted(MODELS)})"])


def _synthetic_model(name: str) -> str | None:
    if not name.startswith(SYNTHETIC_PREFIX):
        return None
    model = name[len(SYNTHETIC_PREFIX):]
    if model not in MODELS:
        raise ValueError(f"unknown task {name!r}; expected one of: {_known_tasks()}")
    return model


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the uncompressed network without its weights.

    :param task: name of the task the model belongs to
    :param builder: model builder name in :data:`ajpq_env.models.MODELS`
    :param builder_kwargs: the builder's keyword arguments (JSON-serialisable)
    :param input_shape: one sample's shape ``(C, H, W)``
    :param importance: importance criterion of the compression graph (``"l1"`` or ``"l2"``); only the ranking
        of channels depends on it, never which channels a recipe prunes
    """

    task: str
    builder: str
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (3, 32, 32)
    importance: str = "l1"

    @classmethod
    def from_task(cls, task: Task, importance: str = "l1") -> Architecture:
        spec = task.spec
        return cls(task.name, spec.model, dict(spec.model_kwargs), tuple(spec.input_shape), importance)

    def example_input(self) -> torch.Tensor:
        """A zero batch of one sample, for tracing and ONNX export."""
        return torch.zeros(1, *self.input_shape)

    def build(self) -> nn.Module:
        """The architecture with random weights, in eval mode."""
        return build_model(self.builder, **self.builder_kwargs).eval()

    def graph(self, model: nn.Module | None = None) -> CompressionGraph:
        """The compression graph of ``model`` (default: a freshly built, uncompressed copy)."""
        return CompressionGraph(self.build() if model is None else model, self.example_input(), self.importance)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "builder": self.builder, "builder_kwargs": dict(self.builder_kwargs),
                "input_shape": list(self.input_shape), "importance": self.importance}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        try:
            return cls(str(data["task"]), str(data["builder"]), dict(data["builder_kwargs"]),
                       tuple(int(v) for v in data["input_shape"]), str(data.get("importance", "l1")))
        except KeyError as err:
            raise ValueError(f"architecture record lacks {err}; expected task, builder, builder_kwargs, "
                             "input_shape") from None


def resolve_task(
    name: str,
    *,
    data_root: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> Task:
    """Load task ``name`` (a key of :data:`~ajpq_env.tasks.TASKS` or ``synthetic-<model>``).

    :param data_root: data set root (CIFAR-10, ImageNet); default ``$AJPQ_DATA``
    :param weights: FP32 weights file or folder; default: the packaged file, then ``$AJPQ_WEIGHTS``
    """
    model = _synthetic_model(name)
    if model is not None:
        return synthetic_task(model)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of: {_known_tasks()}")
    return load_task(name, data_root=data_root, weights=weights)


def task_architecture(name: str, importance: str = "l1") -> Architecture:
    """The architecture of task ``name`` without loading its weights or data (synthetic tasks build theirs)."""
    model = _synthetic_model(name)
    if model is not None:
        return Architecture.from_task(synthetic_task(model, sizes=(2, 2, 2)), importance)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of: {_known_tasks()}")
    spec = TASKS[name]
    return Architecture(name, spec.model, dict(spec.model_kwargs), tuple(spec.input_shape), importance)


def load_splits(name: str, *, data_root: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """The data splits of task ``name`` without its FP32 weights (an exported artefact brings its own)."""
    if _synthetic_model(name) is None and name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of: {_known_tasks()}")
    return tasks.load_splits(name, data_root=data_root)


def recipe_task_name(policy: Policy, task: str | None = None, *, source: str = "the recipe") -> str:
    """The task a command should load: ``task`` when given, else the recipe's ``meta["task"]``.

    Raises ``ValueError`` when both are given and differ (naming both), or when neither is.
    """
    recorded = policy.meta.get("task")
    if task is not None and recorded is not None and task != recorded:
        model = _synthetic_model(task) if task.startswith(SYNTHETIC_PREFIX) else getattr(TASKS.get(task), "model", "?")
        raise ValueError(
            f"{source} was made for task {recorded!r} (model {policy.meta.get('model', '?')!r}), not for task "
            f"{task!r} (model {model!r}); pass a recipe searched on {task!r}, or drop --task to use {recorded!r}"
        )
    name = task or recorded
    if not name:
        raise ValueError(f"{source} does not name its task (no meta['task']); pass --task NAME ({_known_tasks()})")
    return str(name)


def check_recipe(policy: Policy, task: str, model: str, *, source: str = "the recipe") -> None:
    """Refuse a recipe whose ``meta`` names another task or model, naming both."""
    rec_task, rec_model = policy.meta.get("task"), policy.meta.get("model")
    if (rec_task is not None and rec_task != task) or (rec_model is not None and rec_model != model):
        raise ValueError(
            f"{source} was made for task {rec_task or '?'!r} (model {rec_model or '?'!r}) but is applied to task "
            f"{task!r} (model {model!r}); use the recipe of a search on {task!r}"
        )


def fit_recipe(policy: Policy, graph: CompressionGraph, *, task: str, model: str, source: str = "the recipe") -> None:
    """:func:`check_recipe`, then validate the bit-widths against ``graph`` (range from ``meta`` b_min/b_max)."""
    check_recipe(policy, task, model, source=source)
    b_min = int(policy.meta.get("b_min", B_MIN))
    b_max = int(policy.meta.get("b_max", B_MAX))
    try:
        policy.validate(graph, b_min, b_max)
    except ValueError as err:
        raise ValueError(f"{source} does not fit task {task!r} (model {model!r}): {err}") from None


def load_recipe(path: str | os.PathLike[str]) -> Policy:
    """Read a recipe JSON file (``FileNotFoundError`` / ``ValueError`` name the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best_recipe.json"
    try:
        return Policy.load(path)
    except ValueError as err:
        raise ValueError(f"{str(path)!r}: {err}") from None

"""Where a deployment step gets its task, architecture and recipe from, and the checks that they belong together.

A recipe (a :class:`~ajpq_env.compression.Policy` saved as JSON) carries ``meta["task"]`` and ``meta["model"]``
when it comes from a search. Every deploy step checks them against the task it is given and refuses a recipe
made for another task or model with a message that names both; a recipe without that meta is still checked
layer by layer against the model's compression graph.

Task names are those of :data:`ajpq_env.tasks.TASKS`, plus ``synthetic-<model>`` for the tiny random task of
:func:`ajpq_env.tasks.synthetic_task` (random weights and data; for tests and demos).

A recipe file is checked before it is used (:func:`check_recipe_data`): at most :data:`MAX_RECIPE_BYTES`, bit-widths
that are JSON integers (``"4"`` or ``null`` are refused, not cast), and every ``meta`` entry that a deploy step
obeys of the right type and within :data:`RECIPE_META_LIMITS` (``finetune_steps`` 1e9 would make ``ajpq export``
run for days): a recipe may come from anyone.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ajpq_env import tasks
from ajpq_env.compression import B_MAX, B_MIN, IMPORTANCES, CompressionGraph, Policy
from ajpq_env.compression.cost import LATENCY, RESOURCES
from ajpq_env.compression.policy import RECIPE_FORMAT
from ajpq_env.deploy._cli import existing_file
from ajpq_env.fileio import loads_json
from ajpq_env.models import MODELS, build_model
from ajpq_env.models.registry import check_architecture
from ajpq_env.tasks import SYNTHETIC_PREFIX, TASKS, Split, Task, load_task, synthetic_task

__all__ = ["MAX_RECIPE_BYTES", "RECIPE_META_LIMITS", "SYNTHETIC_PREFIX", "Architecture", "check_recipe",
           "check_recipe_data", "fit_recipe", "load_recipe", "load_splits", "recipe_task_name", "resolve_task",
           "task_architecture"]

#: the largest recipe file read (a MobileNetV2 recipe is about 20 kB)
MAX_RECIPE_BYTES = 16 * 2**20
#: ``meta`` entries of a recipe that deploy steps obey: ``(type, low, high)`` for numbers, or the allowed values.
#: ``finetune_steps`` and the calibration settings are what ``ajpq export`` runs for a recipe source.
RECIPE_META_LIMITS: dict[str, tuple[type, float, float] | tuple[str, ...]] = {
    "b_min": (int, 1, 8), "b_max": (int, 1, 8), "fixed_bits": (int, 1, 8), "a_bits": (int, 1, 32),
    "num_buckets": (int, 1, 64), "channel_round": (int, 1, 4096),
    "bn_calibration_batches": (int, 0, 1000), "calibration_batch_size": (int, 1, 4096),
    "finetune_steps": (int, 0, 10_000), "finetune_lr": (float, 0.0, 10.0), "eval_batch_size": (int, 1, 65_536),
    "target": (float, 0.0, 1.0), "max_sparsity": (float, 0.0, 1.0),
    "importance": tuple(IMPORTANCES), "resource": (*RESOURCES, LATENCY), "mode": ("joint", "prune", "quant", "fixed"),
}


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
    def from_dict(cls, data: object, source: str = "architecture record") -> Architecture:
        """The architecture :meth:`to_dict` wrote; ``ValueError`` naming ``source`` and the field when it is not
        one (checked by :func:`~ajpq_env.models.registry.check_architecture` before anything is built)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping with task, builder, builder_kwargs, input_shape, got "
                             f"{type(data).__name__}")
        missing = [key for key in ("task", "builder", "builder_kwargs", "input_shape") if key not in data]
        if missing:
            raise ValueError(f"{source} lacks {', '.join(missing)}; expected task, builder, builder_kwargs, input_shape")
        if not isinstance(data["task"], str) or not isinstance(data.get("importance", "l1"), str):
            raise ValueError(f"{source}: task and importance must be strings")
        check_architecture(data["builder"], data["builder_kwargs"], data["input_shape"], source)
        return cls(data["task"], data["builder"], dict(data["builder_kwargs"]), tuple(data["input_shape"]),
                   data.get("importance", "l1"))


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
    check_recipe_data(policy.to_dict(), source)
    b_min = int(policy.meta.get("b_min", B_MIN))
    b_max = int(policy.meta.get("b_max", B_MAX))
    try:
        policy.validate(graph, b_min, b_max)
    except ValueError as err:
        raise ValueError(f"{source} does not fit task {task!r} (model {model!r}): {err}") from None


def check_recipe_data(data: object, source: str = "the recipe") -> None:
    """Check a recipe's JSON value before it becomes a :class:`~ajpq_env.compression.Policy`.

    :raises ValueError: naming ``source`` and the entry: not the recipe format, a bit-width that is not a JSON
        integer in 0..32, a ``meta`` entry of the wrong type or outside :data:`RECIPE_META_LIMITS`
    """
    if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT or not isinstance(data.get("layers"), dict):
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{source} is not an AJPQ recipe: expected a JSON object with format {RECIPE_FORMAT!r} and "
                         f"'layers', got {found!r}")
    for name, bits in data["layers"].items():
        if not isinstance(bits, list) or not bits:
            raise ValueError(f"{source}: layer {name!r} must be a non-empty list of bit-widths, got {type(bits).__name__}")
        bad = [b for b in bits if type(b) is not int or not 0 <= b <= 32]  # type(): a JSON true is no bit-width
        if bad:
            raise ValueError(f"{source}: layer {name!r} has bit-width {json.dumps(bad[0])}; expected JSON integers in "
                             "0..32 (0 = pruned), such as 4, not \"4\" or null")
    meta = data.get("meta", {})
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise ValueError(f"{source}: 'meta' must be a JSON object, got {type(meta).__name__}")
    for key in ("task", "model"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], str):
            raise ValueError(f"{source}: meta[{key!r}] must be a string, got {json.dumps(meta[key])}")
    for key, limit in RECIPE_META_LIMITS.items():
        if key not in meta or meta[key] is None:
            continue
        value = meta[key]
        if isinstance(limit[0], type):
            kind, low, high = limit
            ok = not isinstance(value, bool) and (isinstance(value, int) if kind is int else
                                                  isinstance(value, int | float) and math.isfinite(value))
            if not ok or not low <= value <= high:
                what = "an integer" if kind is int else "a finite number"
                raise ValueError(f"{source}: meta[{key!r}] must be {what} in {low:g}..{high:g}, got {json.dumps(value)}")
        elif value not in limit:
            raise ValueError(f"{source}: meta[{key!r}] must be one of {list(limit)}, got {json.dumps(value)}")
    if isinstance(meta.get("b_min"), int) and isinstance(meta.get("b_max"), int) and meta["b_min"] > meta["b_max"]:
        raise ValueError(f"{source}: meta b_min {meta['b_min']} is larger than b_max {meta['b_max']}")


def load_recipe(path: str | os.PathLike[str]) -> Policy:
    """Read and check a recipe JSON file (``FileNotFoundError`` / ``ValueError`` name the file); a folder stands for
    its ``best_recipe.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / "best_recipe.json"
    existing_file(path, "recipe file")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ValueError(f"{str(path)!r} is larger than {MAX_RECIPE_BYTES} bytes: not a recipe")
    try:
        data = loads_json(path.read_bytes())
    except (ValueError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a JSON recipe: {err}") from None
    check_recipe_data(data, f"recipe {str(path)!r}")
    try:
        return Policy.from_dict(data)
    except ValueError as err:
        raise ValueError(f"{str(path)!r}: {err}") from None

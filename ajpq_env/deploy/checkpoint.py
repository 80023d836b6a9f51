"""The fine-tuned model on disk: a physically pruned ``state_dict`` whose weights lie on the recipe's grid.

A fine-tuning output folder holds::

    model.pt        torch.save of {"format", "architecture", "recipe", "state_dict", "metrics", "a_bits",
                    "act_qparams"}
                    (plain tensors and JSON-like values: torch.load(path, weights_only=True) reads it)
    recipe.json     the recipe (same as in model.pt), for other tools
    finetune.json   settings, per-epoch history, metrics, the recipe's cost (what `ajpq report` shows)

:meth:`Finetuned.load` rebuilds the architecture, removes the recipe's pruned channels with the engine's
:func:`~ajpq_env.compression.physically_prune`, loads the state dict strictly and checks that every
compressible weight is on the recipe's quantization grid, so ``ajpq export`` packs exactly what was trained.
``act_qparams`` are the ``(scale, zero point)`` of its activation quantizers as calibrated at the end of training
(:meth:`Finetuned.deployable` rebuilds the deployed network without any data).
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

from ajpq_env.compression import CompressionGraph, CostModel, Policy, physically_prune, pruned_indices
from ajpq_env.compression.actquant import ACT_BITS
from ajpq_env.compression.pipeline import Deployable
from ajpq_env.compression.qat import grid_errors
from ajpq_env.deploy.resolve import Architecture, fit_recipe
from ajpq_env.fileio import atomic_write, loads_json

__all__ = ["CHECKPOINT_FORMAT", "Finetuned"]

CHECKPOINT_FORMAT = "ajpq-finetuned/2"
MODEL_FILE = "model.pt"
RECIPE_FILE = "recipe.json"
SUMMARY_FILE = "finetune.json"
#: Largest tolerated distance from the grid, relative to a layer's max |w| (float32 re-derivation of scales).
GRID_RTOL = 1e-6


@dataclass
class Finetuned:
    """A physically pruned model whose compressible weights lie on a recipe's quantization grid.

    :param model: the network (eval mode), 0-bit channels removed
    :param policy: the recipe
    :param architecture: how to rebuild the uncompressed network
    :param metrics: named results (fractions in [0, 1]), e.g. ``test``, ``search``, ``fp32_test``, ``before_test``
    :param history: one dict per epoch (``epoch``, ``loss``, ``train_metric``, ``lr``, ``search``, ``seconds``)
    :param config: the fine-tuning settings
    :param seconds: wall time of the fine-tuning (s)
    :param a_bits: activation bit-width of the deployed network
    :param qparams: ``(scale, zero point)`` of every activation quantizer (``a_bits`` <= 8), in graph order
    """

    model: nn.Module
    policy: Policy
    architecture: Architecture
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    a_bits: int = 32
    qparams: list[tuple[float, int]] | None = None

    def deployable(self) -> Deployable:
        """The model with its stored activation ranges, ready for :func:`~ajpq_env.deploy.export_model`."""
        return Deployable(self.model, self.policy, self.a_bits, qparams=self.qparams)

    def graph(self) -> CompressionGraph:
        """The compression graph of the *uncompressed* architecture (what export and the cost model need)."""
        return self.architecture.graph()

    def cost(self, graph: CompressionGraph | None = None) -> dict[str, Any]:
        """The recipe's cost: ``size_bytes`` (packed payload), MACs, BitOPs, and ratios against FP32."""
        costs = CostModel(graph or self.graph(), self.a_bits)
        cost = costs(self.policy)
        return {**cost.to_dict(), "fp32_size_bytes": costs.fp32.size_bytes,
                **{f"{k}_ratio": v for k, v in cost.ratios(costs.fp32).items()}}

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``model.pt``, ``recipe.json`` and ``finetune.json`` into ``out_dir`` (created); return the folder."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch.save({"format": CHECKPOINT_FORMAT, "architecture": self.architecture.to_dict(),
                    "recipe": self.policy.to_dict(), "state_dict": state, "metrics": dict(self.metrics),
                    "a_bits": self.a_bits, "act_qparams": [list(q) for q in self.qparams or []]},
                   out / MODEL_FILE)
        self.policy.save(out / RECIPE_FILE)
        summary = {
            "task": self.architecture.task, "recipe_digest": self.policy.digest(), "metrics": self.metrics,
            "cost": self.cost(), "seconds": self.seconds, "config": self.config, "history": self.history,
        }
        atomic_write(out / SUMMARY_FILE, json.dumps(summary, indent=1))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Finetuned:
        """Read a fine-tuning output (its folder or its ``model.pt``); the model comes back in eval mode."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"fine-tuned checkpoint {str(path)!r} does not exist (run `ajpq finetune` first)")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our file"
            raise ValueError(f"{str(path)!r} is not a fine-tuned AJPQ checkpoint: {err}") from None
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{str(path)!r}: expected a checkpoint of format {CHECKPOINT_FORMAT!r}, got {found!r}")
        missing = [key for key in ("architecture", "recipe", "state_dict") if key not in data]
        if missing:
            raise ValueError(f"{str(path)!r} lacks {', '.join(missing)}: not a checkpoint `ajpq finetune` wrote")
        if not isinstance(data["state_dict"], dict) or not isinstance(data.get("metrics", {}), dict):
            raise ValueError(f"{str(path)!r}: state_dict and metrics must be mappings")
        metrics = data.get("metrics", {})
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()):
            raise ValueError(f"{str(path)!r}: metrics must map names to numbers")
        architecture = Architecture.from_dict(data["architecture"], f"{str(path)!r} architecture")
        policy = Policy.from_dict(data["recipe"])
        graph = architecture.graph()
        fit_recipe(policy, graph, task=architecture.task, model=architecture.builder, source=f"checkpoint {path}")
        model = architecture.build()
        physically_prune(model, graph, pruned_indices(graph, policy))
        try:
            model.load_state_dict(data["state_dict"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"{str(path)!r}: state dict does not match the pruned architecture: {err}") from None
        model.eval()
        problems = grid_errors(model, graph, policy, rtol=GRID_RTOL)
        if problems:
            raise ValueError(f"{str(path)!r}: weights are not on the recipe's quantization grid: {'; '.join(problems)}")
        a_bits, qparams = _activation_ranges(data, graph, path)
        summary_path = path.parent / SUMMARY_FILE
        try:  # the summary beside it only adds the training history to the printout
            summary = loads_json(summary_path.read_bytes()) if summary_path.is_file() else {}
            history, config = list(summary.get("history", [])), dict(summary.get("config", {}))
            seconds = float(summary.get("seconds", 0.0))
        except (OSError, ValueError, TypeError, AttributeError):
            history, config, seconds = [], {}, 0.0
        return cls(model, policy, architecture, dict(metrics), history, config, seconds, a_bits, qparams)


def _activation_ranges(data: dict[str, Any], graph: CompressionGraph, path: Path) -> tuple[int, list | None]:
    """``a_bits`` and the activation quantizers' ``(scale, zero point)`` of a checkpoint, checked."""
    a_bits = data.get("a_bits")
    if a_bits not in ACT_BITS:
        raise ValueError(f"{str(path)!r}: a_bits must be one of {list(ACT_BITS)}, got {a_bits!r}")
    if a_bits == 32:
        return a_bits, None
    raw = data.get("act_qparams")
    if not isinstance(raw, list) or len(raw) != graph.deploy.quantizers:
        raise ValueError(f"{str(path)!r}: expected {graph.deploy.quantizers} activation ranges, got "
                         f"{len(raw) if isinstance(raw, list) else type(raw).__name__}")
    qparams = []
    for item in raw:
        ok = isinstance(item, list | tuple) and len(item) == 2
        scale, zero_point = item if ok else (None, None)
        if not (ok and isinstance(scale, float) and math.isfinite(scale) and scale > 0 and isinstance(zero_point, int)
                and not isinstance(zero_point, bool) and 0 <= zero_point < 2**a_bits):
            raise ValueError(f"{str(path)!r}: bad activation range {item!r} (expected [scale > 0, zero point in "
                             f"0..{2**a_bits - 1}])")
        qparams.append((scale, zero_point))
    return a_bits, qparams

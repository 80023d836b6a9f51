"""Importance criteria: one score per output channel of a layer's weight; higher means more important.

Both controllers of AJPQ follow one criterion: the lowest-scoring channels are the ones pruned (set to 0 bits)
and the survivors are ranked by the same score when bit-widths are handed out. Criteria are small swappable
classes in the manner of ``torch_pruning.pruner.importance``; they score a single weight tensor, and
:class:`~ajpq_env.compression.graph.CompressionGraph` combines the scores of coupled layers.
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["IMPORTANCES", "Importance", "L1Importance", "L2Importance", "get_importance"]


class Importance(Protocol):
    """Maps a weight of shape ``(out_channels, ...)`` to a float tensor of shape ``(out_channels,)``."""

    name: str

    def __call__(self, weight: torch.Tensor) -> torch.Tensor: ...


class LpImportance:
    """The p-norm of each output channel's kernel (Li et al. 2017 use p=1)."""

    def __init__(self, p: int) -> None:
        self.p = p
        self.name = f"l{p}"

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(weight.detach().flatten(1).double(), ord=self.p, dim=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class L1Importance(LpImportance):
    """L1 norm of each output channel's kernel (the default criterion)."""

    def __init__(self) -> None:
        super().__init__(1)


class L2Importance(LpImportance):
    """L2 norm of each output channel's kernel."""

    def __init__(self) -> None:
        super().__init__(2)


IMPORTANCES: dict[str, type] = {"l1": L1Importance, "l2": L2Importance}


def get_importance(name: str) -> Importance:
    """The criterion called ``name`` (``"l1"`` or ``"l2"``); a ``ValueError`` lists the valid names."""
    try:
        return IMPORTANCES[name]()
    except KeyError:
        raise ValueError(f"unknown importance criterion {name!r}; expected one of {sorted(IMPORTANCES)}") from None

"""Per-layer sensitivity of a task's network: how much the task's loss grows when one layer alone is quantized
harder, or one coupling group alone is pruned, everything else at 8 bits (HAQ's and Galen's per-layer probes).

The loss (the task's training loss on the probe samples) rather than the metric: a 500-sample accuracy moves in
steps of 0.2 pt, so most single-layer probes of a robust network would read 0 or noise, while the loss changes
smoothly with every logit.

Measured once per task and evaluation setting on a prefix of the search split, then cached on disk (JSON, keyed by
the weights' hash and the settings), so that agents can use it as a prior or as observation features without
paying for it again. A probe is an ordinary evaluation of the deployed network (:class:`~ajpq_env.compression.
pipeline.Compressor`), so it measures exactly what the reward measures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ajpq_env.compression import CompressionGraph, Policy
from ajpq_env.compression.pipeline import Compressor, DeploySettings, calibration_indices
from ajpq_env.fileio import atomic_write, loads_json
from ajpq_env.tasks import Task
from ajpq_env.tasks.data import cache_dir

__all__ = ["PROBE_BITS", "PROBE_SPARSITY", "Sensitivity", "layer_sensitivity"]

#: Bit-widths probed per layer (the others interpolate: every extra bit divides the error by about 4).
PROBE_BITS = (2, 3, 4)
#: Fraction of a group's channels pruned by its probe (the least important ones).
PROBE_SPARSITY = 0.5
_FORMAT = "ajpq-sensitivity/2"


@dataclass
class Sensitivity:
    """Loss added per probe, against the network with every layer at 8 bits.

    :param reference: the task's loss of the 8-bit network on the probe samples
    :param bits: the probed bit-widths
    :param quant_drop: ``(layers, len(bits))`` loss added with layer ``l`` alone at ``bits[j]``
    :param prune_drop: ``(groups,)`` loss added with group ``g`` alone pruned by :data:`PROBE_SPARSITY` (``nan`` for
        groups that cannot be pruned)
    :param samples: search samples the probes used
    """

    reference: float
    bits: tuple[int, ...]
    quant_drop: np.ndarray
    prune_drop: np.ndarray
    samples: int

    def drop_at(self, layer: int, bits: int) -> float:
        """Interpolated loss added with ``layer`` at ``bits`` (0 at 8 bits; quantization noise falls ~4x per bit)."""
        row = np.maximum(self.quant_drop[layer], 0.0)
        if bits in self.bits:
            return float(row[self.bits.index(bits)])
        top = max(self.bits)
        if bits > top:
            return float(row[self.bits.index(top)]) * 4.0 ** (top - bits) if bits < 8 else 0.0
        return float(row[0])  # below the smallest probe: the smallest probe's drop

    def to_dict(self) -> dict:
        data = asdict(self)
        data["quant_drop"] = self.quant_drop.tolist()
        data["prune_drop"] = [None if np.isnan(v) else float(v) for v in self.prune_drop]
        return {"format": _FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict) -> Sensitivity:
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a sensitivity table of format {_FORMAT!r}")
        return cls(
            reference=float(data["reference"]), bits=tuple(int(b) for b in data["bits"]),
            quant_drop=np.asarray(data["quant_drop"], dtype=np.float64),
            prune_drop=np.asarray([np.nan if v is None else v for v in data["prune_drop"]], dtype=np.float64),
            samples=int(data["samples"]),
        )


def _weights_digest(task: Task) -> str:
    h = hashlib.sha256(task.name.encode())
    for name, tensor in task.model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def layer_sensitivity(
    task: Task,
    graph: CompressionGraph,
    settings: DeploySettings | None = None,
    *,
    samples: int = 500,
    cache: bool = True,
) -> Sensitivity:
    """Measure (or read from the cache) the per-layer sensitivity of ``task``'s network.

    :param task: the loaded task
    :param graph: its compression graph
    :param settings: how probes are built (as the env's reward; default :class:`DeploySettings`)
    :param samples: search-split samples per probe (a prefix of the split), at most 2,048 (one batch)
    :param cache: read and write the on-disk cache (``$AJPQ_CACHE`` or ``~/.cache/ajpq``, ``sensitivity/``)
    """
    settings = settings or DeploySettings()
    search = task.splits["search"]
    samples = min(samples, len(search), 2048)
    key = hashlib.sha256(json.dumps(
        [_weights_digest(task), settings.to_dict(), samples, PROBE_BITS, PROBE_SPARSITY, graph.importance.name],
        sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "sensitivity" / f"{task.name}-{key}.json"
    if cache and path.is_file():
        try:
            return Sensitivity.from_dict(loads_json(path.read_text()))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            pass  # a damaged cache entry is measured again and replaced
    train = task.splits["train"]
    calibration = [train.batch(i)[0] for i in calibration_indices(len(train), settings.bn_calibration_batches,
                                                                    settings.calibration_batch_size)]
    probe = Compressor(task.model, graph, calibration, DeploySettings(**{**settings.to_dict(), "finetune_steps": 0}))
    x, y = search.batch(np.arange(samples))
    metric = task.metric

    @torch.inference_mode()
    def measure(policy: Policy) -> float:
        return float(metric.loss(probe.deploy(policy)(x), y))

    base = {layer.name: np.full(layer.out_channels, 8) for layer in graph.layers}
    # the first search of a task waits for these probes (minutes on a large network): say so on a terminal
    # (disable=None: silent when stderr is not one, as in logs and workers)
    bar = tqdm(total=1 + len(graph.layers) * len(PROBE_BITS) + len(graph.groups), unit="probe", leave=False,
               desc=f"sensitivity of {task.name} (once; cached)", disable=None)
    reference = measure(Policy(base))
    bar.update()
    quant = np.zeros((len(graph.layers), len(PROBE_BITS)))
    for layer in graph.layers:
        for j, bits in enumerate(PROBE_BITS):
            quant[layer.index, j] = measure(Policy({**base, layer.name: np.full(layer.out_channels, bits)})) - reference
            bar.update()
    prune = np.full(len(graph.groups), np.nan)
    for group in graph.groups:
        bar.update()
        if group.locked:
            continue
        pruned = graph.group_rank[group.id][group.channels - int(group.channels * PROBE_SPARSITY):]
        if pruned.size == 0 or pruned.size >= group.channels:
            continue
        bits = dict(base)
        for member in group.members:
            row = np.full(graph.layer(member).out_channels, 8)
            row[pruned] = 0
            bits[member] = row
        prune[group.id] = measure(Policy(bits)) - reference
    bar.close()
    result = Sensitivity(reference, PROBE_BITS, quant, prune, samples)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(result.to_dict()))
    return result

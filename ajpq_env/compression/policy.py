"""The one data structure of a compression decision: a bit-width per output channel of every layer.

A bit-width of 0 means the channel is pruned; otherwise it lies in ``b_min..b_max``. A :class:`Policy` is a
plain mapping ``layer name -> int array`` with a JSON form (the *recipe*), a stable hash (the evaluation cache
key) and a validator that checks it against a :class:`~ajpq_env.compression.graph.CompressionGraph`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ajpq_env.compression.graph import CompressionGraph
from ajpq_env.fileio import atomic_write, loads_json

__all__ = ["B_MAX", "B_MIN", "RECIPE_FORMAT", "Policy"]

B_MIN = 2
B_MAX = 8
RECIPE_FORMAT = "ajpq-recipe/1"


class Policy(Mapping[str, np.ndarray]):
    """Per layer, an integer bit-width per output channel (0 = pruned).

    :param bits: ``{layer name: sequence of ints}``; copied into read-only ``int8`` arrays
    :param meta: free-form JSON-serialisable context (task, model, target...); not part of the hash

    >>> p = Policy({"conv": [8, 0, 4], "fc": [8, 8]})
    >>> p.pruned("conv").tolist(), p.kept("conv")
    ([1], 2)
    >>> Policy.from_json(p.to_json()) == p
    True
    """

    def __init__(self, bits: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
        self._bits: dict[str, np.ndarray] = {}
        for name, values in bits.items():
            if not isinstance(name, str):
                raise ValueError(f"layer names must be strings, got {name!r}")
            array = np.asarray(values)
            if array.ndim != 1:
                raise ValueError(f"layer {name!r}: bit-widths must be a 1-d sequence, got shape {array.shape}")
            if array.size and (array.dtype.kind not in "iuf"):
                # strings ("4"), None, booleans or objects: refused, never cast
                raise ValueError(f"layer {name!r}: bit-widths must be integers, got {array.dtype} values "
                                 f"such as {values[0]!r}")
            if array.size and not np.all(np.equal(np.mod(array, 1), 0)):
                raise ValueError(f"layer {name!r}: bit-widths must be integers, got {array.dtype}")
            if array.size and (array.min() < 0 or array.max() > 32):
                raise ValueError(f"layer {name!r}: bit-widths must lie in 0..32, got {array.min()}..{array.max()}")
            array = array.astype(np.int8)
            array.setflags(write=False)
            self._bits[name] = array
        self.meta: dict[str, Any] = dict(meta or {})

    # ------------------------------------------------------------------ mapping protocol
    def __getitem__(self, name: str) -> np.ndarray:
        return self._bits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return list(self._bits) == list(other._bits) and all(
            np.array_equal(a, other._bits[n]) for n, a in self._bits.items()
        )

    def __hash__(self) -> int:
        return int(self.digest()[:16], 16)

    def __repr__(self) -> str:
        kept = sum(self.kept(n) for n in self)
        total = sum(len(a) for a in self._bits.values())
        return f"Policy({len(self)} layers, {kept}/{total} channels kept, mean bits {self.mean_bits():.2f})"

    # ------------------------------------------------------------------ queries
    def pruned(self, name: str) -> np.ndarray:
        """Indices of the pruned (0-bit) channels of ``name``, ascending."""
        return np.flatnonzero(self._bits[name] == 0)

    def kept(self, name: str) -> int:
        """Number of surviving channels of ``name``."""
        return int(np.count_nonzero(self._bits[name]))

    def mean_bits(self) -> float:
        """Mean bit-width over surviving channels (unweighted by kernel size)."""
        values = np.concatenate([a[a > 0] for a in self._bits.values()]) if self._bits else np.zeros(0)
        return float(values.mean()) if values.size else 0.0

    def digest(self) -> str:
        """SHA-256 of the layer names and bit-widths: a stable cache key, independent of ``meta``."""
        h = hashlib.sha256()
        for name, array in self._bits.items():
            h.update(name.encode())
            h.update(b"\0")
            h.update(array.tobytes())
            h.update(b"\1")
        return h.hexdigest()

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, graph: CompressionGraph, bits: int = 8, meta: Mapping[str, Any] | None = None) -> Policy:
        """Every channel of every layer at ``bits`` (no pruning)."""
        return cls({layer.name: np.full(layer.out_channels, bits) for layer in graph.layers}, meta)

    @classmethod
    def random(
        cls,
        graph: CompressionGraph,
        rng: np.random.Generator,
        *,
        max_sparsity: float = 0.8,
        b_min: int = B_MIN,
        b_max: int = B_MAX,
    ) -> Policy:
        """A random valid policy: per prunable group a random sparsity in ``[0, max_sparsity]`` (random channels),
        per surviving channel a random bit-width in ``b_min..b_max``."""
        bits: dict[str, np.ndarray] = {}
        for group in graph.groups:
            keep = np.ones(group.channels, dtype=bool)
            if not group.locked:
                n_pruned = min(int(rng.uniform(0, max_sparsity) * group.channels), group.channels - 1)
                keep[rng.choice(group.channels, n_pruned, replace=False)] = False
            for member in group.members:
                out = graph.layer(member).out_channels
                b = rng.integers(b_min, b_max + 1, out)
                if out == group.channels:
                    b[~keep] = 0
                bits[member] = b
        return cls({layer.name: bits[layer.name] for layer in graph.layers})

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECIPE_FORMAT,
            "meta": self.meta,
            "layers": {name: array.tolist() for name, array in self._bits.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        if not isinstance(data, Mapping) or data.get("format") != RECIPE_FORMAT or "layers" not in data:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"not an AJPQ recipe: expected format {RECIPE_FORMAT!r} with 'layers', got {found!r}")
        if not isinstance(data["layers"], Mapping):
            raise ValueError(f"recipe 'layers' must map layer names to bit-width lists, got {type(data['layers']).__name__}")
        meta = data.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise ValueError(f"recipe 'meta' must be a mapping, got {type(meta).__name__}")
        return cls(data["layers"], meta)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = loads_json(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"recipe is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        atomic_write(path, self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
        return cls.from_json(path.read_text())

    # ------------------------------------------------------------------ validation
    def validate(self, graph: CompressionGraph, b_min: int = B_MIN, b_max: int = B_MAX) -> None:
        """Check the policy against ``graph``; raise ``ValueError`` naming the layer and what was expected.

        Checked: the same layers as the graph, one bit-width per output channel, values in
        ``{0} | b_min..b_max``, at least one channel kept per layer, locked groups (classifier, non-identity
        coupling) unpruned, and coupled layers pruning exactly the same channels.
        """
        names = [layer.name for layer in graph.layers]
        missing = [n for n in names if n not in self._bits]
        extra = [n for n in self._bits if n not in set(names)]
        if missing or extra:
            raise ValueError(f"policy layers do not match the model: missing {missing}, unexpected {extra}")
        for layer in graph.layers:
            bits = self._bits[layer.name]
            if bits.shape != (layer.out_channels,):
                raise ValueError(
                    f"layer {layer.name!r}: expected {layer.out_channels} bit-widths (one per output channel), "
                    f"got {bits.shape[0]}"
                )
            bad = (bits != 0) & ((bits < b_min) | (bits > b_max))
            if bad.any():
                raise ValueError(
                    f"layer {layer.name!r}: bit-widths must be 0 (pruned) or in {b_min}..{b_max}, "
                    f"got {sorted(set(bits[bad].tolist()))}"
                )
            if not bits.any():
                raise ValueError(f"layer {layer.name!r}: all channels pruned; at least one must be kept")
        for group in graph.groups:
            leader = self.pruned(group.leader)
            if group.locked and leader.size:
                raise ValueError(
                    f"layer {group.leader!r}: channels {leader.tolist()[:8]} pruned, but this layer may not be "
                    f"pruned ({group.lock_reason})"
                )
            for member in group.members[1:]:
                if not np.array_equal(self.pruned(member), leader):
                    raise ValueError(
                        f"layer {member!r}: prunes channels {self.pruned(member).tolist()[:8]}, but it is coupled "
                        f"to {group.leader!r}, which prunes {leader.tolist()[:8]}; coupled layers must prune the "
                        "same channels"
                    )

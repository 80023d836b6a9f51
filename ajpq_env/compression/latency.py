"""Latency lookup table: per-layer onnxruntime latency measured on this machine, interpolated, keyed by machine.

``ajpq profile --task NAME`` (:mod:`ajpq_env.deploy.profile`) measures, for every compressible layer of a task's
model, the median latency of that one layer as onnxruntime runs it inside the exported network, on a grid of
kept output channels x kept input channels, for each *kernel class* the engine can produce:

* ``"s8"`` — integer kernels with int8 weights: every layer whose surviving channels all have 2..7 bits
  (onnxruntime's u8s8 ``QLinearConv``/``QGemm``; the bit-width below 8 does not change the kernel);
* ``"u8"`` — integer kernels with uint8 weights: a layer holding an 8-bit channel (the exporter stores its
  codes as uint8 + 128 because the u8s8 kernels of CPUs without AVX-VNNI saturate; see
  :mod:`ajpq_env.deploy.onnx_export`), onnxruntime's u8u8 kernels;
* ``"f32"`` — float kernels with float weights, for float activations (``a_bits=32``). Note that the
  ``fp32`` ONNX file of ``ajpq export`` keeps its weights as ``DequantizeLinear`` of the integer codes, which
  onnxruntime (1.32) does not fold and runs at every call: that file is slower than this class predicts.

Activations of 2..7 bits run on the same 8-bit kernels (onnxruntime has no narrower ones), so their latency is
that of ``a_bits=8``. A network's predicted latency is the sum of its layers' entries plus a measured constant
for everything else (input quantization, residual adds, pooling, session overhead): the whole unpruned network
measured minus the sum of its layers' entries. The FP32 reference is the task's FP32 model, exported by
``torch.onnx.export`` and measured whole.

Between grid points the table is interpolated linearly (bilinearly in kept output x input channels); values
are made monotone (an isotonic regression along each channel axis, and ``u8 >= s8``), so that pruning a
channel or lowering a bit-width never raises a predicted latency: the env's budget clipping (bisection on kept
channels) relies on it.

A table is JSON (never pickle) and carries the key it was measured under: CPU model and flags, onnxruntime,
torch and ajpq_env versions, intra-op threads and batch size. :meth:`LatencyTable.load` refuses a table whose
key differs from this machine's, or whose layers are not the model's, with a message that says how to rebuild
it. Latencies are in microseconds.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ajpq_env.compression.graph import CompressionGraph, LayerInfo
from ajpq_env.fileio import atomic_write, loads_json

__all__ = [
    "KERNEL_CLASSES",
    "TABLE_FORMAT",
    "LatencyTable",
    "LatencyTableError",
    "LayerLatency",
    "default_table_path",
    "kernel_class",
    "layer_shape",
    "cpu_fields",
    "machine_key",
]

TABLE_FORMAT = "ajpq-latency-table/1"
#: ``s8``: integer kernels, int8 weights (2..7 bits); ``u8``: integer kernels, uint8 weights (an 8-bit
#: channel); ``f32``: float kernels (``a_bits=32``)
KERNEL_CLASSES = ("s8", "u8", "f32")
#: The largest table file read (a MobileNetV2 table is about 100 kB).
MAX_TABLE_BYTES = 64 * 2**20
#: Layer fields a table records and checks against the compression graph.
_SHAPE_FIELDS = ("kind", "in_channels", "out_channels", "kernel", "stride", "groups", "in_hw", "out_hw")


class LatencyTableError(ValueError):
    """A latency table that is missing, malformed, measured elsewhere, or made for another model."""


def kernel_class(max_bits: int, a_bits: int) -> str:
    """The :data:`KERNEL_CLASSES` entry of a layer whose widest surviving channel has ``max_bits`` bits."""
    if a_bits == 32:
        return "f32"
    return "u8" if max_bits >= 8 else "s8"


def cpu_fields() -> dict[str, str]:
    """The fields of ``/proc/cpuinfo``, in file order, each with its first non-empty value (the first processor's);
    empty where there is no such file (not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if value.strip():
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu() -> tuple[str, str]:
    """CPU model name and a digest of its feature flags (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    fields = cpu_fields()
    flags = next((" ".join(sorted(value.split())) for key, value in fields.items() if key in ("flags", "Features")), "")
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, hashlib.sha256(flags.encode()).hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_key(threads: int, batch: int) -> dict[str, Any]:
    """What a latency measured now depends on: this machine, the libraries, the threads and the batch size."""
    import torch

    from ajpq_env import __version__

    cpu, flags = _cpu()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "machine": platform.machine(),
        "onnxruntime": _version("onnxruntime"),
        "torch": torch.__version__,
        "ajpq_env": __version__,
        "threads": int(threads),
        "batch": int(batch),
    }


def default_table_path(task: str, threads: int = 1, batch: int = 1) -> Path:
    """Where ``ajpq profile --task TASK`` caches its table: ``<cache dir>/latency/TASK-tTHREADS-bBATCH.json``
    (the cache dir is ``$AJPQ_CACHE`` or ``~/.cache/ajpq``)."""
    from ajpq_env.tasks.data import cache_dir

    return cache_dir() / "latency" / f"{task}-t{threads}-b{batch}.json"


def rebuild_command(task: str, threads: int, batch: int) -> str:
    return f"ajpq profile --task {task} --threads {threads} --batch {batch}"


def _grid(values: Any, name: str, channels: int) -> np.ndarray:
    grid = np.asarray(values, dtype=np.int64) if isinstance(values, list) else None
    if grid is None or grid.ndim != 1 or grid.size < 1 or grid[0] < 1 or grid[-1] != channels or (
        np.diff(grid) <= 0
    ).any():
        raise LatencyTableError(f"{name} must be a strictly increasing list of channel counts from >= 1 to "
                                f"{channels}, got {str(values)[:80]}")
    return grid


@dataclass
class LayerLatency:
    """The measured latency of one layer on its grid.

    :param name: the layer's qualified name
    :param shape: its :data:`_SHAPE_FIELDS` as measured (checked against the compression graph)
    :param out_grid: kept output channel counts, increasing, ending at ``out_channels``
    :param in_grid: kept input channel counts, increasing, ending at ``in_channels``; ``None`` for a
        depthwise conv, whose input channels are its output channels
    :param values: kernel class -> latency in microseconds, shape ``(len(out_grid), len(in_grid))`` (or
        ``(len(out_grid),)`` when ``in_grid`` is ``None``); held as integer nanoseconds

    Interpolation is done in integers (nanoseconds, floor division by grid spacings), so the interpolated
    latency is exactly non-decreasing in kept output and input channels: no rounding error can make pruning
    one more channel look slower, which the budget's bisection on kept channels relies on.
    """

    name: str
    shape: dict[str, Any]
    out_grid: np.ndarray
    in_grid: np.ndarray | None
    values: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self._ns = {}
        for cls, v in self.values.items():
            ns = np.round(_monotone(np.asarray(v, dtype=np.float64)) * 1000).astype(np.int64)
            ns = np.maximum.accumulate(ns, axis=0)  # exact in integers (the fit above is, up to rounding)
            self._ns[cls] = np.maximum.accumulate(ns, axis=1) if ns.ndim == 2 else ns
        if "s8" in self._ns and "u8" in self._ns:
            self._ns["u8"] = np.maximum(self._ns["u8"], self._ns["s8"])
        self.values = {cls: v / 1000.0 for cls, v in self._ns.items()}
        # plain Python ints for the lookups (the budget makes thousands per episode)
        self._lists = {cls: v.tolist() for cls, v in self._ns.items()}
        self._out = self.out_grid.tolist()
        self._in = None if self.in_grid is None else self.in_grid.tolist()

    def __call__(self, kept: int, in_kept: int, cls: str) -> float:
        """Interpolated latency (µs) with ``kept`` output and ``in_kept`` input channels, kernel class ``cls``."""
        values = self._lists[cls]
        i, offset, span = _bracket(self._out, int(kept))
        if self._in is None:
            ns = values[i] if not offset else (values[i] * (span - offset) + values[i + 1] * offset) // span
            return ns / 1000.0
        j, offset_in, span_in = _bracket(self._in, int(in_kept))

        def at(row: list[int]) -> int:  # along the input axis
            return row[j] if not offset_in else (row[j] * (span_in - offset_in) + row[j + 1] * offset_in) // span_in

        low = at(values[i])
        ns = low if not offset else (low * (span - offset) + at(values[i + 1]) * offset) // span
        return ns / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.shape,
            "out_grid": self.out_grid.tolist(),
            "in_grid": None if self.in_grid is None else self.in_grid.tolist(),
            "us": {cls: v.tolist() for cls, v in self.values.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], classes: Sequence[str]) -> LayerLatency:
        name = data.get("name")
        if not isinstance(name, str):
            raise LatencyTableError(f"layer entry without a name: {str(data)[:80]}")
        shape = {k: data.get(k) for k in _SHAPE_FIELDS}
        out_grid = _grid(data.get("out_grid"), f"layer {name!r}: out_grid", int(shape["out_channels"] or 0))
        in_grid = None if data.get("in_grid") is None else _grid(
            data.get("in_grid"), f"layer {name!r}: in_grid", int(shape["in_channels"] or 0)
        )
        expected = (len(out_grid),) if in_grid is None else (len(out_grid), len(in_grid))
        raw = data.get("us")
        if not isinstance(raw, Mapping) or set(raw) != set(classes):
            raise LatencyTableError(f"layer {name!r}: expected latencies of kernel classes {list(classes)}")
        values: dict[str, np.ndarray] = {}
        for kernel in classes:
            try:
                v = np.asarray(raw[kernel], dtype=np.float64)
            except (TypeError, ValueError):
                v = np.empty(0)
            if v.shape != expected or not np.all(np.isfinite(v)) or (v < 0).any():
                raise LatencyTableError(f"layer {name!r}, class {kernel!r}: expected finite latencies >= 0 of "
                                        f"shape {expected}")
            values[kernel] = v
        return cls(name, shape, out_grid, in_grid, values)


@dataclass
class LatencyTable:
    """A task's latency lookup table (see the module docstring).

    :param task: the task it was measured for
    :param key: :func:`machine_key` at measurement time
    :param layers: one :class:`LayerLatency` per compressible layer, in forward order
    :param constant_us: per kernel family (``"int"``, ``"f32"``), the latency of everything but the layers
    :param fp32_us: latency of the task's FP32 model exported with ``torch.onnx.export`` (the reference)
    :param checks: whole-network measurements the constants come from, for the record
    :param path: the file it was read from, if any
    """

    task: str
    key: dict[str, Any]
    layers: list[LayerLatency]
    constant_us: dict[str, float]
    fp32_us: float
    checks: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        self._by_name = {layer.name: layer for layer in self.layers}

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.layers[0].values) if self.layers else ()

    @property
    def threads(self) -> int:
        return int(self.key.get("threads", 0))

    @property
    def batch(self) -> int:
        return int(self.key.get("batch", 0))

    # ------------------------------------------------------------------ lookups
    def layer_us(self, name: str, kept: int, in_kept: int, cls: str) -> float:
        """Latency (µs) of layer ``name`` with ``kept`` output and ``in_kept`` input channels, class ``cls``."""
        return self._by_name[name](kept, in_kept, cls)

    def constant(self, a_bits: int) -> float:
        """Latency (µs) of everything but the compressible layers, for activations of ``a_bits`` bits."""
        return self.constant_us["f32" if a_bits == 32 else "int"]

    def require(self, a_bits: int) -> None:
        """``LatencyTableError`` when the table lacks the kernel classes that ``a_bits`` needs."""
        need = ("f32",) if a_bits == 32 else ("s8", "u8")
        missing = [c for c in need if c not in self.classes]
        if missing:
            raise LatencyTableError(f"the latency table {self._where()} has no {missing} latencies, needed for "
                                    f"a_bits={a_bits}; rebuild it with `{rebuild_command(self.task, self.threads, self.batch)}`")

    def check_graph(self, graph: CompressionGraph) -> None:
        """``LatencyTableError`` unless the table's layers are ``graph``'s, in order, with the same shapes."""
        fix = f"rebuild it with `{rebuild_command(self.task, self.threads, self.batch)}` for this model"
        names = [layer.name for layer in graph.layers]
        if [layer.name for layer in self.layers] != names:
            raise LatencyTableError(f"the latency table {self._where()} (task {self.task!r}) lists other layers than "
                                    f"this model ({len(self.layers)} vs {len(names)}); {fix}")
        for layer, info in zip(self.layers, graph.layers):
            measured, actual = layer.shape, layer_shape(info)
            if measured != actual:
                diff = {k: (measured.get(k), actual[k]) for k in actual if measured.get(k) != actual[k]}
                raise LatencyTableError(f"the latency table {self._where()} measured layer {info.name!r} with another "
                                        f"shape (table, model): {diff}; {fix}")

    def check_key(self, *, threads: int | None = None, batch: int | None = None) -> None:
        """``LatencyTableError`` unless the table was measured on this machine with these libraries, and with
        ``threads`` intra-op threads and batch size ``batch`` when they are given."""
        current = machine_key(self.threads if threads is None else threads, self.batch if batch is None else batch)
        diff = {k: (self.key.get(k), current.get(k)) for k in sorted(set(self.key) | set(current))
                if self.key.get(k) != current.get(k)}
        if diff:
            lines = ", ".join(f"{k}: table {a!r}, here {b!r}" for k, (a, b) in diff.items())
            raise LatencyTableError(f"the latency table {self._where()} was measured on another machine or with other "
                                    f"libraries ({lines}); its latencies do not hold here. Rebuild it on this machine "
                                    f"with `{rebuild_command(self.task, self.threads, self.batch)}`")

    def _where(self) -> str:
        return repr(str(self.path)) if self.path else f"of task {self.task!r}"

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "task": self.task,
            "unit": "microseconds",
            "key": self.key,
            "classes": list(self.classes),
            "fp32_us": round(self.fp32_us, 3),
            "constant_us": {k: round(v, 3) for k, v in self.constant_us.items()},
            "checks": self.checks,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as JSON (atomically: a temporary file renamed into place); return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = atomic_write(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def from_dict(cls, data: Any, path: Path | None = None) -> LatencyTable:
        where = repr(str(path)) if path else "given"
        if not isinstance(data, Mapping) or data.get("format") != TABLE_FORMAT:
            raise LatencyTableError(f"the latency table {where} is not an {TABLE_FORMAT!r} JSON object; build one with "
                                    "`ajpq profile --task NAME`")
        classes = data.get("classes")
        if not isinstance(classes, list) or not classes or not set(classes) <= set(KERNEL_CLASSES):
            raise LatencyTableError(f"the latency table {where}: 'classes' must be a non-empty subset of "
                                    f"{list(KERNEL_CLASSES)}, got {classes!r}")
        key, layers = data.get("key"), data.get("layers")
        if not isinstance(key, Mapping) or not isinstance(layers, list) or not layers:
            raise LatencyTableError(f"the latency table {where} needs a 'key' object and a non-empty 'layers' list")
        constants = data.get("constant_us")
        fp32 = data.get("fp32_us")
        families = {"f32" if c == "f32" else "int" for c in classes}
        if not isinstance(constants, Mapping) or set(constants) != families or not all(
            isinstance(v, int | float) and math.isfinite(v) for v in constants.values()
        ) or not (isinstance(fp32, int | float) and math.isfinite(fp32) and fp32 > 0):
            raise LatencyTableError(f"the latency table {where} needs finite 'constant_us' for {sorted(families)} and "
                                    "a positive 'fp32_us'")
        return cls(
            task=str(data.get("task", "")),
            key=dict(key),
            layers=[LayerLatency.from_dict(layer, classes) for layer in layers],
            constant_us={k: float(v) for k, v in constants.items()},
            fp32_us=float(fp32),
            checks=dict(data.get("checks") or {}),
            path=path,
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        graph: CompressionGraph | None = None,
        *,
        check_key: bool = True,
        threads: int | None = None,
        batch: int | None = None,
    ) -> LatencyTable:
        """Read a table; refuse it when it was measured under another :func:`machine_key` (``check_key``; with
        ``threads`` / ``batch``, also another thread count / batch size) or, when ``graph`` is given, for other
        layers. Errors are :class:`LatencyTableError` naming the fix."""
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"no latency table at {str(path)!r}; build it on this machine with "
                                    "`ajpq profile --task NAME` (it is cached there), or pass its path")
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise LatencyTableError(f"{str(path)!r} is larger than {MAX_TABLE_BYTES} bytes; not a latency table")
        try:
            data = loads_json(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LatencyTableError(f"the latency table {str(path)!r} is not JSON ({err}); rebuild it with "
                                    "`ajpq profile --task NAME`") from None
        table = cls.from_dict(data, path)
        if check_key:
            table.check_key(threads=threads, batch=batch)
        if graph is not None:
            table.check_graph(graph)
        return table


def _monotone(values: np.ndarray) -> np.ndarray:
    """The closest (least squares) non-decreasing fit along every channel axis: isotonic regression along the
    output-channel axis, then along the input-channel axis (it maps ordered rows to ordered rows, so the first
    axis stays non-decreasing). A noisy point is pooled with its neighbours instead of raising every larger
    channel count, as a running maximum would."""
    from scipy.optimize import isotonic_regression

    out = np.apply_along_axis(lambda y: isotonic_regression(y).x, 0, values) if len(values) > 1 else values.copy()
    if out.ndim == 2 and out.shape[1] > 1:
        out = np.apply_along_axis(lambda y: isotonic_regression(y).x, 1, out)
    return out


def _bracket(grid: list[int], x: int) -> tuple[int, int, int]:
    """``(i, offset, span)``: ``x`` lies ``offset`` channels past ``grid[i]`` in a cell of ``span`` channels
    (``offset`` 0 on a grid point or outside the grid). Interpolating integers with these weights and a floor
    division is exactly non-decreasing in ``x`` (and in the values): rounding cannot break monotonicity."""
    i = max(bisect.bisect_right(grid, x) - 1, 0)
    if i == len(grid) - 1 or x <= grid[i]:
        return i, 0, 1
    return i, x - grid[i], grid[i + 1] - grid[i]


def layer_shape(info: LayerInfo) -> dict[str, Any]:
    """The fields of ``info`` a table records and checks, JSON-shaped (lists for tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(info, k)) for k in _SHAPE_FIELDS)}

"""Measure a task's latency lookup table on this machine: ``ajpq profile --task NAME [--out FILE]``.

For every compressible layer (layers of one shape are measured once) and every kernel class
(:data:`~ajpq_env.compression.latency.KERNEL_CLASSES`), a one-layer ONNX model is timed with onnxruntime on a
grid of kept output x kept input channels (only the axes pruning can change: a locked group keeps its
channels). The one-layer model is what the exporter (:mod:`ajpq_env.deploy.onnx_export`) writes for that
layer, so onnxruntime picks the kernel it picks inside the network:

* integer classes: ``DequantizeLinear`` of the uint8 input, ``Conv``/``Gemm`` on ``DequantizeLinear`` weights
  (int8 codes with zero point 0 for ``s8``, uint8 codes with zero point 128 for ``u8``) and an int32 bias,
  ``QuantizeLinear`` of the output (unless the layer's output is the network's): onnxruntime fuses it into one
  ``QLinearConv``/``QGemm``. Convolutions take and return NHWC tensors (a ``Transpose`` on each side that
  cancels the ones onnxruntime's NHWC transformer inserts), as inside the network, where the integer
  convolutions run NHWC from the first to the last;
* ``f32``: a float ``Conv``/``Gemm`` (onnxruntime's NCHWc reorders at the model's edges are timed with it).

Each entry is the fastest of ``repeats`` samples (load from other processes only adds time; see
:mod:`ajpq_env.deploy.timing`) minus the same for a trivial model (the per-call overhead of ``session.run``).
The table's constants are the whole network measured (fastest of ``network_repeats`` interleaved rounds) minus
the sum of its entries: the uniform 8-bit and 4-bit unpruned networks for the integer classes (their mean;
both are recorded), the FP32 ONNX model (``torch.onnx.export``) for ``f32``, which is also the table's FP32
reference.

The table is written to ``--out`` or to the cache (:func:`~ajpq_env.compression.latency.default_table_path`),
where ``gym.make(..., resource="latency")`` finds it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajpq_env.compression import CompressionGraph, Compressor, DeploySettings, Policy
from ajpq_env.compression.latency import (
    KERNEL_CLASSES,
    LatencyTable,
    LayerLatency,
    default_table_path,
    layer_shape,
    machine_key,
)
from ajpq_env.compression.pipeline import calibration_indices
from ajpq_env.deploy._cli import check_output_file, option, parse_config, set_threads
from ajpq_env.deploy.timing import export_fp32_onnx, interleaved_medians, median_seconds, ort_session
from ajpq_env.tasks import Task

__all__ = ["LayerGeometry", "ProfileArgs", "ProfileSettings", "axis_grid", "layer_onnx", "main", "profile_task"]


@dataclass(frozen=True)
class ProfileSettings:
    """How a table is measured.

    :param threads: onnxruntime intra-op threads (part of the table's key)
    :param batch: batch size of every measurement (part of the table's key)
    :param grid: points per channel axis (plus 1 channel); more points, less interpolation error, longer
    :param repeats: timed samples per point (the fastest is kept)
    :param network_repeats: timed rounds of the whole networks that set the constants (the fastest is kept)
    :param min_sample_seconds: each sample repeats the call until it lasts this long
    :param classes: kernel classes to measure
    """

    threads: int = 1
    batch: int = 1
    grid: int = 6
    repeats: int = 5
    network_repeats: int = 15
    min_sample_seconds: float = 0.002
    classes: tuple[str, ...] = KERNEL_CLASSES

    def __post_init__(self) -> None:
        for name in ("threads", "batch", "grid", "repeats", "network_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not set(self.classes) <= set(KERNEL_CLASSES) or not self.classes:
            raise ValueError(f"classes must be a non-empty subset of {KERNEL_CLASSES}, got {self.classes!r}")
        if "s8" in self.classes and "u8" not in self.classes or "u8" in self.classes and "s8" not in self.classes:
            raise ValueError("the integer classes 's8' and 'u8' are measured together (a network mixes them)")


def axis_grid(channels: int, points: int, variable: bool = True) -> np.ndarray:
    """Kept-channel counts measured on one axis: ``points`` evenly spaced counts up to ``channels``, and 1;
    just ``[channels]`` when the axis cannot change."""
    if not variable:
        return np.array([channels])
    grid = np.round(np.linspace(channels / points, channels, points)).astype(np.int64)
    return np.unique(np.clip(np.concatenate([[1], grid]), 1, channels))


# ---------------------------------------------------------------------- one-layer models
@dataclass(frozen=True)
class LayerGeometry:
    """What a layer's one-layer model depends on (layers that share it are measured once).

    :param kind: ``"conv"``, ``"depthwise"`` or ``"linear"``
    :param kernel: kernel height and width
    :param stride: the conv's strides
    :param padding: the conv's zero padding (height, width)
    :param dilation: the conv's dilation
    :param in_hw: input feature-map height and width
    :param bias: whether the deployed layer stores a bias (its own or a folded BatchNorm's)
    :param quantized_output: whether the deployed layer quantizes its output (every layer but those that
        feed only the network output)
    """

    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    in_hw: tuple[int, int]
    bias: bool
    quantized_output: bool


def layer_onnx(geometry: LayerGeometry, out_k: int, in_k: int, cls: str, batch: int) -> bytes:
    """The serialized one-layer ONNX model of ``geometry`` with ``out_k`` output and ``in_k`` input channels
    (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ajpq_env.deploy.onnx_export import ONNX_OPSET

    rng = np.random.default_rng(0)
    conv = geometry.kind != "linear"
    depthwise = geometry.kind == "depthwise"
    in_k = out_k if depthwise else in_k
    per = 1 if depthwise else in_k
    w_shape = (out_k, per, *geometry.kernel) if conv else (out_k, in_k)
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    nodes: list[Any] = []
    if cls == "f32":
        elem, x_name = TensorProto.FLOAT, "x"
        w = const("w", rng.normal(0, 0.1, w_shape).astype(np.float32))
        inputs = [x_name, w] + ([const("b", rng.normal(0, 0.1, out_k).astype(np.float32))] if geometry.bias else [])
    else:
        elem = TensorProto.UINT8
        codes = rng.integers(-63, 64, w_shape)
        if cls == "u8":
            w_q, w_zero = const("wq", (codes + 128).astype(np.uint8)), const("wz", np.full(out_k, 128, np.uint8))
        else:
            w_q, w_zero = const("wq", codes.astype(np.int8)), const("wz", np.zeros(out_k, np.int8))
        w_scales = rng.uniform(0.005, 0.02, out_k).astype(np.float32)
        w_scale = const("ws", w_scales)
        x_scale, x_zero = const("xs", np.array(0.02, np.float32)), const("xz", np.array(0, np.uint8))
        x_name = "x"
        if conv and geometry.quantized_output:
            nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
            x_name = "x_nchw"
        nodes.append(helper.make_node("DequantizeLinear", [x_name, x_scale, x_zero], ["x_f"]))
        nodes.append(helper.make_node("DequantizeLinear", [w_q, w_scale, w_zero], ["w_f"], axis=0))
        inputs = ["x_f", "w_f"]
        if geometry.bias:
            b = const("b", rng.integers(-1000, 1000, out_k).astype(np.int32))
            # the bias scale must be x_scale * w_scale in float32 (as the exporter writes it), or onnxruntime
            # does not fuse the layer into an integer kernel
            b_scale = const("bs", np.float32(0.02) * w_scales)
            nodes.append(helper.make_node("DequantizeLinear", [b, b_scale], ["b_f"], axis=0))
            inputs.append("b_f")
    if conv:
        pads = [*geometry.padding, *geometry.padding]
        nodes.append(helper.make_node("Conv", inputs, ["y_f"], kernel_shape=list(geometry.kernel),
                                      strides=list(geometry.stride), pads=pads, dilations=list(geometry.dilation),
                                      group=out_k if depthwise else 1))
    else:
        nodes.append(helper.make_node("Gemm", inputs, ["y_f"], transB=1))
    h, w_ = geometry.in_hw
    nhwc = conv and cls != "f32" and geometry.quantized_output
    x_shape = [batch, h, w_, in_k] if nhwc else ([batch, in_k, h, w_] if conv else [batch, in_k])
    y_elem = TensorProto.FLOAT
    if cls != "f32" and geometry.quantized_output:
        y_scale, y_zero = const("ys", np.array(0.05, np.float32)), const("yz", np.array(0, np.uint8))
        nodes.append(helper.make_node("QuantizeLinear", ["y_f", y_scale, y_zero], ["y_q"]))
        y_elem = TensorProto.UINT8
        if conv:
            nodes.append(helper.make_node("Transpose", ["y_q"], ["y_nhwc"], perm=[0, 2, 3, 1]))
    nodes[-1].output[0] = "y"  # the last node writes the graph output (an Identity would add a copy)
    out_shape = [batch, None, None, out_k] if nhwc else ([batch, out_k, None, None] if conv else [batch, out_k])
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", elem, x_shape)],
                              [helper.make_tensor_value_info("y", y_elem, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _overhead_onnx() -> bytes:
    """A trivial model: the per-call cost of ``session.run`` that every entry subtracts."""
    from onnx import TensorProto, helper

    from ajpq_env.deploy.onnx_export import ONNX_OPSET

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "overhead",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)]).SerializeToString()


def _feed(session: Any, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        if arg.type == "tensor(uint8)":
            feed[arg.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feed[arg.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feed


def time_model(model: bytes | str | Path, settings: ProfileSettings) -> float:
    """Microseconds per call of ``model`` on a random input of its declared shape: fastest of the samples."""
    session = ort_session(model, settings.threads)
    return 1e6 * median_seconds(session, _feed(session), repeats=settings.repeats,
                                min_sample_seconds=settings.min_sample_seconds, statistic="min")


# ---------------------------------------------------------------------- the table
def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def _geometries(task: Task, graph: CompressionGraph, deployed: torch.nn.Module) -> dict[str, LayerGeometry]:
    out = {}
    for layer in graph.layers:
        module = task.model.get_submodule(layer.name)
        deployed_layer = deployed.get_submodule(layer.name)
        if layer.kind == "conv" and layer.groups != 1:
            raise ValueError(f"layer {layer.name!r}: latency profiling supports plain and depthwise convolutions, "
                             f"not groups={layer.groups}")
        conv = layer.kind != "linear"
        out[layer.name] = LayerGeometry(
            kind=layer.kind, kernel=tuple(layer.kernel), stride=_pair(module.stride) if conv else (1, 1),
            padding=_pair(module.padding) if conv else (0, 0), dilation=_pair(module.dilation) if conv else (1, 1),
            in_hw=tuple(layer.in_hw), bias=layer.stored_bias, quantized_output=deployed_layer.output is not None,
        )
    return out


def _networks_us(paths: dict[str, Path], example: torch.Tensor, settings: ProfileSettings) -> dict[str, float]:
    """Microseconds per call of whole networks: fastest of ``network_repeats`` interleaved rounds."""
    x = np.random.default_rng(1).normal(0, 1, (settings.batch, *example.shape[1:])).astype(np.float32)
    runs = {}
    for name, path in paths.items():
        session = ort_session(path, settings.threads)
        runs[name] = (session, {session.get_inputs()[0].name: x})
    seconds = interleaved_medians(runs, repeats=settings.network_repeats, min_sample_seconds=settings.min_sample_seconds,
                                  statistic="min")
    return {name: 1e6 * s for name, s in seconds.items()}


def profile_task(
    task: Task,
    settings: ProfileSettings | None = None,
    *,
    graph: CompressionGraph | None = None,
    progress: Callable[[str], None] | None = None,
) -> LatencyTable:
    """Measure the latency table of ``task``'s model on this machine (see the module docstring)."""
    from ajpq_env.deploy.onnx_export import export_onnx

    settings = settings or ProfileSettings()
    say = progress or (lambda _: None)
    start = time.perf_counter()
    graph = graph or CompressionGraph(task.model, task.example_input())
    key = machine_key(settings.threads, settings.batch)
    train = task.splits["train"]
    calibration = [train.batch(idx)[0] for idx in calibration_indices(len(train), 1, min(64, len(train)))]
    compressor = Compressor(task.model, graph, calibration, DeploySettings(a_bits=8))
    deployed8 = compressor.deploy(Policy.uniform(graph, 8))
    geometries = _geometries(task, graph, deployed8)
    overhead = time_model(_overhead_onnx(), settings)

    measured: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}
    layers: list[LayerLatency] = []
    for layer in graph.layers:
        group = graph.groups[layer.group]
        out_grid = axis_grid(layer.out_channels, settings.grid, not group.locked)
        in_grid = None if layer.kind == "depthwise" else axis_grid(
            layer.in_channels, settings.grid, layer.producer is not None and not graph.groups[layer.producer].locked
        )
        geometry = geometries[layer.name]
        signature = (geometry, tuple(out_grid), None if in_grid is None else tuple(in_grid))
        if signature not in measured:
            values = {}
            for cls in settings.classes:
                v = np.zeros((len(out_grid),) if in_grid is None else (len(out_grid), len(in_grid)))
                for index in np.ndindex(*v.shape):
                    out_k = int(out_grid[index[0]])
                    in_k = out_k if in_grid is None else int(in_grid[index[1]])
                    model = layer_onnx(geometry, out_k, in_k, cls, settings.batch)
                    v[index] = max(time_model(model, settings) - overhead, 0.0)
                values[cls] = v
            measured[signature] = values
            say(f"{layer.name}: {layer.kind} {layer.in_channels}->{layer.out_channels} @ {layer.in_hw[0]}x"
                f"{layer.in_hw[1]}, {v.size} points x {len(settings.classes)} classes, full size "
                + ", ".join(f"{c} {values[c].flat[-1]:.1f} us" for c in settings.classes))
        layers.append(LayerLatency(layer.name, layer_shape(layer), out_grid, in_grid, measured[signature]))

    full = {c: sum(entry.values[c].flat[-1] for entry in layers) for c in settings.classes}
    checks: dict[str, Any] = {"call_overhead_us": overhead, "layer_sum_us": full, "grid": settings.grid,
                              "repeats": settings.repeats}
    constants: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        example = task.example_input()
        paths = {"fp32": export_fp32_onnx(task.model, folder / "fp32.onnx", example)}
        if "s8" in settings.classes:
            paths["uniform8"] = export_onnx(deployed8, folder / "uniform8.onnx", example)
            paths["uniform4"] = export_onnx(compressor.deploy(Policy.uniform(graph, 4)), folder / "uniform4.onnx",
                                            example)
        networks = _networks_us(paths, example, settings)
        fp32_us = checks["fp32_onnx_us"] = networks["fp32"]
        if "f32" in settings.classes:
            constants["f32"] = fp32_us - full["f32"]
        if "s8" in settings.classes:
            uniform8, uniform4 = networks["uniform8"], networks["uniform4"]
            checks.update(uniform8_us=uniform8, uniform4_us=uniform4,
                          constant_from_uniform8_us=uniform8 - full["u8"], constant_from_uniform4_us=uniform4 - full["s8"])
            constants["int"] = (uniform8 - full["u8"] + uniform4 - full["s8"]) / 2
    checks["seconds"] = round(time.perf_counter() - start, 1)
    return LatencyTable(task=task.name, key=key, layers=layers, constant_us=constants, fp32_us=fp32_us, checks=checks)


# ---------------------------------------------------------------------- command line
@dataclass
class ProfileArgs:
    """``ajpq profile`` options."""

    task: str = option(help="task name (see `ajpq envs`), or synthetic-<model>")
    out: Path | None = option(None, "table file; default: the cache, where the env finds it "
                                    "($AJPQ_CACHE or ~/.cache/ajpq)/latency/TASK-tTHREADS-bBATCH.json")
    threads: int = option(1, "onnxruntime intra-op threads of every measurement (part of the table's key)",
                          low=1, high=1024)
    batch: int = option(1, "batch size of every measurement (part of the table's key)", low=1, high=4096)
    grid: int = option(6, "points per channel axis (plus 1 channel)", low=1, high=64)
    repeats: int = option(5, "timed samples per point (the fastest is kept)", low=1, high=1000)
    float_kernels: bool = option(True, "also measure float kernels (for envs with a_bits=32)")
    data: str | None = option(None, "data set root (calibration batch); default $AJPQ_DATA")
    weights: str | None = option(None, "FP32 weights; default: packaged, then $AJPQ_WEIGHTS")


def main(argv: list[str] | None = None) -> int:
    """``ajpq profile``: measure and cache a task's latency lookup table."""
    from ajpq_env.deploy.resolve import resolve_task

    args = parse_config(ProfileArgs, argv, prog="ajpq profile",
                        description="Measure a task's per-layer latency lookup table on this machine (onnxruntime), "
                                    "for gym.make(..., resource='latency').")
    classes = KERNEL_CLASSES if args.float_kernels else ("s8", "u8")
    try:
        settings = ProfileSettings(threads=args.threads, batch=args.batch, grid=args.grid, repeats=args.repeats,
                                   classes=classes)
        set_threads(args.threads)
        task = resolve_task(args.task, data_root=args.data, weights=args.weights)
        out = args.out or default_table_path(task.name, args.threads, args.batch)
        check_output_file(out, "--out")  # before the measurement, which takes minutes
        table = profile_task(task, settings, progress=lambda line: print(line, file=sys.stderr))
        table.save(out)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, OSError) as err:
        print(f"ajpq profile: error: {err}", file=sys.stderr)
        return 2
    checks = table.checks
    print(f"{out}: {len(table.layers)} layers, kernel classes {list(table.classes)}, measured in {checks['seconds']} s")
    print(f"FP32 ONNX model: {table.fp32_us:.1f} us per batch of {args.batch} ({args.threads} thread(s))")
    if "uniform8_us" in checks:
        print(f"unpruned 8-bit network: {checks['uniform8_us']:.1f} us ({table.fp32_us / checks['uniform8_us']:.2f}x "
              f"faster than FP32), 4-bit: {checks['uniform4_us']:.1f} us; constant for non-layer ops "
              f"{table.constant_us['int']:.1f} us (from 8-bit {checks['constant_from_uniform8_us']:.1f}, "
              f"from 4-bit {checks['constant_from_uniform4_us']:.1f})")
    print(f"next: gym.make(ENV_ID, resource='latency', target=RATIO{'' if args.out is None else f', latency_table={str(out)!r}'})"
          f"{'' if args.threads == 1 and args.batch == 1 else ' (pass latency_table: the env looks up 1-thread, batch-1 tables by itself)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

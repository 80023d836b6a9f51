"""Timing ONNX models with onnxruntime, one way for the latency table and the latency benchmark.

* :func:`ort_session` — a CPU session from a file or from bytes, with a fixed intra-op thread count (one
  inter-op thread, sequential execution), optionally profiling;
* :func:`median_seconds` — seconds per ``session.run`` call: warm-up, then the median (or the minimum) of
  ``repeats`` samples, each long enough (``min_sample_seconds``) that the clock's resolution does not matter;
* :func:`interleaved_medians` — the same for several models at once, one sample of each per round, so that a
  change of machine load during the measurement affects them alike (what a ratio needs).

The median is what a user of the model sees on a quiet machine; the minimum (``statistic="min"``) is what
the latency table uses for its thousands of short measurements: load from other processes only ever adds
time, so the fastest of several samples is the estimate that another process disturbs least.
* :func:`op_profile` — where the time goes: onnxruntime's profiler, summed per operator type;
* :func:`export_fp32_onnx` — the FP32 reference: ``torch.onnx.export`` of a model in eval mode (the exporter
  folds BatchNorm into the convolutions).
"""

from __future__ import annotations

import io
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["call_samples", "export_fp32_onnx", "interleaved_medians", "median_seconds", "op_profile", "ort_session"]


def _onnxruntime():
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise ModuleNotFoundError("timing ONNX models needs onnxruntime: pip install 'ajpq-env[onnx]'") from None
    return ort


def ort_session(
    model: str | os.PathLike[str] | bytes,
    threads: int,
    *,
    profile_prefix: str | None = None,
    optimized_path: str | os.PathLike[str] | None = None,
) -> Any:
    """An onnxruntime CPU ``InferenceSession`` of ``model`` (a path or the serialized bytes).

    :param threads: intra-op threads (>= 1); one inter-op thread, sequential execution
    :param profile_prefix: turn onnxruntime's profiler on, writing to files with this prefix
    :param optimized_path: also write the graph onnxruntime optimised (to see which kernels run)
    """
    ort = _onnxruntime()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # the warning that an optimised graph is machine-specific is expected here
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def call_samples(
    session: Any,
    feed: dict[str, np.ndarray],
    *,
    repeats: int = 7,
    warmup: int = 2,
    min_sample_seconds: float = 0.0,
) -> list[float]:
    """``repeats`` samples of the seconds one ``session.run(None, feed)`` takes.

    :param repeats: timed samples
    :param warmup: untimed calls first (allocations, caches)
    :param min_sample_seconds: each sample repeats the call until it lasts this long and reports the mean
        per call (short calls are then not at the mercy of the clock's resolution and of one interruption)
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    run = session.run
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        run(None, feed)
        once = time.perf_counter() - start
    calls = max(1, math.ceil(min_sample_seconds / max(once, 1e-7))) if min_sample_seconds > 0 else 1
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run(None, feed)
        samples.append((time.perf_counter() - start) / calls)
    return samples


def median_seconds(
    session: Any,
    feed: dict[str, np.ndarray],
    *,
    repeats: int = 7,
    warmup: int = 2,
    min_sample_seconds: float = 0.0,
    statistic: str = "median",
) -> float:
    """Median (or ``statistic="min"``: minimum) of :func:`call_samples` (same arguments)."""
    reduce = _statistic(statistic)
    return reduce(call_samples(session, feed, repeats=repeats, warmup=warmup, min_sample_seconds=min_sample_seconds))


def _statistic(name: str):
    if name not in ("median", "min"):
        raise ValueError(f"statistic must be 'median' or 'min', got {name!r}")
    return statistics.median if name == "median" else min


def interleaved_medians(
    runs: dict[str, tuple[Any, dict[str, np.ndarray]]],
    *,
    repeats: int = 7,
    warmup: int = 2,
    min_sample_seconds: float = 0.0,
    statistic: str = "median",
) -> dict[str, float]:
    """Median (or minimum) seconds per call of each ``name -> (session, feed)``, measured in ``repeats`` rounds
    that take one sample of every model in turn (arguments as :func:`median_seconds`)."""
    reduce = _statistic(statistic)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    calls: dict[str, int] = {}
    for name, (session, feed) in runs.items():
        for _ in range(max(warmup, 1)):
            start = time.perf_counter()
            session.run(None, feed)
            once = time.perf_counter() - start
        calls[name] = max(1, math.ceil(min_sample_seconds / max(once, 1e-7))) if min_sample_seconds > 0 else 1
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (session, feed) in runs.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                session.run(None, feed)
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: reduce(values) for name, values in samples.items()}


def op_profile(model: str | os.PathLike[str] | bytes, feed: dict[str, np.ndarray], threads: int,
               runs: int = 10) -> dict[str, Any]:
    """Where the time of ``model`` goes: onnxruntime's profiler over ``runs`` calls (after one warm-up call,
    whose events are left out).

    :return: ``{"run_us": mean whole-run microseconds, "ops": {operator type: microseconds per run},
        "nodes": {operator type: node count}}``, operators by decreasing time
    """
    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(model, threads, profile_prefix=os.path.join(tmp, "profile"))
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])[1:]
    first = model_runs[0]["ts"] if model_runs else 0
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e.get("ts", 0) >= first:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] += e["dur"]
            nodes[op].add(e["name"])
    count = max(len(model_runs), 1)
    ops = {op: us / count for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])}
    return {"run_us": sum(e["dur"] for e in model_runs) / count, "ops": ops,
            "nodes": {op: len(nodes[op]) for op in ops}}


def export_fp32_onnx(model: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor) -> Path:
    """``torch.onnx.export`` of ``model`` in eval mode (opset 17, TorchScript exporter, dynamic batch axis,
    input ``"input"``, output ``"logits"``, constant folding on: BatchNorm folded into the convolutions)."""
    import onnx

    from ajpq_env.deploy.onnx_export import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME

    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (example_input,), buffer, dynamo=False, opset_version=ONNX_OPSET, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    path = Path(path)
    onnx.save(proto, path)
    return path

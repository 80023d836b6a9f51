"""Smoke test of benchmarks/latency.py with a tiny budget (synthetic task, one repeat, a few test samples)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ajpq_env.compression import CompressionGraph, LatencyTable
from ajpq_env.compression.latency import LayerLatency, layer_shape, machine_key
from ajpq_env.tasks import synthetic_task

pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install -e '.[onnx]'")

from benchmarks import latency  # noqa: E402


def _table(path) -> None:
    """A latency table of the synthetic MobileNetV2 with deterministic values (the smoke test checks the
    plumbing of --predict, not timings): microseconds proportional to MACs, uint8 weights 1.5x, float 3x."""
    task = synthetic_task()
    graph = CompressionGraph(task.model, task.example_input())
    layers = []
    for layer in graph.layers:
        out_grid = np.unique([1, layer.out_channels])
        in_grid = None if layer.kind == "depthwise" else np.unique([1, layer.in_channels])
        per = layer.macs / layer.out_channels / (1 if in_grid is None else layer.in_channels) / 1000
        base = per * (out_grid if in_grid is None else np.outer(out_grid, in_grid))
        layers.append(LayerLatency(layer.name, layer_shape(layer), out_grid, in_grid,
                                   {"s8": base, "u8": 1.5 * base, "f32": 3 * base}))
    fp32 = 3.6 * sum(layer.values["s8"].flat[-1] for layer in layers)
    LatencyTable(task.name, machine_key(1, 1), layers, {"int": 10.0, "f32": 10.0}, fp32).save(path)


def test_latency_benchmark_runs_with_a_tiny_budget(tmp_path, capsys):
    _table(tmp_path / "table.json")
    result = latency.main([
        "--task", "synthetic-mobilenet_v2", "--batches", "1", "3", "--repeats", "1", "--warmup", "1",
        "--min-sample-ms", "0", "--test-size", "16", "--candidates", "2", "--profile", "--predict",
        "--latency-table", str(tmp_path / "table.json"), "--out", str(tmp_path / "out"),
    ])
    out = capsys.readouterr().out
    assert "speed-up" in out and "package loader" in out and "held-out recipes" in out and "where the time goes" in out
    comparison = result["comparisons"]["1"]
    for batch in ("1", "3"):
        assert comparison["speedup"][batch]["fp32"] == 1.0
        assert all(s > 0 and math.isfinite(s) for s in comparison["seconds"][batch].values())
        assert "QLinearConv" in comparison["profile"][batch]["qdq"]["ops"]
    assert comparison["cost"]["size_ratio"] <= 0.125
    accuracy = comparison["accuracy"]
    assert accuracy["qdq_onnx"] == accuracy["package_loader"] and comparison["test_samples"] == 16
    rows = result["prediction"]["rows"]
    assert len(rows) >= 4 and sum(row["in_sample"] for row in rows) == 2
    assert all(row["measured_us"] > 0 and math.isfinite(row["error"]) for row in rows)
    saved = json.loads((tmp_path / "out" / "latency.json").read_text())
    assert saved["comparisons"]["1"]["recipe"] == comparison["recipe"]
    assert (tmp_path / "out" / "round1" / "model.ajpq").is_file() and (tmp_path / "out" / "fp32.onnx").is_file()


def test_latency_benchmark_refuses_bad_options(capsys):
    for argv in (["--repeats", "0"], ["--target", "2"], ["--batches", "-1"]):
        with pytest.raises(SystemExit):
            latency.parse_args(argv)
    assert "must lie in" in capsys.readouterr().err


def test_latency_benchmark_builds_a_latency_budgeted_recipe(tmp_path, capsys):
    _table(tmp_path / "table.json")
    result = latency.main([
        "--task", "synthetic-mobilenet_v2", "--resource", "latency", "--target", "0.3", "--batches", "1",
        "--repeats", "1", "--warmup", "1", "--min-sample-ms", "0", "--test-size", "8", "--candidates", "1",
        "--latency-table", str(tmp_path / "table.json"),
    ])
    assert "heuristic recipe at latency 0.3" in capsys.readouterr().out
    recipe = result["comparisons"]["1"]["recipe"]
    graph = CompressionGraph(synthetic_task().model, synthetic_task().example_input())
    from ajpq_env.compression import CostModel, Policy

    table = LatencyTable.load(tmp_path / "table.json", graph)
    costs = CostModel(graph, latency=table)
    assert costs(Policy.from_dict(recipe)).latency_us <= 0.3 * table.fp32_us


def test_latency_benchmark_unreachable_target_is_a_clear_error(tmp_path):
    _table(tmp_path / "table.json")
    with pytest.raises(SystemExit, match=r"benchmarks.latency: target 0.01 of FP32 latency is impossible"):
        latency.main(["--task", "synthetic-mobilenet_v2", "--resource", "latency", "--target", "0.01",
                      "--latency-table", str(tmp_path / "table.json")])


def test_latency_benchmark_refuses_a_garbled_table_before_measuring(tmp_path):
    bad = tmp_path / "table.json"
    _table(bad)
    bad.write_text(bad.read_text()[:50])  # truncated
    for extra in (["--predict"], ["--resource", "latency", "--target", "0.5"]):
        with pytest.raises(SystemExit, match=r"benchmarks.latency: the latency table .* is not JSON"):
            latency.main(["--task", "synthetic-mobilenet_v2", "--latency-table", str(bad),
                          "--out", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out").exists()  # refused before anything was exported or timed

"""The latency lookup table (ajpq profile), the latency figure of the cost model, and resource="latency" in the env.

Measured tables are timing-dependent, so tests on measured numbers check only structure (shapes, keys,
monotonicity); the budget tests use a table with deterministic values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ajpq_env import AJPQEnv, cli
from ajpq_env.compression import CompressionGraph, CostModel, LatencyTable, LatencyTableError, Policy
from ajpq_env.compression.latency import LayerLatency, default_table_path, kernel_class, layer_shape, machine_key
from ajpq_env.tasks import Task
from ajpq_env.tasks.registry import Split, TaskSpec

onnx = pytest.importorskip("onnx", reason="needs the 'onnx' extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install -e '.[onnx]'")

from ajpq_env.deploy.profile import LayerGeometry, ProfileSettings, axis_grid, layer_onnx, profile_task  # noqa: E402
from ajpq_env.deploy.timing import ort_session  # noqa: E402


class TinyNet(nn.Module):
    """conv-bn-relu, pointwise, depthwise, projection, pool, classifier: every layer kind in five layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(self.dw(self.expand(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def tiny_task() -> Task:
    torch.manual_seed(0)
    model = TinyNet().eval()
    rng = np.random.default_rng(0)
    norm = ((0.5,) * 3, (0.25,) * 3)
    splits = {name: Split(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n), norm)
              for name, n in (("train", 64), ("search", 32), ("test", 32))}
    spec = TaskSpec("synthetic-tinynet", "tinynet", {}, "synthetic", (3, 8, 8), None, description="test model")
    return Task(spec, model, splits)


@pytest.fixture(scope="module")
def tiny_graph(tiny_task) -> CompressionGraph:
    return CompressionGraph(tiny_task.model, tiny_task.example_input())


@pytest.fixture(scope="module")
def measured(tiny_task, tiny_graph, tmp_path_factory) -> LatencyTable:
    """A table measured on this machine (tiny grid, one repeat: seconds)."""
    settings = ProfileSettings(grid=2, repeats=1, network_repeats=2, min_sample_seconds=0.0)
    table = profile_task(tiny_task, settings, graph=tiny_graph)
    table.save(tmp_path_factory.mktemp("latency") / "tiny.json")
    return table


def synthetic_table(graph: CompressionGraph, task: str, *, constant: float = 50.0) -> LatencyTable:
    """A table with deterministic latencies: proportional to MACs, u8 1.5x s8, f32 3x s8."""
    layers = []
    for layer in graph.layers:
        out_grid = axis_grid(layer.out_channels, 3, not graph.groups[layer.group].locked)
        depthwise = layer.kind == "depthwise"
        in_grid = None if depthwise else axis_grid(layer.in_channels, 3, layer.producer is not None)
        per_macs = layer.macs / layer.out_channels / (1 if depthwise else layer.in_channels)
        base = per_macs * (out_grid if depthwise else np.outer(out_grid, in_grid)) / 100.0
        layers.append(LayerLatency(layer.name, layer_shape(layer), out_grid, in_grid,
                                   {"s8": base, "u8": 1.5 * base, "f32": 3.0 * base}))
    fp32 = constant + sum(3.0 * v.values["s8"].flat[-1] for v in layers) * 1.2
    return LatencyTable(task, machine_key(1, 1), layers, {"int": constant, "f32": constant}, fp32)


# ---------------------------------------------------------------------- measuring
def test_one_layer_models_run_the_networks_integer_kernels(tmp_path):
    """What is timed is the kernel onnxruntime runs inside the exported network: one fused integer node."""
    cases = [("conv", (1, 1), True, "QLinearConv"), ("depthwise", (3, 3), True, "QLinearConv"),
             ("linear", (1, 1), False, "QGemm"), ("linear", (1, 1), True, "QGemm")]
    for kind, kernel, quantized, expected in cases:
        geometry = LayerGeometry(kind, kernel, (1, 1), ((kernel[0] - 1) // 2,) * 2, (1, 1),
                             (6, 6) if kind != "linear" else (1, 1), True, quantized)
        for cls in ("s8", "u8"):
            path = tmp_path / f"{kind}-{cls}.onnx"
            ort_session(layer_onnx(geometry, 12, 8, cls, 2), 1, optimized_path=path)
            assert [n.op_type for n in onnx.load(path).graph.node] == [expected], (kind, cls)
            weights = [t for t in onnx.load_from_string(layer_onnx(geometry, 12, 8, cls, 2)).graph.initializer
                       if t.name == "wq"][0]
            assert weights.data_type == (onnx.TensorProto.UINT8 if cls == "u8" else onnx.TensorProto.INT8)


def test_measured_table_reloads_and_is_monotone(measured, tiny_graph):
    reloaded = LatencyTable.load(measured.path, tiny_graph)
    assert reloaded.to_dict() == measured.to_dict()
    assert reloaded.classes == ("s8", "u8", "f32") and reloaded.key == machine_key(1, 1)
    assert {"uniform8_us", "uniform4_us", "fp32_onnx_us", "call_overhead_us"} <= set(reloaded.checks)
    for layer, info in zip(reloaded.layers, tiny_graph.layers):
        assert layer.out_grid[-1] == info.out_channels
        for cls in reloaded.classes:
            along_out = [reloaded.layer_us(info.name, k, info.in_channels, cls) for k in range(1, info.out_channels + 1)]
            along_in = [reloaded.layer_us(info.name, info.out_channels, k, cls) for k in range(1, info.in_channels + 1)]
            assert np.all(np.diff(along_out) >= 0) and np.all(np.diff(along_in) >= 0), (info.name, cls)
        assert np.all(layer.values["u8"] >= layer.values["s8"])
    # the grid follows what pruning can change: the stem reads the network input, the classifier keeps its outputs
    stem, fc = reloaded.layers[0], reloaded.layers[-1]
    assert stem.in_grid.tolist() == [3] and fc.out_grid.tolist() == [10] and reloaded.layers[2].in_grid is None


def test_table_from_another_machine_or_library_is_refused(measured, tiny_graph, tmp_path):
    data = measured.to_dict()
    for field, value in (("cpu", "Some Other CPU"), ("onnxruntime", "0.0.1"), ("torch", "1.0"), ("threads", 4)):
        stale = json.loads(json.dumps(data))
        stale["key"][field] = value
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps(stale))
        with pytest.raises(LatencyTableError, match=f"{field}: table .*Rebuild it on this machine with `ajpq profile "
                                                    f"--task synthetic-tinynet"):
            LatencyTable.load(path, tiny_graph, threads=1 if field == "threads" else None)
        assert LatencyTable.load(path, tiny_graph, check_key=False).key[field] == value
    assert LatencyTable.load(tmp_path / "threads.json", tiny_graph).threads == 4  # a 4-thread table, as asked


def test_table_of_another_model_or_malformed_is_refused(measured, tiny_graph, deploy_task, tmp_path):
    other = CompressionGraph(deploy_task.model, deploy_task.example_input())
    with pytest.raises(LatencyTableError, match="other layers than this model"):
        LatencyTable.load(measured.path, other)
    bad = measured.to_dict()
    bad["layers"][1]["in_channels"] = 7
    (tmp_path / "shape.json").write_text(json.dumps(bad))
    with pytest.raises(LatencyTableError, match="in_grid"):
        LatencyTable.load(tmp_path / "shape.json", tiny_graph)
    bad = measured.to_dict()
    bad["layers"][0]["us"]["s8"][0][0] = -1.0
    (tmp_path / "negative.json").write_text(json.dumps(bad))
    with pytest.raises(LatencyTableError, match="finite latencies >= 0"):
        LatencyTable.load(tmp_path / "negative.json")
    (tmp_path / "pickle.json").write_bytes(b"\x80\x04\x95")
    with pytest.raises(LatencyTableError, match="not JSON"):
        LatencyTable.load(tmp_path / "pickle.json")
    with pytest.raises(LatencyTableError, match="ajpq profile --task NAME"):
        LatencyTable.load(tmp_path / "missing.json")


def test_loading_makes_a_table_monotone(tiny_graph, tmp_path):
    table = synthetic_table(tiny_graph, "synthetic-tinynet")
    data = table.to_dict()
    data["layers"][1]["us"]["s8"][1][1] = 1e6  # a noisy point in the middle of the grid
    data["layers"][1]["us"]["u8"][0][0] = 0.0
    (tmp_path / "t.json").write_text(json.dumps(data))
    layer = LatencyTable.load(tmp_path / "t.json", tiny_graph).layers[1]
    original = table.layers[1].values["s8"]
    fitted = layer.values["s8"]
    assert np.all(np.diff(fitted, axis=0) >= 0) and np.all(np.diff(fitted, axis=1) >= 0)
    # the outlier is pooled with its neighbours (least squares), not carried to every larger channel count
    assert fitted[1, 1] < 1e6 and fitted[0, 0] == original[0, 0] and fitted[-1, -1] < 1e6
    assert np.all(layer.values["u8"] >= layer.values["s8"])


# ---------------------------------------------------------------------- cost model
def test_cost_model_predicts_the_sum_of_layers_plus_constant(tiny_graph):
    table = synthetic_table(tiny_graph, "synthetic-tinynet")
    costs = CostModel(tiny_graph, latency=table)
    assert costs.resources == ("size", "bitops", "macs", "latency")
    assert costs.fp32.latency_us == table.fp32_us and costs.fixed("latency") == 50.0
    eight, four = costs(Policy.uniform(tiny_graph, 8)), costs(Policy.uniform(tiny_graph, 4))
    full = {c: sum(layer.values[c].flat[-1] for layer in table.layers) for c in ("s8", "u8")}
    assert eight.latency_us == pytest.approx(50.0 + full["u8"]) and four.latency_us == pytest.approx(50.0 + full["s8"])
    bits = {name: np.array(four_bits) for name, four_bits in Policy.uniform(tiny_graph, 4).items()}
    bits[tiny_graph.layers[1].name][0] = 8  # one 8-bit channel puts the layer on the uint8-weight kernels
    mixed = Policy(bits)
    extra = table.layers[1].values["u8"].flat[-1] - table.layers[1].values["s8"].flat[-1]
    assert costs(mixed).latency_us == pytest.approx(four.latency_us + extra)
    assert eight.ratios(costs.fp32)["latency"] == pytest.approx(eight.latency_us / table.fp32_us)
    float_costs = CostModel(tiny_graph, 32, latency=table)
    assert float_costs(Policy.uniform(tiny_graph, 8)).latency_us == pytest.approx(50.0 + 2 * full["u8"])
    assert kernel_class(7, 8) == "s8" and kernel_class(8, 8) == "u8" and kernel_class(2, 32) == "f32"
    plain = CostModel(tiny_graph)
    assert "latency" not in plain(Policy.uniform(tiny_graph, 8)).ratios(plain.fp32)
    with pytest.raises(ValueError, match="ajpq profile --task NAME"):
        plain(Policy.uniform(tiny_graph, 8)).resource("latency")
    assert "latency_us" not in plain.fp32.to_dict()


# ---------------------------------------------------------------------- the env
def test_latency_budget_is_never_exceeded(tiny_task, tiny_graph, tmp_path):
    table = synthetic_table(tiny_graph, tiny_task.name)
    path = table.save(tmp_path / "tiny.json")
    probe = AJPQEnv(tiny_task, target=1.0, resource="latency", latency_table=path, cache_size=0)
    floor = probe.budget.minimum / probe.budget.fp32_total
    unpruned = probe.costs(Policy.uniform(tiny_graph, 8)).latency_us / table.fp32_us
    target = floor + 0.3 * (unpruned - floor)
    env = AJPQEnv(tiny_task, target=target, resource="latency", latency_table=path, cache_size=0)
    assert env.spec_kwargs["latency_table"] == str(path)
    rng = np.random.default_rng(0)
    clipped = False
    for seed in range(4):
        env.reset(seed=seed)
        terminated = False
        while not terminated:
            _, _, terminated, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
            clipped |= info["clipped"]
        assert info["budget_met"] and info["latency_ratio"] <= target + 1e-12
        assert info["latency_us"] == pytest.approx(env.costs(env.recipe()).latency_us)
    assert clipped, "the target should make the budget bind"
    sized = AJPQEnv(tiny_task, latency_table=table, cache_size=0)  # another resource still reports latency
    sized.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = sized.step(np.zeros(sized.action_space.shape, np.float32))
    assert "latency_ratio" in info and info["size_ratio"] <= 0.125


def test_env_without_a_table_names_the_profile_command(tiny_task, tiny_graph, tmp_path):
    assert not default_table_path(tiny_task.name).exists()
    with pytest.raises(LatencyTableError, match="ajpq profile --task synthetic-tinynet"):
        AJPQEnv(tiny_task, resource="latency", target=0.5)
    foreign = synthetic_table(tiny_graph, tiny_task.name)
    foreign.key = {**foreign.key, "cpu": "Another CPU"}
    with pytest.raises(LatencyTableError, match="another machine"):
        AJPQEnv(tiny_task, resource="latency", target=0.5, latency_table=foreign.save(tmp_path / "foreign.json"))
    with pytest.raises(ValueError, match="resource must be one of"):
        AJPQEnv(tiny_task, resource="speed", target=0.5)


def test_profile_command_reports_bad_input(capsys):
    assert cli.main(["profile", "--task", "no-such-task"]) == 2
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["profile", "--task", "synthetic-mobilenet_v2", "--threads", "0"])


def test_profile_refuses_a_folder_out_before_measuring(tmp_path, monkeypatch, capsys):
    import ajpq_env.deploy.profile as profile

    def refuse(*args, **kwargs):
        raise AssertionError("the task was profiled before --out was refused")

    monkeypatch.setattr(profile, "profile_task", refuse)
    (tmp_path / "folder").mkdir()
    assert cli.main(["profile", "--task", "synthetic-mobilenet_v2", "--threads", "1", "--out", str(tmp_path / "folder")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--out" in err and "is a folder; expected a file name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # no stray temporary file


def test_a_refused_save_leaves_no_temporary_file(tiny_graph, tiny_task, tmp_path):
    (tmp_path / "table.json").mkdir()
    with pytest.raises(IsADirectoryError):
        synthetic_table(tiny_graph, tiny_task.name).save(tmp_path / "table.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_env_finds_the_cached_table(tiny_task, tiny_graph, tmp_path, monkeypatch):
    monkeypatch.setenv("AJPQ_CACHE", str(tmp_path))
    path = synthetic_table(tiny_graph, tiny_task.name).save(default_table_path(tiny_task.name))
    assert path == tmp_path / "latency" / "synthetic-tinynet-t1-b1.json"
    env = AJPQEnv(tiny_task, resource="latency", target=1.0, cache_size=0)
    assert env.latency_table.path == path and env.budget.resource == "latency"
    assert "latency_table" not in env.spec_kwargs  # found by the task's name, as a replay will find it

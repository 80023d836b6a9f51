"""Export (packed artefact + ONNX) and evaluation of compressed models on tiny synthetic tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ajpq_env.compression import CompressionGraph, CostModel, Policy, compress, packed, simulate
from ajpq_env.deploy import (
    Architecture,
    FinetuneConfig,
    compress_as_searched,
    evaluate_artefact,
    export_model,
    finetune,
    onnx_session,
)
from ajpq_env.tasks import synthetic_task

onnx = pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install -e '.[onnx]'")

TOL = 1e-4  # the bound on |loader - simulated| and |onnxruntime - simulated| (logits)



def _outputs(task, model_or_path):
    x = task.splits["test"].tensor()
    if isinstance(model_or_path, torch.nn.Module):
        with torch.no_grad():
            return model_or_path.eval()(x).numpy()
    if str(model_or_path).endswith(".onnx"):
        return onnx_session(model_or_path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        return packed.load(model_or_path)(x).numpy()


def _random_recipe(task, graph, seed=0):
    """Mixed 2..8-bit widths with about a third of every prunable group's channels pruned."""
    rng = np.random.default_rng(seed)
    bits = {}
    for group in graph.groups:
        pruned = [] if group.locked else rng.choice(group.channels, group.channels // 3, replace=False)
        for member in group.members:
            b = rng.integers(2, 9, graph.layer(member).out_channels)
            b[pruned] = 0
            bits[member] = b
    return Policy(bits, meta={"task": task.name, "model": task.spec.model})


@pytest.mark.parametrize("onnx_format", ["qdq", "fp32"])
def test_loader_and_onnxruntime_match_the_simulated_model(deploy_task, deploy_recipe, tmp_path, onnx_format):
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    compressed = compress(deploy_task.model, graph, deploy_recipe)
    export_model(compressed, deploy_recipe, Architecture.from_task(deploy_task), tmp_path, onnx_format=onnx_format)
    reference = _outputs(deploy_task, simulate(deploy_task.model, graph, deploy_recipe))
    assert np.abs(reference).max() > 10 * TOL, "logits too small for the tolerance to mean anything"
    np.testing.assert_allclose(_outputs(deploy_task, tmp_path / "model.ajpq"), reference, rtol=0, atol=TOL)
    np.testing.assert_allclose(_outputs(deploy_task, tmp_path / "model.onnx"), reference, rtol=0, atol=TOL)


@pytest.mark.parametrize("model", ["resnet20", "mobilenet_v1"])
def test_other_architectures_export(model, tmp_path):
    task = synthetic_task(model, sizes=(8, 8, 16))
    graph = CompressionGraph(task.model, task.example_input())
    policy = _random_recipe(task, graph)
    export_model(compress(task.model, graph, policy), policy, Architecture.from_task(task), tmp_path)
    reference = _outputs(task, simulate(task.model, graph, policy))
    np.testing.assert_allclose(_outputs(task, tmp_path / "model.ajpq"), reference, rtol=0, atol=TOL)
    np.testing.assert_allclose(_outputs(task, tmp_path / "model.onnx"), reference, rtol=0, atol=TOL)


def test_artefact_bytes_on_disk_equal_the_reported_size(deploy_env, deploy_task, deploy_recipe, tmp_path):
    graph = deploy_env.graph
    manifest = export_model(compress(deploy_task.model, graph, deploy_recipe), deploy_recipe,
                            Architecture.from_task(deploy_task), tmp_path)
    _, header_bytes = packed.read_header(tmp_path / "model.ajpq")
    on_disk = (tmp_path / "model.ajpq").stat().st_size - header_bytes
    reported = deploy_env.apply(deploy_recipe)["size_bytes"]  # what the search reported for this recipe
    assert on_disk == reported == CostModel(graph)(deploy_recipe).size_bytes == manifest["cost"]["size_bytes"]
    assert manifest["artefact"]["payload_bytes"] == on_disk
    assert json.loads((tmp_path / "export.json").read_text()) == manifest
    result = evaluate_artefact(tmp_path / "model.ajpq", deploy_task.splits["test"])
    assert result.size_matches and result.payload_bytes == reported


def test_evaluate_artefact_runs_both_runtimes(deploy_task, deploy_recipe, tmp_path):
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    compressed = compress(deploy_task.model, graph, deploy_recipe)
    export_model(compressed, deploy_recipe, Architecture.from_task(deploy_task), tmp_path)
    result = evaluate_artefact(tmp_path / "model.ajpq", deploy_task.splits["test"], onnx_path=tmp_path / "model.onnx")
    assert result.task == deploy_task.name and result.samples == len(deploy_task.splits["test"])
    assert result.metric == result.onnx_metric == deploy_task.evaluate(compressed, "test")
    assert result.max_abs_diff <= TOL and result.agreement == 1.0
    assert result.to_dict()["size_matches"] is True
    with pytest.raises(FileNotFoundError, match="ONNX file"):
        evaluate_artefact(tmp_path / "model.ajpq", deploy_task.splits["test"], onnx_path=tmp_path / "missing.onnx")


def test_finetuned_model_exports_exactly(deploy_task, deploy_recipe, tmp_path):
    tuned = finetune(deploy_task, deploy_recipe, FinetuneConfig(epochs=1, batch_size=32, lr=0.05, progress=False,
                                                                 evaluate_baselines=False, evaluate_search=False))
    tuned.save(tmp_path / "ft")
    manifest = export_model(tuned.model, tuned.policy, tuned.architecture, tmp_path / "export")
    reference = _outputs(deploy_task, tuned.model)
    np.testing.assert_allclose(_outputs(deploy_task, tmp_path / "export" / "model.ajpq"), reference, rtol=0, atol=TOL)
    np.testing.assert_allclose(_outputs(deploy_task, tmp_path / "export" / "model.onnx"), reference, rtol=0, atol=TOL)
    assert manifest["artefact"]["payload_bytes"] == CostModel(tuned.graph())(deploy_recipe).size_bytes


def test_qdq_onnx_stores_int8_codes(deploy_task, deploy_recipe, tmp_path):
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    compressed = compress(deploy_task.model, graph, deploy_recipe)
    arch = Architecture.from_task(deploy_task)
    qdq = export_model(compressed, deploy_recipe, arch, tmp_path / "qdq", onnx_format="qdq")
    fp32 = export_model(compressed, deploy_recipe, arch, tmp_path / "fp32", onnx_format="fp32")
    proto = onnx.load(tmp_path / "qdq" / "model.onnx")
    int8 = [i for i in proto.graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("_quantized")]
    assert len(int8) == len(graph.layers)
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) == len(graph.layers)
    assert sum(len(i.raw_data) for i in int8) == CostModel(graph)(deploy_recipe).params  # 1 byte per weight
    assert qdq["onnx"]["file_bytes"] < fp32["onnx"]["file_bytes"]
    none = export_model(compressed, deploy_recipe, arch, tmp_path / "none", onnx_format=None)
    assert none["onnx"] is None and not (tmp_path / "none" / "model.onnx").exists()


def test_export_refuses_a_model_that_is_not_the_recipes(deploy_task, deploy_recipe, tmp_path):
    arch = Architecture.from_task(deploy_task)
    with pytest.raises(ValueError, match="output channels, the recipe keeps"):
        export_model(deploy_task.model, deploy_recipe, arch, tmp_path)  # not pruned
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    unquantized = compress(deploy_task.model, graph, Policy.uniform(graph, 8))
    with pytest.raises(ValueError, match="off the"):
        export_model(unquantized, Policy.uniform(graph, 2, meta=deploy_recipe.meta), arch, tmp_path)
    assert not (tmp_path / "model.ajpq").exists()


def test_export_refuses_a_recipe_for_another_task(deploy_task, deploy_recipe, tmp_path):
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    compressed = compress(deploy_task.model, graph, deploy_recipe)
    other = Architecture("cifar10-mobilenet_v2", "mobilenet_v2", deploy_task.spec.model_kwargs,
                         deploy_task.spec.input_shape)
    with pytest.raises(ValueError, match=f"'{deploy_task.name}'.*'cifar10-mobilenet_v2'"):
        export_model(compressed, deploy_recipe, other, tmp_path)


def test_compress_as_searched_scores_what_the_search_reported(deploy_env, deploy_task, deploy_recipe):
    model = compress_as_searched(deploy_task, deploy_recipe, deploy_env.graph)
    assert deploy_task.evaluate(model, "search") == deploy_env.apply(deploy_recipe)["metric"]

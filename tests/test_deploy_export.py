"""Export (packed artefact + ONNX) and evaluation of compressed models on tiny synthetic tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ajpq_env.compression import (
    CompressionGraph,
    CostModel,
    Deployable,
    Policy,
    compress,
    packed,
    recalibrate_batchnorm,
)
from ajpq_env.deploy import (
    Architecture,
    FinetuneConfig,
    Finetuned,
    compress_as_searched,
    evaluate_artefact,
    export_model,
    finetune,
    onnx_session,
)
from ajpq_env.tasks import synthetic_task

onnx = pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install -e '.[onnx]'")

TOL = 1e-3  # the bound on |onnxruntime - deployed| (logits); the package loader must be bit-exact


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


def _deployable(task, graph, policy, a_bits=8):
    model = compress(task.model, graph, policy)
    calibration = [task.splits["train"].batch(np.arange(min(32, len(task.splits["train"]))))[0]]
    recalibrate_batchnorm(model, calibration)
    return Deployable(model, policy, a_bits, calibration)


@pytest.mark.parametrize("onnx_format", ["qdq", "fp32"])
def test_loader_and_onnxruntime_match_the_deployed_model(deploy_task, deploy_recipe, tmp_path, onnx_format):
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    deployable = _deployable(deploy_task, graph, deploy_recipe)
    export_model(deployable, Architecture.from_task(deploy_task), tmp_path, onnx_format=onnx_format)
    reference = _outputs(deploy_task, deployable.deployed(graph))
    assert np.abs(reference).max() > 10 * TOL, "logits too small for the tolerance to mean anything"
    assert np.array_equal(_outputs(deploy_task, tmp_path / "model.ajpq"), reference)
    onnx_reference = reference if onnx_format == "qdq" else _outputs(deploy_task, deployable.deployed(graph, 32))
    onnx_out = _outputs(deploy_task, tmp_path / "model.onnx")
    np.testing.assert_allclose(onnx_out, onnx_reference, rtol=0, atol=TOL)
    assert (onnx_out.argmax(1) == onnx_reference.argmax(1)).all()


@pytest.mark.parametrize("model", ["resnet20", "mobilenet_v1"])
def test_other_architectures_export(model, tmp_path):
    task = synthetic_task(model, sizes=(8, 8, 16))
    graph = CompressionGraph(task.model, task.example_input())
    policy = _random_recipe(task, graph)
    deployable = _deployable(task, graph, policy)
    export_model(deployable, Architecture.from_task(task), tmp_path)
    reference = _outputs(task, deployable.deployed(graph))
    assert np.array_equal(_outputs(task, tmp_path / "model.ajpq"), reference)
    np.testing.assert_allclose(_outputs(task, tmp_path / "model.onnx"), reference, rtol=0, atol=TOL)


def test_artefact_bytes_on_disk_equal_the_reported_size(deploy_env, deploy_task, deploy_recipe, tmp_path):
    graph = deploy_env.graph
    manifest = export_model(compress_as_searched(deploy_task, deploy_recipe, graph),
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
    deployable = _deployable(deploy_task, graph, deploy_recipe)
    export_model(deployable, Architecture.from_task(deploy_task), tmp_path)
    result = evaluate_artefact(tmp_path / "model.ajpq", deploy_task.splits["test"], onnx_path=tmp_path / "model.onnx")
    assert result.task == deploy_task.name and result.samples == len(deploy_task.splits["test"])
    assert result.metric == result.onnx_metric == deploy_task.evaluate(deployable.deployed(graph), "test")
    assert result.max_abs_diff <= TOL and result.agreement == 1.0
    assert result.to_dict()["size_matches"] is True
    with pytest.raises(FileNotFoundError, match="ONNX file"):
        evaluate_artefact(tmp_path / "model.ajpq", deploy_task.splits["test"], onnx_path=tmp_path / "missing.onnx")


def test_evaluate_refuses_data_of_another_shape(deploy_task, deploy_recipe, tmp_path):
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    export_model(_deployable(deploy_task, graph, deploy_recipe), Architecture.from_task(deploy_task), tmp_path,
                 onnx_format=None)
    other = synthetic_task(input_shape=(3, 12, 12)).splits["test"]  # same channels: the model would run on it
    with pytest.raises(ValueError, match=r"exported for inputs of shape \[3, 16, 16\].*shape \[3, 12, 12\]"):
        evaluate_artefact(tmp_path / "model.ajpq", other)


def test_finetuned_model_exports_exactly(deploy_task, deploy_recipe, tmp_path):
    tuned = finetune(deploy_task, deploy_recipe, FinetuneConfig(epochs=1, batch_size=32, lr=0.05, progress=False,
                                                                 evaluate_baselines=False, evaluate_search=False))
    assert tuned.a_bits == 8 and len(tuned.qparams) == tuned.graph().deploy.quantizers
    tuned.save(tmp_path / "ft")
    reloaded = Finetuned.load(tmp_path / "ft")  # rebuilds the deployed network from the checkpoint alone
    manifest = export_model(reloaded.deployable(), reloaded.architecture, tmp_path / "export")
    reference = _outputs(deploy_task, tuned.deployable().deployed(tuned.graph()))
    assert deploy_task.evaluate(tuned.deployable().deployed(tuned.graph()), "test") == tuned.metrics["test"]
    assert np.array_equal(_outputs(deploy_task, tmp_path / "export" / "model.ajpq"), reference)
    np.testing.assert_allclose(_outputs(deploy_task, tmp_path / "export" / "model.onnx"), reference, rtol=0, atol=TOL)
    assert manifest["artefact"]["payload_bytes"] == CostModel(tuned.graph())(deploy_recipe).size_bytes


def test_qdq_onnx_runs_integer_kernels(deploy_task, deploy_recipe, tmp_path):
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    deployable = _deployable(deploy_task, graph, deploy_recipe)
    arch = Architecture.from_task(deploy_task)
    qdq = export_model(deployable, arch, tmp_path / "qdq", onnx_format="qdq")
    fp32 = export_model(deployable, arch, tmp_path / "fp32", onnx_format="fp32")
    optimized = tmp_path / "opt.onnx"
    onnx_session(tmp_path / "qdq" / "model.onnx", threads=1, optimized_path=str(optimized))
    ops = [n.op_type for n in onnx.load(optimized).graph.node]
    assert ops.count("QLinearConv") == sum(layer.kind != "linear" for layer in graph.layers)
    for fmt in (qdq, fp32):  # both store one byte per weight: the integer codes
        proto = onnx.load(tmp_path / ("qdq" if fmt is qdq else "fp32") / "model.onnx")
        codes = [n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant" and len(n.attribute[0].t.dims) > 1]
        assert {t.data_type for t in codes} <= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
        assert sum(len(t.raw_data) for t in codes) == CostModel(graph)(deploy_recipe).params
    none = export_model(deployable, arch, tmp_path / "none", onnx_format=None)
    assert none["onnx"] is None and not (tmp_path / "none" / "model.onnx").exists()
    low = Deployable(deployable.model, deploy_recipe, 4, deployable.calibration)
    with pytest.raises(ValueError, match="8-bit activations"):
        export_model(low, arch, tmp_path / "a4", onnx_format="qdq")
    assert export_model(low, arch, tmp_path / "a4", onnx_format=None)["a_bits"] == 4


def test_export_refuses_a_model_that_is_not_the_recipes(deploy_task, deploy_recipe, tmp_path):
    arch = Architecture.from_task(deploy_task)
    with pytest.raises(ValueError, match="output channels, the recipe keeps"):
        export_model(Deployable(deploy_task.model, deploy_recipe, 8, []), arch, tmp_path)  # not pruned
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    unquantized = compress(deploy_task.model, graph, Policy.uniform(graph, 8))
    with pytest.raises(ValueError, match="off the"):
        export_model(Deployable(unquantized, Policy.uniform(graph, 2, meta=deploy_recipe.meta), 8, []), arch, tmp_path)
    assert not (tmp_path / "model.ajpq").exists()


def test_export_refuses_a_recipe_for_another_task(deploy_task, deploy_recipe, tmp_path):
    graph = CompressionGraph(deploy_task.model, deploy_task.example_input())
    other = Architecture("cifar10-mobilenet_v2", "mobilenet_v2", deploy_task.spec.model_kwargs,
                         deploy_task.spec.input_shape)
    with pytest.raises(ValueError, match=f"'{deploy_task.name}'.*'cifar10-mobilenet_v2'"):
        export_model(_deployable(deploy_task, graph, deploy_recipe), other, tmp_path)


def test_compress_as_searched_scores_what_the_search_reported(deploy_env, deploy_task, deploy_recipe):
    deployable = compress_as_searched(deploy_task, deploy_recipe, deploy_env.graph)
    assert deployable.a_bits == deploy_recipe.meta["a_bits"] == 8
    deployed = deployable.deployed(deploy_env.graph)
    assert deploy_task.evaluate(deployed, "search") == deploy_env.apply(deploy_recipe)["metric"]

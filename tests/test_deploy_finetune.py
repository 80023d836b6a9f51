"""Quantization-aware fine-tuning (ajpq_env.compression.qat, .finetune, .checkpoint) on the tiny synthetic task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ajpq_env.compression import CompressionGraph, Policy, compress, quantize_codes
from ajpq_env.compression.qat import kept_bits
from ajpq_env.deploy import FakeQuantize, FinetuneConfig, Finetuned, finetune, freeze, grid_errors, prepare_qat
from ajpq_env.deploy.finetune import augment

FAST = {"batch_size": 32, "progress": False, "evaluate_baselines": False, "bn_recalibration_batches": 1}



@pytest.fixture(scope="module")
def graph(deploy_task) -> CompressionGraph:
    return CompressionGraph(deploy_task.model, deploy_task.example_input())


@pytest.fixture(scope="module")
def tuned(_one_thread, deploy_task, deploy_recipe) -> Finetuned:
    # A large learning rate, so that every weight moves and many would leave the grid were it not enforced.
    return finetune(deploy_task, deploy_recipe, FinetuneConfig(epochs=2, lr=0.2, **FAST))


def test_prepare_qat_is_compress_with_removed_channels(deploy_task, graph, deploy_recipe):
    model = prepare_qat(deploy_task.model, graph, deploy_recipe).eval()
    for layer in graph.layers:
        assert model.get_submodule(layer.name).weight.shape[0] == deploy_recipe.kept(layer.name)
    x = deploy_task.splits["test"].tensor()
    with torch.no_grad():
        torch.testing.assert_close(model(x), compress(deploy_task.model, graph, deploy_recipe)(x), rtol=0, atol=1e-6)


def test_fake_quantize_forward_is_quantized_and_gradient_straight_through():
    weight = torch.randn(3, 4, 3, 3, requires_grad=True)
    bits = np.array([2, 4, 8])
    fq = FakeQuantize(bits)
    out = fq(weight)
    codes, scales = quantize_codes(weight.detach(), bits)
    torch.testing.assert_close(out.detach(), codes.float() * scales.view(-1, 1, 1, 1), rtol=0, atol=0)
    grad = torch.randn_like(weight)
    (out * grad).sum().backward()
    torch.testing.assert_close(weight.grad, grad, rtol=0, atol=0)
    with pytest.raises(ValueError, match="2..8"):
        FakeQuantize(np.array([0, 4]))


def test_finetune_keeps_pruned_channels_pruned_and_bit_widths_as_given(tuned, deploy_task, graph, deploy_recipe):
    start = compress(deploy_task.model, graph, deploy_recipe)
    moved = total = 0
    for layer in graph.layers:
        weight = tuned.model.get_submodule(layer.name).weight.detach()
        bits = kept_bits(deploy_recipe, layer.name).astype(np.int64)
        assert weight.shape[0] == deploy_recipe.kept(layer.name), f"{layer.name}: a pruned channel came back"
        codes, scales = quantize_codes(weight, bits)
        torch.testing.assert_close(codes.float() * scales.view(-1, *[1] * (weight.dim() - 1)), weight, rtol=1e-6,
                                   atol=0)
        per_channel = codes.flatten(1).abs().amax(1).numpy()
        assert (per_channel <= 2 ** (bits - 1) - 1).all(), f"{layer.name}: codes exceed their bit-widths"
        distinct = [len(torch.unique(row)) for row in weight.flatten(1)]
        assert all(d <= 2**b - 1 for d, b in zip(distinct, bits))
        moved += int((weight != start.get_submodule(layer.name).weight).sum())
        total += weight.numel()
    assert moved > 0.5 * total, f"fine-tuning changed only {moved} of {total} weights"
    assert grid_errors(tuned.model, graph, deploy_recipe) == []
    assert not any(isinstance(m, FakeQuantize) for m in tuned.model.modules()), "parametrizations must be frozen"
    assert set(tuned.metrics) == {"search", "test"} and len(tuned.history) == 2
    assert tuned.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule ends at 0


def test_checkpoint_round_trip(tuned, deploy_task, tmp_path):
    tuned.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.pt", "recipe.json", "finetune.json"}
    assert Policy.load(tmp_path / "recipe.json") == tuned.policy
    loaded = Finetuned.load(tmp_path)
    x = deploy_task.splits["test"].tensor()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), tuned.model(x), rtol=0, atol=0)
    assert loaded.metrics == tuned.metrics and loaded.architecture == tuned.architecture


def test_checkpoint_off_the_grid_is_refused(tuned, graph, tmp_path):
    tuned.save(tmp_path)
    data = torch.load(tmp_path / "model.pt", weights_only=True)
    name = f"{graph.layers[1].name}.weight"
    data["state_dict"][name] = data["state_dict"][name] + 1e-3
    torch.save(data, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not on the recipe's quantization grid"):
        Finetuned.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="ajpq finetune"):
        Finetuned.load(tmp_path / "missing")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d.pop("state_dict"), "lacks state_dict"),
        (lambda d: d.__setitem__("architecture", [1]), "architecture: expected a mapping"),
        (lambda d: d["architecture"]["builder_kwargs"].__setitem__("bogus", 1), "takes no argument bogus"),
        (lambda d: d["architecture"].__setitem__("input_shape", [1, 16, 16]), "input_shape has 1 channels"),
        (lambda d: d["architecture"].__setitem__("input_shape", [3, 10**5, 10**5]), "height/width must be an integer"),
        (lambda d: d.__setitem__("metrics", [1]), "state_dict and metrics must be mappings"),
        (lambda d: d["metrics"].__setitem__("test", "high"), "metrics must map names to numbers"),
    ],
    ids=["no-state", "arch-list", "kwargs-unknown", "channels", "huge-input", "metrics-list", "metric-text"],
)
def test_a_damaged_checkpoint_is_a_value_error_naming_it(tuned, tmp_path, damage, message):
    """Every field is checked before anything is built from it (no KeyError, TypeError or allocation failure)."""
    tuned.save(tmp_path)
    data = torch.load(tmp_path / "model.pt", weights_only=True)
    damage(data)
    torch.save(data, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=message) as err:
        Finetuned.load(tmp_path)
    assert "model.pt" in str(err.value)


def test_a_damaged_summary_beside_a_checkpoint_only_loses_the_history(tuned, tmp_path):
    tuned.save(tmp_path)
    for text in ("[" * 100_000, "[1, 2]", '{"history": 5, "seconds": "x"}'):
        (tmp_path / "finetune.json").write_text(text)
        loaded = Finetuned.load(tmp_path)
        assert loaded.history == [] and loaded.metrics == tuned.metrics


def test_finetune_is_reproducible(deploy_task, deploy_recipe):
    config = FinetuneConfig(epochs=1, samples_per_epoch=64, evaluate_search=False, **FAST)
    a, b = finetune(deploy_task, deploy_recipe, config), finetune(deploy_task, deploy_recipe, config)
    for (name, ta), tb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(ta, tb, rtol=0, atol=0, msg=name)


def test_finetune_baselines(deploy_task, deploy_recipe):
    result = finetune(deploy_task, deploy_recipe,
                      FinetuneConfig(epochs=1, samples_per_epoch=32, **{**FAST, "evaluate_baselines": True}))
    assert result.metrics["fp32_test"] == deploy_task.fp32_metric("test")
    assert 0.0 <= result.metrics["before_test"] <= 1.0


def test_recipe_for_another_task_or_model_is_refused(deploy_task, deploy_recipe):
    other_task = Policy(dict(deploy_recipe), meta={"task": "cifar10-resnet20", "model": "resnet20"})
    with pytest.raises(ValueError) as err:
        finetune(deploy_task, other_task, FinetuneConfig(epochs=1, **FAST))
    for name in ("cifar10-resnet20", "resnet20", deploy_task.name, "mobilenet_v2"):
        assert name in str(err.value)
    other_model = Policy(dict(deploy_recipe), meta={"task": deploy_task.name, "model": "mobilenet_v1"})
    with pytest.raises(ValueError, match="mobilenet_v1.*mobilenet_v2"):
        finetune(deploy_task, other_model, FinetuneConfig(epochs=1, **FAST))
    no_meta = Policy({"conv1": [8, 8], "linear": [8]})
    with pytest.raises(ValueError, match=f"does not fit task '{deploy_task.name}'.*missing"):
        finetune(deploy_task, no_meta, FinetuneConfig(epochs=1, **FAST))


@pytest.mark.parametrize(("field", "value"), [("epochs", 0), ("lr", -1.0), ("samples_per_epoch", 1)])
def test_config_out_of_range(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value}).check()


def test_augment_keeps_shape_and_is_identity_when_off():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, 8)
    assert torch.equal(augment(x, 0, False, generator), x)
    y = augment(x, 2, True, generator)
    assert y.shape == x.shape
    shifted = augment(torch.ones(64, 1, 8, 8), 2, False, generator)
    assert (shifted == 0).any() and (shifted.flatten(1).sum(1) >= 36).all()  # a crop keeps >= 6x6 of the image


def test_freeze_leaves_plain_weights(deploy_task, graph, deploy_recipe):
    model = freeze(prepare_qat(deploy_task.model, graph, deploy_recipe))
    names = set(model.state_dict())
    assert all("parametrizations" not in name for name in names)
    assert grid_errors(model, graph, deploy_recipe) == []

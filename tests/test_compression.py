"""The compression engine: coupling, policy validation, quantization, simulation, cost and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from ajpq_env.compression import (
    CompressionGraph,
    CostModel,
    Policy,
    compress,
    export,
    load,
    quantize_weight,
    simulate,
    to_deployed,
)
from ajpq_env.compression.packed import pack_codes, read_header, unpack_codes
from ajpq_env.compression.quantize import quantize_codes
from ajpq_env.models import build_model

# name -> (builder kwargs, input shape); tiny widths and inputs keep every example fast
MODELS = {
    "mobilenet_v2": ({"num_classes": 10, "width_mult": 0.25}, (3, 16, 16)),
    "mobilenet_v1": ({"num_classes": 10, "width_mult": 0.25}, (3, 16, 16)),
    "resnet20": ({"num_classes": 10}, (3, 16, 16)),
    "skynet": ({}, (3, 32, 64)),  # reorg + concat bypass; published widths, tiny input
}


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and shifts, so that a channel's BN shift is visible if left behind."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    name = request.param
    kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = _randomise_batchnorm(build_model(name, **kwargs))
    graph = CompressionGraph(model, torch.zeros(1, *shape))
    return name, kwargs, shape, model, graph


# ------------------------------------------------------------------------------------------ graph
def test_graph_mobilenet_v2_coupling():
    model = build_model("mobilenet_v2", num_classes=10).eval()
    graph = CompressionGraph(model, torch.zeros(1, 3, 32, 32))
    # the depthwise conv follows its expand conv
    assert graph.group_of("features.2.conv.1.0") is graph.group_of("features.2.conv.0.0")
    assert graph.sparsity_locked("features.2.conv.1.0") == "follows features.2.conv.0.0"
    # the project convs adding into one residual stream (blocks 4, 5, 6 of stage 3) share one channel set
    stream = graph.group_of("features.4.conv.2")
    assert {"features.5.conv.2", "features.6.conv.2"} <= set(stream.members)
    assert not stream.locked
    # the classifier's outputs are never pruned
    assert graph.group_of("classifier.1").locked
    assert graph.layers[-1].kind == "linear"
    assert [layer.index for layer in graph.layers] == list(range(len(graph.layers)))


def test_graph_resnet20_locks_padded_shortcut_stream_only():
    graph = CompressionGraph(build_model("resnet20"), torch.zeros(1, 3, 32, 32))
    inner = [layer.name for layer in graph.layers if layer.name.endswith("conv1") and "layer" in layer.name]
    assert len(inner) == 9
    assert all(not graph.sparsity_locked(name) for name in inner)
    assert graph.sparsity_locked("layer2.0.conv2") == "coupling not an identity channel map"
    assert graph.sparsity_locked("conv1")


def test_params_and_macs_match_torchvision_metadata():
    from torchvision.models import MobileNet_V2_Weights

    model = build_model("mobilenet_v2_imagenet").eval()
    graph = CompressionGraph(model, torch.zeros(1, 3, 224, 224))
    fp32 = CostModel(graph).fp32
    meta = MobileNet_V2_Weights.IMAGENET1K_V1.meta
    assert fp32.macs / 1e9 == pytest.approx(meta["_ops"], abs=5e-4)
    assert fp32.size_bytes == 4 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert meta["num_params"] == sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ quantization
@pytest.mark.parametrize("bits", range(2, 9))
def test_quantization_matches_reference_bit_for_bit(bits):
    w = torch.randn(32, 8, 3, 3) * torch.rand(32, 1, 1, 1)
    w[3] = 0.0  # an all-zero channel
    out = quantize_weight(w, np.full(32, bits))
    # independent reference: plain per-channel round (half to even) and clamp, in float32
    ref = w.numpy().reshape(32, -1).astype(np.float32)
    qmax = np.float32(2 ** (bits - 1) - 1)
    maxabs = np.abs(ref).max(axis=1)
    scale = np.where(maxabs > 0, maxabs / qmax, np.float32(1.0)).astype(np.float32)
    codes = np.clip(np.rint(ref * (np.float32(1.0) / scale)[:, None]), -qmax, qmax)
    expected = (codes * scale[:, None]).astype(np.float32).reshape(w.shape)
    assert np.array_equal(out.numpy(), expected)
    assert len(np.unique(codes)) <= 2 * qmax + 1


def test_mixed_bits_in_one_call_and_zero_bits():
    w = torch.randn(6, 4)
    bits = np.array([0, 2, 3, 5, 8, 0])
    out = quantize_weight(w, bits)
    for c, b in enumerate(bits):
        if b == 0:
            assert torch.all(out[c] == 0)
        else:
            assert torch.equal(out[c], quantize_weight(w[c : c + 1], np.array([b]))[0])
    codes, scales = quantize_codes(w, bits)
    assert torch.equal(codes.float() * scales[:, None], out)


@given(
    bits=st.lists(st.integers(2, 8), min_size=1, max_size=12),
    per_channel=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_pack_unpack_roundtrip(bits, per_channel, seed):
    bits = np.array(bits)
    rng = np.random.default_rng(seed)
    qmax = 2 ** (bits - 1) - 1
    codes = rng.integers(-qmax[:, None], qmax[:, None] + 1, (len(bits), per_channel))
    data = pack_codes(codes, bits)
    assert len(data) == (int(bits.sum()) * per_channel + 7) // 8
    assert np.array_equal(unpack_codes(data, bits, per_channel), codes)


# ------------------------------------------------------------------------------------------ simulate / export
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), max_sparsity=st.sampled_from([0.0, 0.5, 0.9]), a_bits=st.sampled_from([8, 4, 32]))
def test_simulated_equals_exported_and_size_equals_file(setup, tmp_path_factory, seed, max_sparsity, a_bits):
    name, kwargs, shape, model, graph = setup
    policy = Policy.random(graph, np.random.default_rng(seed), max_sparsity=max_sparsity)
    policy.validate(graph)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        simulated = simulate(model, graph, policy)(x)
        compressed = compress(model, graph, policy)
        physical = compressed(x)
    assert (simulated - physical).abs().max() <= 1e-4  # a 0-bit channel behaves exactly like a removed one
    deployed = to_deployed(compressed, graph, policy, [x], a_bits)
    path = tmp_path_factory.mktemp("export") / f"{name}.ajpq"
    info = export(deployed, graph, policy, path, builder=name, builder_kwargs=kwargs, a_bits=a_bits)
    cost = CostModel(graph, a_bits)(policy)
    on_disk = path.stat().st_size
    assert info.payload_bytes == cost.size_bytes
    assert on_disk - info.header_bytes == cost.size_bytes
    _, offset = read_header(path)
    assert offset == info.header_bytes
    with torch.no_grad():
        reloaded = load(path)(x)
        expected = deployed(x)
    assert torch.equal(reloaded, expected)  # the artefact is the deployed network, bit for bit


@pytest.mark.parametrize("seed", [0, 1])
def test_batchnorm_folding_leaves_outputs_unchanged(setup, seed):
    _, _, shape, model, graph = setup
    policy = Policy.random(graph, np.random.default_rng(seed), max_sparsity=0.5)
    compressed = compress(model, graph, policy)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(seed))
    folded = to_deployed(compressed, graph, policy, [], 32, storage=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        reference, out = compressed(x), folded(x)
    assert (out - reference).abs().max() <= 1e-5 * max(1.0, float(reference.abs().max()))
    # as stored (float16 scales and biases with a per-layer exponent): relative error of a rounding, no more
    stored = to_deployed(compressed, graph, policy, [], 32)
    with torch.no_grad():
        assert (stored(x) - reference).abs().max() <= 2e-2 * max(1.0, float(reference.abs().max()))


def _independent_macs(model: nn.Module, shape) -> int:
    """Multiply-accumulates of Conv2d/Linear counted from the modules' actual tensors in a forward pass."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output.shape[2] * output.shape[3] * module.weight.numel()
        else:
            total += module.weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def test_macs_and_params_of_pruned_network_match_independent_count(setup):
    import torch_pruning as tp

    name, kwargs, shape, model, graph = setup
    costs = CostModel(graph)
    for seed in range(3):
        policy = Policy.random(graph, np.random.default_rng(seed))
        pruned = compress(model, graph, policy)
        cost = costs(policy)
        assert cost.macs == _independent_macs(pruned, shape)
        weights = sum(pruned.get_submodule(layer.name).weight.numel() for layer in graph.layers)
        assert cost.params == weights
        _, tp_params = tp.utils.count_ops_and_params(pruned, torch.zeros(1, *shape))
        assert tp_params == sum(p.numel() for p in pruned.parameters())
        assert cost.bitops <= cost.macs * 8 * 8
    assert costs.fp32.macs == _independent_macs(model, shape)


@pytest.mark.parametrize("a_bits", [8, 32])
def test_uniform_8bit_costs_weights_scales_biases_and_quantizers(setup, a_bits):
    _, _, _, model, graph = setup
    costs = CostModel(graph, a_bits)
    cost = costs(Policy.uniform(graph, 8))
    ratios = cost.ratios(costs.fp32)
    assert ratios["macs"] == 1.0
    assert ratios["bitops"] == pytest.approx(8 * a_bits / (32 * 32))
    biased = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None}
    expected = 0
    for layer in graph.layers:  # codes, float16 scales (+ exponent byte), biases where BN or a bias is folded in
        has_bias = layer.name in biased or graph.deploy.batchnorm[layer.name] is not None
        expected += layer.params + (1 + 2 * layer.out_channels) * (2 if has_bias else 1)
    expected += 5 * graph.deploy.quantizers if a_bits <= 8 else 0
    assert cost.size_bytes == expected
    assert costs.fp32.size_bytes == 4 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())


# ------------------------------------------------------------------------------------------ policy
def test_policy_json_roundtrip_and_stable_hash(setup):
    _, _, _, _, graph = setup
    policy = Policy.random(graph, np.random.default_rng(1))
    again = Policy.from_json(policy.to_json())
    assert again == policy and again.digest() == policy.digest() and hash(again) == hash(policy)
    other = Policy({**{n: policy[n] for n in policy}, graph.layers[0].name: np.full(graph.layers[0].out_channels, 2)})
    assert other.digest() != policy.digest()


def _bits(graph, **overrides):
    bits = {layer.name: np.full(layer.out_channels, 8) for layer in graph.layers}
    bits.update(overrides)
    return Policy(bits)


@pytest.fixture(scope="module")
def mnv2_graph():
    return CompressionGraph(build_model("mobilenet_v2", width_mult=0.25).eval(), torch.zeros(1, 3, 16, 16))


def test_bad_policy_wrong_shape_names_layer(mnv2_graph):
    name = mnv2_graph.layers[3].name
    with pytest.raises(ValueError, match=rf"layer '{name}': expected \d+ bit-widths"):
        _bits(mnv2_graph, **{name: np.full(3, 8)}).validate(mnv2_graph)


def test_bad_policy_bits_out_of_range_names_layer(mnv2_graph):
    layer = mnv2_graph.layers[0]
    bits = np.full(layer.out_channels, 8)
    bits[1] = 1
    with pytest.raises(ValueError, match=rf"layer '{layer.name}': bit-widths must be 0 \(pruned\) or in 2..8, got \[1\]"):
        _bits(mnv2_graph, **{layer.name: bits}).validate(mnv2_graph)
    bits[1] = 9
    with pytest.raises(ValueError, match="got \\[9\\]"):
        _bits(mnv2_graph, **{layer.name: bits}).validate(mnv2_graph)


def test_bad_policy_pruned_classifier(mnv2_graph):
    bits = np.full(10, 8)
    bits[0] = 0
    with pytest.raises(ValueError, match=r"layer 'classifier.1'.*may not be pruned \(network output"):
        _bits(mnv2_graph, **{"classifier.1": bits}).validate(mnv2_graph)


def test_bad_policy_mismatched_coupled_layers(mnv2_graph):
    leader, follower = "features.2.conv.0.0", "features.2.conv.1.0"
    channels = mnv2_graph.layer(leader).out_channels
    a, b = np.full(channels, 8), np.full(channels, 8)
    a[0] = 0
    b[1] = 0
    with pytest.raises(ValueError, match=rf"layer '{follower}'.*coupled to '{leader}'"):
        _bits(mnv2_graph, **{leader: a, follower: b}).validate(mnv2_graph)


def test_bad_policy_all_pruned_and_missing_layers(mnv2_graph):
    name = mnv2_graph.layers[3].name
    with pytest.raises(ValueError, match=rf"layer '{name}': all channels pruned"):
        _bits(mnv2_graph, **{name: np.zeros(mnv2_graph.layers[3].out_channels)}).validate(mnv2_graph)
    with pytest.raises(ValueError, match="missing \\['classifier.1'\\]"):
        Policy({n.name: np.full(n.out_channels, 8) for n in mnv2_graph.layers[:-1]}).validate(mnv2_graph)


def test_bad_packed_file(tmp_path):
    path = tmp_path / "x.ajpq"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an AJPQ packed model"):
        load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.ajpq")


@pytest.mark.parametrize("values", [["4", 8], [None, 8], [True, False], [{"a": 1}]])
def test_bit_widths_that_are_not_numbers_are_refused_not_cast(values):
    with pytest.raises(ValueError, match="must be integers"):
        Policy({"conv": values})

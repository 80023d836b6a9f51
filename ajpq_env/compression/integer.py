"""The deployed form of a compressed network: BatchNorm folded, weights as integer codes, integer arithmetic.

:func:`to_deployed` turns the engine's compressed model (physically pruned, weights on the recipe's per-channel
grid, BatchNorm calibrated) into a :class:`torch.fx.GraphModule` in which

* every BatchNorm that follows a Conv2d is **folded** into it: the integer codes do not change, the channel's
  scale becomes ``scale * gamma / sqrt(var + eps)`` (a negative factor flips the codes' sign) and the bias
  ``beta + (bias - mean) * gamma / sqrt(var + eps)``;
* per-channel scales and biases are rounded to what the artefact stores (:func:`encode_f16e`: float16 with one
  power-of-two exponent per layer), so every runtime computes with the stored values;
* activation quantizers (:mod:`~ajpq_env.compression.actquant`) sit on every layer's input and output, and each
  Conv2d/Linear becomes a :class:`QuantLayer` that computes exactly what onnxruntime's integer kernels
  (``QLinearConv``, ``QGemm``) compute: an integer accumulation of ``(x_q - z_x) * w_q`` plus an int32 bias
  ``round(bias / (s_x * s_w))``, requantized as ``clamp(round(acc * (s_x * s_w / s_y)) + z_y)`` in float32;
  a ReLU/ReLU6 between a layer and its output quantizer is the quantizer's clamp.

Written by hand because no maintained library quantizes with mixed per-channel bit-widths *and* reproduces
onnxruntime's integer kernels in PyTorch; the ONNX file (:mod:`ajpq_env.deploy.onnx_export`) is the same graph.
With ``a_bits=32`` activations stay float: layers compute ``conv(x, codes * scale) + bias``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ajpq_env.compression.actquant import (
    ActQuantizer,
    calibrate,
    check_a_bits,
    fused_activation,
    insert_quantizers,
    is_compressible,
    layer_output_node,
)
from ajpq_env.compression.graph import CompressionGraph
from ajpq_env.compression.policy import Policy
from ajpq_env.compression.quantize import quantize_codes

__all__ = [
    "FoldedLayer",
    "QuantLayer",
    "decode_f16e",
    "encode_f16e",
    "fold_layers",
    "to_deployed",
    "trace",
]


# ---------------------------------------------------------------------- storage of scales and biases
def encode_f16e(values: torch.Tensor | np.ndarray) -> tuple[int, np.ndarray]:
    """Store ``values`` as float16 after dividing them by ``2**exponent``, one exponent for the whole vector.

    ``exponent = ceil(log2(max|v|))`` (0 for an all-zero vector) puts every value in [-1, 1], where float16 keeps
    11 significant bits down to ``2**-14`` of the largest value: per-channel scales that span decades within a
    layer keep their relative precision, which a plain float16 (smallest normal 6e-5) would lose.
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("cannot store non-finite scales or biases")
    peak = float(np.abs(v).max()) if v.size else 0.0
    exponent = int(np.clip(math.ceil(math.log2(peak)), -126, 127)) if peak > 0 else 0
    return exponent, np.ldexp(v, -exponent).astype(np.float16)


def decode_f16e(exponent: int, halves: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`encode_f16e`, as float32 (exact: a float16 times a power of two fits a float32)."""
    return torch.from_numpy(np.ldexp(np.asarray(halves, dtype=np.float16).astype(np.float32), exponent).astype(np.float32))


def storage_round(values: torch.Tensor) -> torch.Tensor:
    """``values`` as the artefact stores and every runtime reads them."""
    return decode_f16e(*encode_f16e(values.detach().cpu().numpy()))


# ---------------------------------------------------------------------- folding
@dataclass
class FoldedLayer:
    """A compressible layer after BatchNorm folding: ``y = (codes * scale) (*) x + bias``, per output channel.

    :param codes: integer codes, shape of the layer's weight (int8 values of the kept channels)
    :param bits: bit-width of each kept channel (2..8)
    :param scale: float32 per-channel scale (positive), as stored
    :param bias: float32 per-channel bias as stored, or ``None``
    :param batchnorm: qualified name of the folded BatchNorm, or ``None``
    """

    codes: torch.Tensor
    bits: np.ndarray
    scale: torch.Tensor
    bias: torch.Tensor | None
    batchnorm: str | None


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a message that says what to change when the model is not traceable."""
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # torch.fx raises TraceError, TypeError, RuntimeError... for untraceable code
        raise ValueError(
            f"{type(model).__name__} cannot be traced by torch.fx ({err}); the deployed form needs a forward pass "
            "without data-dependent Python control flow"
        ) from None


@torch.no_grad()
def fold_layers(
    gm: fx.GraphModule, graph: CompressionGraph, policy: Policy, storage: bool = True
) -> dict[str, FoldedLayer]:
    """Codes, stored scales and biases of every compressible layer of ``gm`` with its BatchNorm folded in.

    ``gm`` is the traced compressed model (weights on the recipe's grid, surviving channels only). The folded
    BatchNorm modules are left in place; :func:`to_deployed` removes them from the graph.

    :param storage: round scales and biases to their stored form (:func:`encode_f16e`); ``False`` keeps them in
        float32, which checks the folding alone
    """
    finish = storage_round if storage else (lambda t: t.float())
    nodes = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module"}
    folded: dict[str, FoldedLayer] = {}
    for layer in graph.layers:
        module = gm.get_submodule(layer.name)
        bits = policy[layer.name][policy[layer.name] > 0].astype(np.int64)
        codes, scale = quantize_codes(module.weight.detach(), bits)
        codes = codes.to(torch.float32)
        scale = scale.to(torch.float64)
        bias = None if module.bias is None else module.bias.detach().to(torch.float64)
        _, bn_name, _ = layer_output_node(gm, nodes[layer.name])
        if bn_name is not None:
            bn = gm.get_submodule(bn_name)
            factor = (bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)) / (
                torch.sqrt(bn.running_var.double() + bn.eps)
            )
            shift = bn.bias.double() if bn.affine else torch.zeros_like(factor)
            bias = shift + ((bias if bias is not None else 0.0) - bn.running_mean.double()) * factor
            scale = scale * factor
        sign = torch.where(scale < 0, -1.0, 1.0)
        codes = codes * sign.view(-1, *([1] * (codes.dim() - 1))).float()
        folded[layer.name] = FoldedLayer(
            codes=codes, bits=bits, scale=finish(scale.abs()),
            bias=None if bias is None else finish(bias), batchnorm=bn_name,
        )
    return folded


# ---------------------------------------------------------------------- the integer layer
class QuantLayer(nn.Module):
    """A Conv2d or Linear of the deployed network, computed as onnxruntime's integer kernels do.

    :param layer: the original module (for its kind, stride, padding, dilation and groups)
    :param folded: its folded codes, scale and bias
    :param activation: ``"relu"``, ``"relu6"`` or ``None``, applied before the output quantizer
    """

    compressible = True  # activation quantizers treat it as the layer it replaces

    def __init__(self, layer: nn.Conv2d | nn.Linear, folded: FoldedLayer, activation: str | None) -> None:
        super().__init__()
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise ValueError("deployed convolutions need explicit zero padding")
            self.stride, self.padding = tuple(layer.stride), tuple(layer.padding)
            self.dilation, self.groups = tuple(layer.dilation), layer.groups
        self.activation = activation
        codes = folded.codes.clone()
        if self.conv:  # channels-last convolutions run about 1.5x faster on CPU (oneDNN's NHWC kernels)
            codes = codes.contiguous(memory_format=torch.channels_last)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", folded.scale.clone())
        self.register_buffer("bias", None if folded.bias is None else folded.bias.clone())
        self.bits = folded.bits.copy()
        self.input: tuple[float, int] | None = None  # (scale, zero point) of the input quantizer
        self.output: tuple[float, int, int] | None = None  # (scale, zero point, a_bits) of the fused output quantizer
        self.emit_codes = False  # return q - z_y instead of (q - z_y) * s_y (every reader is a QuantLayer)
        self.reads_codes = False  # the input is such a q - z_x
        self.register_buffer("bias_int", None)
        self.register_buffer("multiplier", None)
        self.register_buffer("out_scale", None)

    @property
    def out_channels(self) -> int:
        return self.codes.shape[0]

    def set_quantization(self, input_q: tuple[float, int] | None, output_q: tuple[float, int, int] | None) -> None:
        """Fix the input and output quantizers and derive the integer bias and the requantization multipliers
        exactly as onnxruntime does (float32: ``x_scale * w_scale[c] / y_scale``, bias ``round(b / (x_scale *
        w_scale[c]))`` in int32)."""
        self.input, self.output = input_q, output_q
        if input_q is None:
            self.bias_int = self.multiplier = self.out_scale = None
            return
        x_scale = torch.tensor(input_q[0], dtype=torch.float32)
        bias_scale = x_scale * self.scale  # float32 product, as the exporter writes it
        self.out_scale = bias_scale
        self.bias_int = None if self.bias is None else torch.round(self.bias / bias_scale).clamp_(-(2**31), 2**31 - 1)
        if output_q is not None:
            self.multiplier = bias_scale / torch.tensor(output_q[0], dtype=torch.float32)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.conv:
            x = x.contiguous(memory_format=torch.channels_last)
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, weight, bias)

    def _channel(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, *([1] * (x.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            from ajpq_env.deploy.onnx_export import quant_layer_symbolic_apply

            return quant_layer_symbolic_apply(self, x)
        return self._compute(x, self.reads_codes, self.emit_codes)

    def emulate(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on a dequantized input, returning a dequantized output (what its ONNX nodes compute)."""
        return self._compute(x, False, False)

    def _compute(self, x: torch.Tensor, reads_codes: bool, emit_codes: bool) -> torch.Tensor:
        if self.input is None:  # float activations
            weight = self.codes * self.scale.view(-1, *([1] * (self.codes.dim() - 1)))
            y = self._linear(x, weight, self.bias)
            return _apply_activation(y, self.activation)
        # Integer accumulation: x is a dequantized value k * x_scale, so round(x / x_scale) is the integer k;
        # float32 holds these integer products and sums exactly (|acc| < 2**24 for 8-bit operands and the layer
        # sizes of these networks; checked against a float64 accumulation in the tests).
        x_int = x if reads_codes else torch.round(x / self.input[0])
        acc = self._linear(x_int, self.codes, self.bias_int)
        if self.output is None:  # float output (the network's logits), as QGemm without an output scale
            return _apply_activation(acc * self._channel(self.out_scale, acc), self.activation)
        scale, zero_point, a_bits = self.output
        # clamp(round(acc * m) + z, 0, 2**a - 1) - z, in place: the requantization of the integer kernels
        q = acc.mul_(self._channel(self.multiplier, acc)).round_().clamp_(-zero_point, 2**a_bits - 1 - zero_point)
        return q if emit_codes else q.mul_(scale)

    def extra_repr(self) -> str:
        kind = "conv" if self.conv else "linear"
        return (f"{kind}, out={self.out_channels}, bits={sorted(set(self.bits.tolist()))}, "
                f"activation={self.activation}, input={self.input}, output={self.output}")


def _apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation == "relu":
        return F.relu(y)
    if activation == "relu6":
        return F.relu6(y)
    return y


# ---------------------------------------------------------------------- the deployed network
def _set_module(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, module)


@torch.no_grad()
def to_deployed(
    model: nn.Module,
    graph: CompressionGraph,
    policy: Policy,
    calibration: list[torch.Tensor],
    a_bits: int = 8,
    *,
    qparams: list[tuple[float, int]] | None = None,
    folded: dict[str, FoldedLayer] | None = None,
    storage: bool = True,
) -> fx.GraphModule:
    """The deployed form of the compressed ``model`` (not modified): see the module docstring.

    :param model: ``compress(...)`` of the FP32 model, BatchNorm recalibrated (weights on the recipe's grid)
    :param graph: compression graph of the uncompressed architecture
    :param policy: the recipe
    :param calibration: input batches that set the activation ranges (min/max)
    :param a_bits: activation bit-width (2..8), or 32 for float activations
    :param qparams: ``(scale, zero point)`` of every activation quantizer in graph order, instead of calibrating
        (loading an artefact)
    :param folded: the layers' codes, scales and biases, instead of folding ``model``'s weights and BatchNorms
        (loading an artefact: ``model`` then only gives the pruned architecture)
    :param storage: round scales and biases to their stored form (``False``: float32, to check the folding)
    """
    check_a_bits(a_bits)
    model.eval()
    gm = trace(model)
    folded = fold_layers(gm, graph, policy, storage) if folded is None else folded
    names = {layer.name for layer in graph.layers}
    # Replace layers by QuantLayers (float until the quantizers are fused), drop the folded BatchNorms and the
    # activations the layers take over (they apply them in float, and as the output quantizer's clamp after).
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target) in names:
            module = gm.get_submodule(str(node.target))
            out, bn_name, activation = layer_output_node(gm, node)
            keep_activation = activation is not None and a_bits == 32
            for user in list(node.users) if bn_name else []:
                user.replace_all_uses_with(node)
                gm.graph.erase_node(user)
            if activation is not None and not keep_activation:
                act_node = next(iter(node.users))
                act_node.replace_all_uses_with(node)
                gm.graph.erase_node(act_node)
            _set_module(gm, str(node.target), QuantLayer(module, folded[str(node.target)],
                                                         activation if not keep_activation else None))
        elif node.op == "call_module" and is_compressible(gm.get_submodule(str(node.target))):
            raise ValueError(f"layer {node.target!r} is not in the compression graph")
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    if a_bits == 32:
        return gm.eval()
    quantizers = insert_quantizers(gm, a_bits)
    if qparams is None:
        calibrate(gm, calibration, mode="exact")
    else:
        if len(qparams) != len(quantizers):
            raise ValueError(f"{len(qparams)} activation quantizers given, the network has {len(quantizers)}")
        for quantizer, (scale, zero_point) in zip(quantizers, qparams):
            quantizer.set_qparams(scale, zero_point)
            quantizer.mode = "exact"
    _fuse_quantizers(gm)
    return gm.eval()


class QuantAdd(nn.Module):
    """The sum of two quantized tensors, requantized as onnxruntime's ``QLinearAdd`` does on x86 (AVX2 kernel):
    ``v = fma(q_a, s_a/s_c, fma(q_b, s_b/s_c, z_c - (s_a/s_c z_a + s_b/s_c z_b)))`` in float32, then
    ``clamp(round(v), 0, 2**a - 1)``. A ReLU after the sum is the clamp when ``z_c = 0``.

    :param a: ``(scale, zero point)`` of the first operand's quantizer
    :param b: the same for the second operand
    :param out: ``(scale, zero point, a_bits)`` of the sum's quantizer
    """

    def __init__(self, a: tuple[float, int], b: tuple[float, int], out: tuple[float, int, int]) -> None:
        super().__init__()
        self.a, self.b, self.out = a, b, out
        f32 = np.float32
        self.ratio_a = f32(f32(a[0]) / f32(out[0]))
        self.ratio_b = f32(f32(b[0]) / f32(out[0]))
        # the compiler contracts ``r_a z_a + r_b z_b`` into one fused multiply-add
        contracted = f32(float(self.ratio_a) * a[1] + float(f32(self.ratio_b * f32(b[1]))))
        self.fixed = f32(f32(out[1]) - contracted)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            from ajpq_env.compression.actquant import QDQFunction

            return QDQFunction.apply(x + y, self.out[0], self.out[1])
        qa = torch.round(x / self.a[0]).add_(self.a[1]).double()
        qb = torch.round(y / self.b[0]).add_(self.b[1]).double()
        # a fused multiply-add rounds once: exact product and sum in float64, then one rounding to float32
        v = (qb * float(self.ratio_b) + float(self.fixed)).float().double()
        v = (qa * float(self.ratio_a) + v).float()
        scale, zero_point, a_bits = self.out
        return v.round_().clamp_(0, 2**a_bits - 1).sub_(zero_point).mul_(scale)

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}, out={self.out}"


def _quantized_params(gm: fx.GraphModule, node: fx.Node) -> tuple[float, int] | None:
    """``(scale, zero point)`` of the quantized value ``node`` produces, or ``None`` when it is not quantized."""
    if node.op != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    if isinstance(module, ActQuantizer):
        return module.scale, module.zero_point
    if isinstance(module, QuantLayer) and module.output is not None:
        return module.output[:2]
    if isinstance(module, QuantAdd):
        return module.out[:2]
    return None


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, torch.add)) or (
        node.op == "call_method" and node.target == "add"
    )


def _fuse_adds(gm: fx.GraphModule) -> None:
    """Replace ``quantizer(add(a, b))`` (or ``quantizer(relu(add(a, b)))`` with zero point 0) of two quantized
    operands by a :class:`QuantAdd`, as onnxruntime fuses them into ``QLinearAdd``."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), ActQuantizer):
            continue
        quantizer: ActQuantizer = gm.get_submodule(str(node.target))
        source, relu = node.args[0], None
        if fused_activation(gm, source) == "relu" and quantizer.zero_point == 0 and len(source.users) == 1:
            source, relu = source.args[0], source
        if not _is_add(source) or len(source.args) != 2 or len(source.users) != 1 or source.kwargs:
            continue
        a, b = source.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        qa, qb = _quantized_params(gm, a), _quantized_params(gm, b)
        if qa is None or qb is None:
            continue
        name = f"{node.target}_add"
        gm.add_submodule(name, QuantAdd(qa, qb, (quantizer.scale, quantizer.zero_point, quantizer.a_bits)))
        with gm.graph.inserting_after(node):
            fused = gm.graph.call_module(name, (a, b))
        node.replace_all_uses_with(fused)
        for dead in (node, relu, source):
            if dead is not None:
                gm.graph.erase_node(dead)
    gm.graph.lint()
    gm.recompile()


def _fuse_quantizers(gm: fx.GraphModule) -> None:
    """Give every QuantLayer its input and output quantizer; an output quantizer it fuses leaves the graph."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), QuantLayer):
            continue
        layer: QuantLayer = gm.get_submodule(str(node.target))
        source = node.args[0]
        input_q = _quantized_params(gm, source)
        if input_q is None:
            raise RuntimeError(f"{node.target}: input is not quantized; this is a bug")
        users = list(node.users)
        output_q = None
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
            gm.get_submodule(str(users[0].target)), ActQuantizer
        ):
            quantizer: ActQuantizer = gm.get_submodule(str(users[0].target))
            output_q = (quantizer.scale, quantizer.zero_point, quantizer.a_bits)
            users[0].replace_all_uses_with(node)
            gm.graph.erase_node(users[0])
        layer.set_quantization(input_q, output_q)
    _fuse_adds(gm)
    # Between two QuantLayers pass the integer codes: saves a dequantize and a re-quantize per connection.
    for node in gm.graph.nodes:
        module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, QuantLayer) and module.output is not None and node.users and all(
            user.op == "call_module" and isinstance(gm.get_submodule(str(user.target)), QuantLayer)
            for user in node.users
        ):
            module.emit_codes = True
            for user in node.users:
                gm.get_submodule(str(user.target)).reads_codes = True
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


def activation_qparams(gm: fx.GraphModule) -> list[tuple[float, int]]:
    """``(scale, zero point)`` of every activation quantizer of a deployed network, in graph order (the output
    quantizers fused into layers included): what the artefact stores and :func:`to_deployed` takes back."""
    out: list[tuple[float, int]] = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        if isinstance(module, ActQuantizer | QuantAdd) or (isinstance(module, QuantLayer) and module.output):
            out.append(_quantized_params(gm, node))
    return out

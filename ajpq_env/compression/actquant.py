"""Activation quantization: per-tensor affine quantizers at the inputs and outputs of the compressible layers.

Every multiply-accumulate of the deployed network reads ``a_bits``-bit activations, so a quantizer sits on the
input of every Conv2d/Linear (shared by all layers that read one tensor) and on the output of every Conv2d that
feeds another layer (after its BatchNorm and ReLU/ReLU6, which the integer kernels fuse). Other operations
(residual adds, pooling, reshapes, concatenations) run on dequantized values, as onnxruntime runs them between a
``DequantizeLinear`` and the next ``QuantizeLinear``.

Formulas (ONNX ``QuantizeLinear`` semantics, round half to even, division by the scale)::

    q = clamp(round(x / scale) + zero_point, 0, 2**a_bits - 1)        x_hat = (q - zero_point) * scale

The range ``[lo, hi]`` is the min/max seen on calibration batches, widened to contain 0 (so that a removed channel,
which is exactly 0, never changes a range); ``scale = (hi - lo) / (2**a_bits - 1)``, ``zero_point =
round(-lo / scale)``. After a ReLU ``lo = 0`` gives ``zero_point = 0``, so the quantizer's clamp is the ReLU (and,
after a ReLU6, ``hi <= 6`` makes it the ReLU6 too): this is what lets onnxruntime drop the activation node.

:class:`ActQuantizer` is the module; :func:`quantization_points` finds where the quantizers go in a traced network
(:mod:`torch.fx`), :func:`insert_quantizers` puts them there, :func:`calibrate` sets their ranges.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "ACT_BITS",
    "ActQuantizer",
    "DeployStructure",
    "deploy_structure",
    "QuantPoint",
    "calibrate",
    "dequantize_activation",
    "fused_activation",
    "insert_quantizers",
    "is_compressible",
    "quantization_points",
    "quantize_activation",
]

#: Supported activation bit-widths: 2..8 (integer activations) or 32 (float activations, no quantizers).
ACT_BITS = (*range(2, 9), 32)

_RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}


def check_a_bits(a_bits: object) -> int:
    """``a_bits`` as an int, or ``ValueError`` saying what is allowed."""
    if isinstance(a_bits, bool) or not isinstance(a_bits, int) or a_bits not in ACT_BITS:
        raise ValueError(f"a_bits must be an int in 2..8 (quantized activations) or 32 (float), got {a_bits!r}")
    return a_bits


def quantize_activation(x: torch.Tensor, scale: float, zero_point: int, a_bits: int) -> torch.Tensor:
    """Integer codes (as float32) of ``x``: ``clamp(round(x / scale) + zero_point, 0, 2**a_bits - 1)``."""
    q = torch.round(x / scale) + zero_point
    return q.clamp_(0, 2**a_bits - 1)


def dequantize_activation(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32."""
    return (q - zero_point) * scale


def range_to_qparams(lo: float, hi: float, a_bits: int) -> tuple[float, int]:
    """``(scale, zero_point)`` of the affine grid of ``2**a_bits`` levels covering ``[min(lo, 0), max(hi, 0)]``."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = 2**a_bits - 1
    # float32 arithmetic throughout: the scale is stored and used as float32 by every runtime
    scale = float(torch.tensor((hi - lo) / levels, dtype=torch.float32))
    if not scale > 0 or not torch.isfinite(torch.tensor(scale)):
        scale = 1.0  # a tensor that is 0 everywhere: any scale represents it exactly
    zero_point = int(min(max(round(-lo / scale), 0), levels))
    return scale, zero_point


class ActQuantizer(nn.Module):
    """Per-tensor affine activation quantizer with a calibrated range.

    Modes: ``"off"`` passes ``x`` through; ``"observe"`` passes ``x`` through and widens the range to cover it (calibration); ``"fake"`` returns
    the dequantized value with a straight-through gradient inside the range (quantization-aware training; in
    training mode the range follows the batches' min/max by an exponential moving average with weight
    ``momentum``, as PyTorch's ``MovingAverageMinMaxObserver`` does, so it can grow while the network recovers);
    ``"exact"`` returns the dequantized value computed exactly as onnxruntime's ``QuantizeLinear`` /
    ``DequantizeLinear`` do (evaluation and deployment).

    :param a_bits: bit-width, 2..8
    :param momentum: weight of the newest batch in the moving average of the range (``"fake"`` mode, training)
    """

    def __init__(self, a_bits: int = 8, momentum: float = 0.01) -> None:
        super().__init__()
        self.a_bits = check_a_bits(a_bits)
        if a_bits == 32:
            raise ValueError("a_bits=32 means float activations: no quantizer is inserted")
        self.mode = "observe"
        self.momentum = momentum
        self.lo = float("inf")
        self.hi = float("-inf")
        self.scale = 1.0
        self.zero_point = 0

    @property
    def calibrated(self) -> bool:
        return self.lo <= self.hi

    def set_range(self, lo: float, hi: float) -> None:
        """Fix the range and derive ``scale`` and ``zero_point``."""
        self.lo, self.hi = float(lo), float(hi)
        self.scale, self.zero_point = range_to_qparams(self.lo, self.hi, self.a_bits)

    def set_qparams(self, scale: float, zero_point: int) -> None:
        """Set ``scale`` and ``zero_point`` directly (loading an artefact)."""
        levels = 2**self.a_bits - 1
        if not (scale > 0 and float(scale) < float("inf")) or not 0 <= zero_point <= levels:
            raise ValueError(f"activation quantizer needs scale > 0 (finite) and zero point in 0..{levels}, "
                             f"got scale={scale!r}, zero_point={zero_point!r}")
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.lo, self.hi = -zero_point * self.scale, (levels - zero_point) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            if x.numel():
                self.lo = min(self.lo, float(x.detach().min()))
                self.hi = max(self.hi, float(x.detach().max()))
            return x
        if self.mode == "fake":
            if self.training and x.numel():
                m = self.momentum
                self.set_range((1 - m) * self.lo + m * float(x.detach().min()),
                               (1 - m) * self.hi + m * float(x.detach().max()))
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 2**self.a_bits - 1)
        if torch.onnx.is_in_onnx_export():
            return QDQFunction.apply(x, self.scale, self.zero_point)
        return dequantize_activation(quantize_activation(x, self.scale, self.zero_point, self.a_bits),
                                     self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return f"a_bits={self.a_bits}, mode={self.mode}, scale={self.scale:.4g}, zero_point={self.zero_point}"


class QDQFunction(torch.autograd.Function):
    """ONNX export of an exact quantizer: ``QuantizeLinear`` -> ``DequantizeLinear`` (uint8, constant qparams)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:  # noqa: ANN001
        with untraced():
            return dequantize_activation(quantize_activation(x, scale, zero_point, 8), scale, zero_point)

    @staticmethod
    def symbolic(g, x, scale: float, zero_point: int):  # noqa: ANN001, ANN205 (torch.onnx's signature)
        return qdq_symbolic(g, x, scale, zero_point)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Hide a custom ONNX function's reference computation from the TorchScript tracer: its symbolic is what
    the exporter writes, and the tracer must not record the computation's inner operations."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def qdq_symbolic(g, x, scale: float, zero_point: int):  # noqa: ANN001, ANN201
    """``QuantizeLinear`` -> ``DequantizeLinear`` nodes with constant uint8 parameters (TorchScript exporter)."""
    s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
    z = g.op("Constant", value_t=torch.tensor(zero_point, dtype=torch.uint8))
    return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


# ---------------------------------------------------------------------- where the quantizers go
def is_compressible(module: nn.Module) -> bool:
    """A Conv2d, a Linear, or the deployed form of one (a module with ``compressible = True``)."""
    return isinstance(module, nn.Conv2d | nn.Linear) or getattr(module, "compressible", False)


def fused_activation(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """``"relu"``/``"relu6"`` when ``node`` applies one of them (module, function or method), else ``None``."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, nn.ReLU6) or (
            isinstance(module, nn.Hardtanh) and module.min_val == 0.0 and module.max_val == 6.0
        ):
            return "relu6"
    elif node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return _RELU_FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target == "relu":
        return "relu"
    return None


@dataclass(frozen=True)
class QuantPoint:
    """One activation quantizer: it quantizes the output of node ``after`` for the compressible layers ``readers``."""

    after: str
    readers: tuple[str, ...]


def _is_batchnorm_of(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(
        gm.get_submodule(str(node.target)), nn.modules.batchnorm._BatchNorm
    )


def layer_output_node(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, str | None, str | None]:
    """The node whose value a compressible layer's output quantizer sees: the layer, then a BatchNorm that is its
    only user, then a ReLU/ReLU6 that is the only user of that. Returns ``(node, batchnorm target, activation)``."""
    out, batchnorm, activation = node, None, None
    users = list(out.users)
    if len(users) == 1 and _is_batchnorm_of(gm, users[0]):
        out, batchnorm = users[0], str(users[0].target)
        users = list(out.users)
    if len(users) == 1 and fused_activation(gm, users[0]) is not None:
        activation = fused_activation(gm, users[0])
        out = users[0]
    return out, batchnorm, activation


def _feeds_output_only(node: fx.Node) -> bool:
    """Whether ``node``'s value reaches the network output through shape-only operations."""
    for user in node.users:
        if user.op == "output":
            continue
        if user.op in ("call_function", "call_method") and (
            user.target in (torch.flatten, "flatten", "view", "reshape", operator.getitem) and _feeds_output_only(user)
        ):
            continue
        if user.op == "call_module" and isinstance(user.graph.owning_module.get_submodule(str(user.target)),
                                                   nn.Dropout | nn.Flatten | nn.Identity) and _feeds_output_only(user):
            continue
        return False
    return True


def quantization_points(gm: fx.GraphModule) -> list[QuantPoint]:
    """Where activation quantizers go in the traced network ``gm``, in graph order.

    * the output of every compressible layer that feeds anything but the network output (after its BatchNorm and
      ReLU/ReLU6 when those are its only users);
    * the input of every compressible layer whose input is not already such an output (the network input, a sum,
      a pooled or reshaped tensor); one quantizer per tensor, shared by all layers that read it.
    """
    quantized: dict[str, list[str]] = {}  # node name -> readers
    order: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and is_compressible(gm.get_submodule(str(node.target))):
            source = node.args[0]
            if source.name not in quantized:
                quantized[source.name] = []
                order.append(source.name)
            quantized[source.name].append(str(node.target))
            out, _, _ = layer_output_node(gm, node)
            if not _feeds_output_only(out) and out.name not in quantized:
                quantized[out.name] = []
                order.append(out.name)
    by_name = {node.name: i for i, node in enumerate(gm.graph.nodes)}
    order.sort(key=by_name.__getitem__)
    return [QuantPoint(name, tuple(quantized[name])) for name in order]


def insert_quantizers(gm: fx.GraphModule, a_bits: int, prefix: str = "act_quant") -> list[ActQuantizer]:
    """Insert an :class:`ActQuantizer` at every :func:`quantization_points` point of ``gm`` (in place), in
    ``"observe"`` mode; return them in graph order. Every user of a quantized value reads the quantized one."""
    nodes = {node.name: node for node in gm.graph.nodes}
    quantizers: list[ActQuantizer] = []
    for i, point in enumerate(quantization_points(gm)):
        node = nodes[point.after]
        name = f"{prefix}_{i}"
        quantizer = ActQuantizer(a_bits)
        gm.add_submodule(name, quantizer)
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
        quantizers.append(quantizer)
    gm.graph.lint()
    gm.recompile()
    return quantizers


def quantizers_of(model: nn.Module) -> list[ActQuantizer]:
    """The model's activation quantizers in registration (graph) order."""
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[torch.Tensor], mode: str = "exact") -> None:
    """Set every quantizer's range to the min/max of its input over ``batches`` (model in eval mode), then ``mode``."""
    quantizers = quantizers_of(model)
    was_training = model.training
    model.eval()
    for q in quantizers:
        q.mode, q.lo, q.hi = "observe", float("inf"), float("-inf")
    for x in batches:
        model(x)
    for q in quantizers:
        q.set_range(q.lo if q.calibrated else 0.0, q.hi if q.calibrated else 0.0)
        q.mode = mode
    model.train(was_training)


# ---------------------------------------------------------------------- what the deployed network stores
@dataclass(frozen=True)
class DeployStructure:
    """What the deployed form of a network stores besides its layers' codes and scales (see
    :mod:`ajpq_env.compression.integer`): which layers keep a bias (their own, or a folded BatchNorm's) and how
    many activation quantizers it has. Found once by tracing the FP32 model; pruning does not change it.

    :param stored_bias: layer name -> whether its deployed form has a per-channel bias
    :param batchnorm: layer name -> the BatchNorm folded into it (``None`` when there is none)
    :param quantizers: activation quantizers (one ``(scale, zero point)`` each) at ``a_bits`` <= 8
    """

    stored_bias: dict[str, bool]
    batchnorm: dict[str, str | None]
    quantizers: int


def deploy_structure(model: nn.Module, layer_names: list[str]) -> DeployStructure:
    """Trace ``model`` and find its :class:`DeployStructure`; ``ValueError`` when it cannot be deployed
    (untraceable, or a BatchNorm that does not directly follow a compressible layer, or another float
    parameter outside the compressible layers)."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # torch.fx raises TraceError, TypeError, RuntimeError... for untraceable code
        raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx ({err}); the deployed form needs a "
                         "forward pass without data-dependent Python control flow") from None
    nodes = {str(n.target): n for n in gm.graph.nodes if n.op == "call_module"}
    stored_bias: dict[str, bool] = {}
    batchnorm: dict[str, str | None] = {}
    for name in layer_names:
        _, bn, _ = layer_output_node(gm, nodes[name])
        batchnorm[name] = bn
        stored_bias[name] = bn is not None or gm.get_submodule(name).bias is not None
    folded = {bn for bn in batchnorm.values() if bn is not None}
    for name, module in gm.named_modules():
        if not name or name in layer_names or name in folded:
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"BatchNorm {name!r} does not directly follow a Conv2d/Linear, so it cannot be folded; "
                             "the deployed form folds every BatchNorm into the layer before it")
        if any(torch.is_floating_point(t) for t in module.parameters(recurse=False)):
            raise ValueError(f"module {name!r} ({type(module).__name__}) has float parameters outside the "
                             "compressible layers; the deployed form stores only Conv2d/Linear layers")
    return DeployStructure(stored_bias, batchnorm, len(quantization_points(gm)))

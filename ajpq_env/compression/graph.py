"""The compression graph: compressible layers in forward order and the channel coupling between them.

The coupling comes from torch-pruning's :class:`torch_pruning.DependencyGraph`, which traces the network and
knows that a depthwise conv follows its producer's channels, that convs adding into one residual stream share a
channel set, and which consumers lose an input slice when a channel goes. This module turns its groups into the
small, static structure the rest of AJPQ works with:

* :class:`LayerInfo` — one compressible layer (``Conv2d`` incl. depthwise, ``Linear``), its shape, feature-map
  size, parameter and MAC count, and the coupling group its output channels belong to;
* :class:`CouplingGroup` — one set of channel indices shared by several layers, with the list of
  ``(module name, torch-pruning handler)`` pairs that remove those channels physically (the *plan*);
* :class:`CompressionGraph` — the ordered layers and groups, built once per model.

A group is *locked* (never pruned) when it feeds the network output (the classifier), when torch-pruning's
coupling cannot be applied as an identity index map (e.g. ResNet option-A shortcuts, which zero-pad a 16-channel
stream into a 32-channel one): pruning such a group would not be the same as removing the channel, or when the
model declares it in a ``compression_locks`` attribute (``{layer name: reason}``) because its coupling passes
through an op torch-pruning does not model (SkyNet's space-to-depth reorg).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from ajpq_env.compression.actquant import deploy_structure
from ajpq_env.compression.importance import Importance, get_importance

__all__ = ["CompressionGraph", "CouplingGroup", "LayerInfo", "LAYER_KINDS"]

LAYER_KINDS = ("conv", "depthwise", "linear")

_PRUNE_OUT = "prune_out_channels"
_PRUNE_IN = "prune_in_channels"


@dataclass(frozen=True)
class LayerInfo:
    """One compressible layer, as seen before any compression.

    :param index: position in forward order (0-based)
    :param name: the module's qualified name in the model (``model.get_submodule(name)``)
    :param kind: ``"conv"``, ``"depthwise"`` or ``"linear"``
    :param in_channels: input channels (features for ``Linear``)
    :param out_channels: output channels (features for ``Linear``); one bit-width each in a policy
    :param kernel: kernel height and width (``(1, 1)`` for ``Linear``)
    :param stride: the conv's stride (1 for ``Linear``)
    :param groups: the conv's ``groups`` (equals ``in_channels`` for depthwise)
    :param in_hw: input feature-map height and width (``(1, 1)`` for ``Linear``)
    :param out_hw: output feature-map height and width (``(1, 1)`` for ``Linear``)
    :param params: number of weight parameters (bias excluded)
    :param macs: multiply-accumulates of one forward pass on one sample
    :param group: id of the :class:`CouplingGroup` of the output channels
    :param producer: id of the group whose channels are this layer's input channels, ``None`` for the network input
    :param has_bias: whether the layer has a bias
    :param stored_bias: whether its deployed form stores a per-channel bias (its own, or a folded BatchNorm's)
    """

    index: int
    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: int
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    params: int
    macs: int
    group: int
    producer: int | None
    has_bias: bool
    stored_bias: bool = False

    @property
    def kernel_size(self) -> int:
        """Weights per output channel: ``in_channels / groups x kh x kw``."""
        return self.params // self.out_channels


@dataclass
class CouplingGroup:
    """A set of output channels shared by ``members``; removing channel ``i`` removes it everywhere in ``plan``.

    :param id: position of the group in :attr:`CompressionGraph.groups`
    :param channels: number of channels in the set
    :param members: compressible layers whose output channels are this set, in forward order; ``members[0]``
        is the *leader* whose step decides the group's sparsity, the others follow it
    :param consumers: compressible layers whose input channels are this set (they lose input slices)
    :param locked: ``True`` when the group may never be pruned
    :param lock_reason: why it is locked (empty when it is not)
    :param plan: ``(module name, torch-pruning handler)`` pairs that physically remove a channel index list
    :param per_channel_extra: FP32 values per channel stored outside the compressible weights (biases and
        BatchNorm weight, bias, running mean and variance of the group's modules)
    """

    id: int
    channels: int
    members: list[str]
    consumers: list[str] = field(default_factory=list)
    locked: bool = False
    lock_reason: str = ""
    plan: list[tuple[str, Callable[..., Any]]] = field(default_factory=list)
    per_channel_extra: int = 0

    @property
    def leader(self) -> str:
        return self.members[0]


class CompressionGraph:
    """Compressible layers of a model in forward order and their channel coupling.

    :param model: the network (torchvision-style CNN); it is traced, never modified
    :param example_input: one input batch (usually ``torch.zeros(1, C, H, W)``) used for tracing
    :param importance: the importance criterion (a name from :data:`IMPORTANCES` or an :class:`Importance`)

    >>> from ajpq_env.models import build_model
    >>> graph = CompressionGraph(build_model("resnet20"), torch.zeros(1, 3, 32, 32))
    >>> graph.layers[0].name, graph.layers[-1].kind
    ('conv1', 'linear')
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        importance: str | Importance = "l1",
    ) -> None:
        self.example_input_shape = tuple(example_input.shape)
        self.importance = get_importance(importance) if isinstance(importance, str) else importance
        was_training = model.training
        model.eval()
        try:
            shapes = _trace_shapes(model, example_input)
            with torch.enable_grad():  # torch-pruning traces through autograd
                dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        finally:
            model.train(was_training)
        modules = dict(model.named_modules())
        names = {module: name for name, module in modules.items()}
        order = list(shapes)  # forward order of compressible layers

        self.groups: list[CouplingGroup] = []
        group_of: dict[str, int] = {}
        for root in order:
            if root in group_of:
                continue
            group = self._make_group(dg, modules, names, root, order, len(self.groups))
            for member in group.members:
                group_of[member] = group.id
            self.groups.append(group)

        producer_of: dict[str, int | None] = {name: None for name in order}
        for group in self.groups:
            for consumer in group.consumers:
                producer_of[consumer] = group.id
        for group in self.groups:
            if not group.consumers and not group.locked:
                group.locked, group.lock_reason = True, "network output (classifier)"
            elif _is_depthwise(modules[group.leader]) and not group.locked:
                # a depthwise conv leads its group only when no conv produces its input channels: they are
                # the network input's (SkyNet's first bundle), which cannot lose channels
                group.locked, group.lock_reason = True, "depthwise conv on the network input (its channels are the input's)"
        # Couplings the model declares because torch-pruning cannot see them (e.g. SkyNet's space-to-depth reorg,
        # which it takes for an element-wise op): the model's stated reason wins over the generic one.
        declared: dict[str, str] = dict(getattr(model, "compression_locks", {}) or {})
        unknown = sorted(set(declared) - set(order))
        if unknown:
            raise ValueError(f"{type(model).__name__}.compression_locks names {unknown}, which are not compressible "
                             f"layers; expected names among {order}")
        for group in self.groups:
            reasons = list(dict.fromkeys(declared[m] for m in group.members if m in declared))
            if reasons:
                group.locked, group.lock_reason = True, "; ".join(reasons)

        self.layers: list[LayerInfo] = []
        for index, name in enumerate(order):
            module = modules[name]
            (in_hw, out_hw) = shapes[name]
            self.layers.append(_layer_info(index, name, module, in_hw, out_hw, group_of[name]))
        #: what the deployed form stores besides codes and scales (folded biases, activation quantizers)
        self.deploy = deploy_structure(model, order)
        self.layers = [
            _replace_producer(layer, group_of[layer.name] if layer.kind == "depthwise" else producer_of[layer.name],
                              self.deploy.stored_bias[layer.name])
            for layer in self.layers
        ]
        self._by_name = {layer.name: layer for layer in self.layers}

        # One score per output channel of every layer, and per channel of every group (members summed after
        # mean-normalisation, so that layers of different magnitude weigh the same in a residual group).
        self.layer_scores: dict[str, np.ndarray] = {}
        for layer in self.layers:
            weight = modules[layer.name].weight.detach()
            self.layer_scores[layer.name] = self.importance(weight).double().numpy()
        self.group_scores: list[np.ndarray] = []
        for group in self.groups:
            total = np.zeros(group.channels)
            members = [m for m in group.members if modules[m].weight.shape[0] == group.channels]
            for member in members:
                score = self.layer_scores[member]
                total += score / max(float(score.mean()), 1e-12)
            self.group_scores.append(total / len(members))
        # Channels ranked most important first, ties broken by index so the ranking is deterministic.
        self.group_rank: list[np.ndarray] = [np.argsort(-s, kind="stable") for s in self.group_scores]

        self.total_float_numel = sum(
            t.numel() for t in model.state_dict().values() if torch.is_floating_point(t)
        )

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _make_group(
        dg: tp.DependencyGraph,
        modules: dict[str, nn.Module],
        names: dict[nn.Module, str],
        root: str,
        order: list[str],
        group_id: int,
    ) -> CouplingGroup:
        root_module = modules[root]
        channels = _out_channels(root_module)
        # Probe with a scattered index list: an identity map must return exactly these indices everywhere.
        probe = sorted({0, channels // 3, channels // 2, channels - 1})
        pruning_group = dg.get_pruning_group(root_module, dg.get_pruner_of_module(root_module).prune_out_channels, probe)
        members: list[str] = []
        consumers: list[str] = []
        plan: list[tuple[str, Callable[..., Any]]] = []
        identity = True
        extra = 0
        for dep, idxs in pruning_group:
            module = dep.target.module
            name = names.get(module) if isinstance(module, nn.Module) else None
            if name is None:
                continue  # a parameter-free op (ReLU, add, reshape...): nothing to slice
            handler_name = getattr(dep.handler, "__name__", "")
            idxs = sorted(int(i) for i in idxs)
            if idxs != probe:
                identity = False
            plan.append((name, dep.handler))
            compressible = isinstance(module, nn.Conv2d | nn.Linear)
            if handler_name == _PRUNE_OUT:
                if compressible:
                    members.append(name)
                    extra += int(module.bias is not None)
                elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                    extra += 2 * int(module.affine) + 2 * int(module.track_running_stats)
                else:
                    identity = False  # a parameterised module we do not know how to cost
            elif handler_name == _PRUNE_IN and compressible and not _is_depthwise(module):
                consumers.append(name)
        members.sort(key=order.index)
        consumers.sort(key=order.index)
        if root not in members:
            members.insert(0, root)
        group = CouplingGroup(group_id, channels, members, consumers, plan=plan, per_channel_extra=extra)
        if not identity or any(_out_channels(modules[m]) != channels for m in members):
            group.locked = True
            group.lock_reason = "coupling not an identity channel map"
        return group

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def layer(self, name: str) -> LayerInfo:
        """The layer called ``name``; ``KeyError`` lists the valid names."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no compressible layer {name!r}; valid names: {list(self._by_name)}") from None

    def group_of(self, name: str) -> CouplingGroup:
        return self.groups[self.layer(name).group]

    def is_leader(self, name: str) -> bool:
        return self.group_of(name).leader == name

    def sparsity_locked(self, name: str) -> str:
        """Why the sparsity of layer ``name`` is not its own decision, or ``""`` when it is."""
        group = self.group_of(name)
        if group.locked:
            return group.lock_reason
        if group.leader != name:
            return f"follows {group.leader}"
        return ""

    def fp32_bytes(self) -> int:
        """Bytes of the uncompressed model: every floating-point parameter and buffer in FP32."""
        return 4 * self.total_float_numel

    def table(self) -> list[dict[str, Any]]:
        """One row per layer for display: name, kind, channels, kernel, params, MACs, coupling group and lock."""
        return [
            {
                "index": layer.index,
                "name": layer.name,
                "kind": layer.kind,
                "in": layer.in_channels,
                "out": layer.out_channels,
                "kernel": f"{layer.kernel[0]}x{layer.kernel[1]}",
                "stride": layer.stride,
                "params": layer.params,
                "macs": layer.macs,
                "group": layer.group,
                "lock": self.sparsity_locked(layer.name),
            }
            for layer in self.layers
        ]


# ---------------------------------------------------------------------- module-level helpers
def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _trace_shapes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Input and output spatial size of every Conv2d/Linear, keyed by name, in the order they first run."""
    shapes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):

            def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, name: str = name) -> None:
                if name in shapes:
                    raise ValueError(f"layer {name!r} runs twice in one forward pass; weight sharing is not supported")
                if isinstance(mod, nn.Conv2d):
                    shapes[name] = (tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:]))
                else:
                    if inputs[0].dim() != 2:
                        raise ValueError(f"Linear layer {name!r} gets a {inputs[0].dim()}-d input; expected (N, features)")
                    shapes[name] = ((1, 1), (1, 1))

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in hooks:
            handle.remove()
    if not shapes:
        raise ValueError("the model has no Conv2d or Linear layer to compress")
    return shapes


def _layer_info(index: int, name: str, module: nn.Module, in_hw, out_hw, group: int) -> LayerInfo:
    if isinstance(module, nn.Conv2d):
        kind = "depthwise" if _is_depthwise(module) else "conv"
        params = module.weight.numel()
        macs = out_hw[0] * out_hw[1] * params
        return LayerInfo(
            index, name, kind, module.in_channels, module.out_channels, tuple(module.kernel_size),
            int(module.stride[0]), module.groups, tuple(in_hw), tuple(out_hw), params, macs, group, None,
            module.bias is not None,
        )
    params = module.weight.numel()
    return LayerInfo(
        index, name, "linear", module.in_features, module.out_features, (1, 1), 1, 1, (1, 1), (1, 1), params,
        params, group, None, module.bias is not None,
    )


def _replace_producer(layer: LayerInfo, producer: int | None, stored_bias: bool) -> LayerInfo:
    return LayerInfo(**{**layer.__dict__, "producer": producer, "stored_bias": stored_bias})

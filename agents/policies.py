"""The AJPQ hierarchical actor as an SB3 ``TD3Policy`` (usable by ``TD3`` and ``DDPG``).

The actor is two controllers, as in the paper:

* the **layer controller** reads the layer embedding (``obs["layer"]``) and outputs the layer's sparsity
  (action element 0) and a learned embedding ``h`` of the layer;
* the **channel controller** is one small network shared over the ``K`` importance buckets: for bucket ``k``
  it reads ``[h, sparsity, obs["channels"][k]]`` and outputs that bucket's bit-width (action element ``1 + k``).

The critic is SB3's :class:`~stable_baselines3.common.policies.ContinuousCritic` over the flattened observation
(:class:`TwoLevelExtractor`) and the action. Everything is plugged in through SB3's hooks (``make_actor``,
``_get_constructor_parameters``), so ``model.save`` / ``TD3.load`` work unchanged.

>>> from stable_baselines3 import TD3
>>> from ajpq_env import AJPQEnv
>>> from ajpq_env.tasks import synthetic_task
>>> model = TD3(TwoLevelTD3Policy, AJPQEnv(synthetic_task()), buffer_size=1000)
>>> model.policy.actor.mu.num_buckets
4
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.td3.policies import Actor, TD3Policy
from torch import nn

__all__ = ["TwoLevelActor", "TwoLevelController", "TwoLevelExtractor", "TwoLevelTD3Policy"]


def _ajpq_dims(observation_space: spaces.Space) -> tuple[int, int, int]:
    """``(layer_dim, K, bucket_dim)`` of an AJPQ observation space; ``ValueError`` for anything else."""
    ok = (
        isinstance(observation_space, spaces.Dict)
        and set(observation_space.spaces) == {"layer", "channels"}
        and isinstance(observation_space["layer"], spaces.Box)
        and isinstance(observation_space["channels"], spaces.Box)
        and len(observation_space["layer"].shape) == 1
        and len(observation_space["channels"].shape) == 2
    )
    if not ok:
        raise ValueError(
            "the two-level policy needs the AJPQ observation, Dict(layer=Box((L,)), channels=Box((K, C))), got "
            f"{observation_space}; do not wrap the env in FlattenObservation for this policy"
        )
    k, c = observation_space["channels"].shape
    return observation_space["layer"].shape[0], k, c


class TwoLevelExtractor(BaseFeaturesExtractor):
    """Flattens the AJPQ observation to ``[layer, channels.flatten()]``: the layout the two-level actor splits
    and the critic reads (no parameters).

    :param observation_space: the AJPQ ``Dict`` observation space
    """

    def __init__(self, observation_space: spaces.Dict) -> None:
        layer_dim, num_buckets, bucket_dim = _ajpq_dims(observation_space)
        super().__init__(observation_space, layer_dim + num_buckets * bucket_dim)
        self.layer_dim, self.num_buckets, self.bucket_dim = layer_dim, num_buckets, bucket_dim

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        return th.cat([observations["layer"].flatten(1), observations["channels"].flatten(1)], dim=1)


class TwoLevelController(nn.Module):
    """Layer controller -> sparsity, then the channel controller shared over buckets -> bits; output in [-1, 1].

    :param layer_dim: size of the layer embedding (observation)
    :param num_buckets: K, importance buckets per layer
    :param bucket_dim: features per bucket row
    :param layer_arch: hidden sizes of the layer controller; its last hidden layer is the learned embedding ``h``
    :param channel_arch: hidden sizes of the channel controller
    :param activation_fn: activation after each hidden layer
    """

    def __init__(
        self,
        layer_dim: int,
        num_buckets: int,
        bucket_dim: int,
        layer_arch: list[int],
        channel_arch: list[int],
        activation_fn: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.layer_dim, self.num_buckets, self.bucket_dim = layer_dim, num_buckets, bucket_dim
        embed_dim = layer_arch[-1] if layer_arch else layer_dim
        self.layer_net = nn.Sequential(*create_mlp(layer_dim, -1, layer_arch, activation_fn))
        self.sparsity_head = nn.Sequential(nn.Linear(embed_dim, 1), nn.Tanh())
        self.channel_net = nn.Sequential(
            *create_mlp(embed_dim + 1 + bucket_dim, 1, channel_arch, activation_fn, squash_output=True)
        )

    def forward(self, features: th.Tensor) -> th.Tensor:
        batch = features.shape[0]
        layer = features[:, : self.layer_dim]
        rows = features[:, self.layer_dim :].reshape(batch, self.num_buckets, self.bucket_dim)
        embedding = self.layer_net(layer)
        sparsity = self.sparsity_head(embedding)  # (B, 1)
        per_bucket = th.cat(
            [
                embedding.unsqueeze(1).expand(-1, self.num_buckets, -1),
                sparsity.unsqueeze(1).expand(-1, self.num_buckets, -1),
                rows,
            ],
            dim=2,
        )
        bits = self.channel_net(per_bucket).squeeze(2)  # (B, K)
        return th.cat([sparsity, bits], dim=1)


class TwoLevelActor(Actor):
    """TD3's :class:`~stable_baselines3.td3.policies.Actor` whose ``mu`` is a :class:`TwoLevelController`.

    :param layer_arch: hidden sizes of the layer controller
    :param channel_arch: hidden sizes of the channel controller
    (other parameters: as :class:`~stable_baselines3.td3.policies.Actor`; ``net_arch`` is unused)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        layer_arch: list[int] | None = None,
        channel_arch: list[int] | None = None,
    ) -> None:
        super().__init__(
            observation_space, action_space, [], features_extractor, features_dim, activation_fn, normalize_images
        )
        self.net_arch = net_arch
        layer_dim, num_buckets, bucket_dim = _ajpq_dims(observation_space)
        if not isinstance(features_extractor, TwoLevelExtractor):
            raise ValueError(
                f"the two-level actor needs features_extractor_class=TwoLevelExtractor, got "
                f"{type(features_extractor).__name__}"
            )
        if action_space.shape != (1 + num_buckets,):
            raise ValueError(
                f"the two-level actor outputs 1 + K = {1 + num_buckets} values (sparsity, bits of {num_buckets} "
                f"buckets), but the action space has shape {action_space.shape}"
            )
        self.layer_arch = list(layer_arch if layer_arch is not None else [128, 128])
        self.channel_arch = list(channel_arch if channel_arch is not None else [64, 64])
        self.mu = TwoLevelController(layer_dim, num_buckets, bucket_dim, self.layer_arch, self.channel_arch, activation_fn)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(layer_arch=self.layer_arch, channel_arch=self.channel_arch)
        return data


class TwoLevelTD3Policy(TD3Policy):
    """:class:`~stable_baselines3.td3.policies.TD3Policy` with the AJPQ two-level actor; for ``TD3`` and ``DDPG``.

    :param layer_arch: hidden sizes of the layer controller (default ``[128, 128]``); the last is the size of
        the layer embedding passed to the channel controller
    :param channel_arch: hidden sizes of the channel controller shared over buckets (default ``[64, 64]``)
    :param net_arch: hidden sizes of the critic (``[400, 300]`` by default, as TD3); a ``dict(pi=..., qf=...)``
        is accepted and its ``pi`` part ignored
    :param features_extractor_class: must stay :class:`TwoLevelExtractor` (the default)
    (other parameters: as :class:`~stable_baselines3.td3.policies.TD3Policy`)
    """

    actor: TwoLevelActor
    actor_target: TwoLevelActor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Any,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = TwoLevelExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
        layer_arch: list[int] | None = None,
        channel_arch: list[int] | None = None,
    ) -> None:
        _ajpq_dims(observation_space)
        self.layer_arch = list(layer_arch if layer_arch is not None else [128, 128])
        self.channel_arch = list(channel_arch if channel_arch is not None else [64, 64])
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            n_critics=n_critics,
            share_features_extractor=share_features_extractor,
        )

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> TwoLevelActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return TwoLevelActor(**actor_kwargs, layer_arch=self.layer_arch, channel_arch=self.channel_arch).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(layer_arch=self.layer_arch, channel_arch=self.channel_arch)
        return data

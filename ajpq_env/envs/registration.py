"""Registration of every AJPQ env id with Gymnasium, by one idempotent function (run at ``import ajpq_env``).

Ids are generated as ``AJPQ-<Model>[-<Data>][-Prune|-Quant]-v0``: one per (task, mode) pair.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["ENV_IDS", "MODE_SUFFIXES", "TASK_IDS", "register_envs"]

ENTRY_POINT = "ajpq_env.envs.ajpq_env:AJPQEnv"

#: id stem -> task name
TASK_IDS: dict[str, str] = {
    "AJPQ-MobileNet": "mnist5k-mobilenet_v2",
    "AJPQ-MobileNet-CIFAR10": "cifar10-mobilenet_v2",
    "AJPQ-ResNet20-CIFAR10": "cifar10-resnet20",
    "AJPQ-MobileNet-ImageNet": "imagenet-mobilenet_v2",
}
#: id infix -> mode
MODE_SUFFIXES: dict[str, str] = {"": "joint", "-Prune": "prune", "-Quant": "quant"}

#: every registered id -> its default kwargs
ENV_IDS: dict[str, dict[str, Any]] = {
    f"{stem}{suffix}-v0": {"task": task, "mode": mode, "target": 0.125, "resource": "size"}
    for stem, task in TASK_IDS.items()
    for suffix, mode in MODE_SUFFIXES.items()
}


def register_envs() -> None:
    """Register every id of :data:`ENV_IDS`; calling it again changes nothing."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs=dict(kwargs))

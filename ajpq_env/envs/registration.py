"""Registration of every AJPQ env id with Gymnasium, by one idempotent function (run at ``import ajpq_env``).

Ids are generated as ``AJPQ-<Model>[-<Data>][-Prune|-Quant]-v0``: one per (task, mode) pair. SkyNet's tasks also
get ``-Fixed`` ids (one bit-width for the whole network, chosen by the agent, pruning per layer: the paper's
SkyNet setting, budgeted in MACs at 0.5 of FP32); their other modes are budgeted in size at 0.2 of FP32 (the
paper's "more than 5x smaller"; 0.125 is out of reach because the reorg + concat bypass cannot be pruned).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["ENV_IDS", "MODE_SUFFIXES", "SKYNET_MODES", "SKYNET_TASK_IDS", "TASK_IDS", "register_envs"]

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

#: SkyNet id stem -> task name (single-object detection, metric mean IoU)
SKYNET_TASK_IDS: dict[str, str] = {
    "AJPQ-SkyNet": "embedded-skynet",
    "AJPQ-SkyNet-Raccoon": "raccoon-skynet",
    "AJPQ-SkyNet-DACSDC": "dacsdc-skynet",
}
#: SkyNet id infix -> (mode, default kwargs)
SKYNET_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    **{suffix: (mode, {"target": 0.2, "resource": "size"}) for suffix, mode in MODE_SUFFIXES.items()},
    "-Fixed": ("fixed", {"target": 0.5, "resource": "macs", "fixed_bits": None}),
}

#: every registered id -> its default kwargs
ENV_IDS: dict[str, dict[str, Any]] = {
    **{
        f"{stem}{suffix}-v0": {"task": task, "mode": mode, "target": 0.125, "resource": "size"}
        for stem, task in TASK_IDS.items()
        for suffix, mode in MODE_SUFFIXES.items()
    },
    **{
        f"{stem}{suffix}-v0": {"task": task, "mode": mode, **defaults}
        for stem, task in SKYNET_TASK_IDS.items()
        for suffix, (mode, defaults) in SKYNET_MODES.items()
    },
}


def register_envs() -> None:
    """Register every id of :data:`ENV_IDS`; calling it again changes nothing."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs=dict(kwargs))

"""Checks of ``ajpq search``'s options that need no env, model or agent: they run in well under a second, before
anything is loaded or written, so that a bad option is a one-line usage error instead of a traceback after the
task has loaded.

* :func:`env_kwargs` — ``--env-kwargs`` is a JSON object whose keys are arguments of the env's constructor and
  whose values have the JSON type of the argument's annotation;
* :func:`check_env` — the env id exists, and the data and weights its task needs can be found;
* :func:`check_agent` — ``--hyperparams`` keys are arguments of the algorithm (or RL-Zoo keys), the
  hyperparameter file exists, and baselines are not given hyperparameters they would ignore.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym

from ajpq_env.fileio import loads_json

__all__ = ["HYPERPARAM_RANGES", "check_agent", "check_env", "check_hyperparam", "env_kwargs", "env_signature"]

SYNTHETIC_STEMS = {"synthetic": "joint", "synthetic-prune": "prune", "synthetic-quant": "quant"}
#: RL-Zoo keys that are not constructor arguments but that the registry understands (see agents.registry)
ZOO_KEYS = frozenset({"policy", "n_timesteps", "noise_type", "noise_std", "env_wrapper", "monitor_kwargs", "callback"})
#: Ranges of numeric hyperparameters, checked before anything loads: SB3 takes most without a check (a buffer of
#: size 0 or gamma 2 runs, wrongly) or fails deep in training with a numpy or assertion traceback. ``(type, low,
#: high, low is open)``; a key not listed is passed on unchecked.
HYPERPARAM_RANGES: dict[str, tuple[type, float, float, bool]] = {
    "learning_rate": (float, 0, 10, True), "gamma": (float, 0, 1, False), "tau": (float, 0, 1, True),
    "buffer_size": (int, 1, 10**9, False), "batch_size": (int, 1, 10**7, False), "learning_starts": (int, 0, 10**9, False),
    "gradient_steps": (int, -1, 10**6, False), "policy_delay": (int, 1, 10**6, False),
    "target_policy_noise": (float, 0, 10, False), "target_noise_clip": (float, 0, 10, False),
    "noise_std": (float, 0, 10, False), "n_timesteps": (int, 1, 10**12, False), "n_steps": (int, 1, 10**7, False),
    "n_epochs": (int, 1, 10**6, False), "gae_lambda": (float, 0, 1, False), "clip_range": (float, 0, 10, True),
    "vf_coef": (float, 0, 10**3, False), "max_grad_norm": (float, 0, 10**6, True),
}
#: data sets whose files come from $AJPQ_DATA or the env's ``data_root``
EXTERNAL_DATA = ("cifar10", "imagenet")


def _entry_point(env: str) -> Callable[..., Any]:
    if env.partition(":")[0] in SYNTHETIC_STEMS:
        from ajpq_env import AJPQEnv

        return AJPQEnv
    spec = gym.registry[env]
    entry = spec.entry_point
    return entry if callable(entry) else gym.envs.registration.load_env_creator(entry)


def env_signature(env: str) -> dict[str, inspect.Parameter] | None:
    """The keyword arguments of env ``env``'s constructor (``None`` when it takes ``**kwargs``)."""
    parameters = inspect.signature(_entry_point(env)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {name: p for name, p in parameters.items() if name != "self"}


def _json_fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a (string) annotation such as ``"float"``, ``"str | None"``, ``"Mapping[str, Any]"``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if annotation is inspect.Parameter.empty:
        return True
    members = {m.strip().split("[")[0] for m in text.split("|")}
    if value is None:
        return "None" in members
    if isinstance(value, bool):
        return "bool" in members
    if isinstance(value, int):
        return bool(members & {"int", "float"})
    if isinstance(value, float):
        return "float" in members
    if isinstance(value, str):
        return bool(members & {"str", "Path", "PathLike"})
    if isinstance(value, dict):
        return bool(members & {"dict", "Mapping", "Policy"})
    if isinstance(value, list):
        return bool(members & {"list", "tuple", "Sequence"})
    return False


def env_kwargs(env: str, text: str | None) -> dict[str, Any]:
    """``--env-kwargs`` parsed and checked against env ``env``'s constructor.

    :raises ValueError: not JSON, not an object, an unknown key, or a value of the wrong type
    """
    if text is None:
        return {}
    try:
        kwargs = loads_json(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--env-kwargs is not JSON ({err}); expected an object such as '{{\"finetune_steps\": 10}}'") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--env-kwargs must be a JSON object such as '{{\"finetune_steps\": 10}}', got {text!r}")
    signature = env_signature(env)
    if signature is None:
        return kwargs
    fixed = {"task", "mode"} if env.partition(":")[0] in SYNTHETIC_STEMS else set()
    allowed = sorted(set(signature) - fixed - {"render_mode"})
    for key, value in kwargs.items():
        if key not in allowed:
            raise ValueError(f"--env-kwargs: unknown key {key!r} for env {env!r}; expected some of: {', '.join(allowed)}")
        annotation = signature[key].annotation
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--env-kwargs: {key!r} must be a finite number, got {json.dumps(value)}")
        if not _json_fits(value, annotation):
            raise ValueError(f"--env-kwargs: {key!r} must be {annotation}, got {json.dumps(value)}")
    return kwargs


def check_env(env: str, kwargs: dict[str, Any]) -> None:
    """The env id exists and its task's data and weights can be found (nothing is loaded).

    :raises ValueError: an unknown id, no data root, a data root that does not exist, or no weights file
    """
    stem = env.partition(":")[0]
    if stem in SYNTHETIC_STEMS:
        from ajpq_env.models import MODELS

        model = env.partition(":")[2] or "mobilenet_v2"
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r} in --env {env!r}; expected one of: {', '.join(sorted(MODELS))}")
        return
    import ajpq_env  # noqa: F401  (registers the ids)

    if env not in gym.registry:
        ids = sorted(i for i in gym.registry if i.startswith("AJPQ"))
        raise ValueError(f"unknown env {env!r}; registered AJPQ ids: {', '.join(ids)}; or synthetic[:<model>]")
    from ajpq_env.tasks import TASKS, resolve_weights

    task = kwargs.get("task", gym.registry[env].kwargs.get("task"))
    spec = TASKS.get(task) if isinstance(task, str) else None
    if spec is None:
        return
    if spec.dataset in EXTERNAL_DATA:
        root = kwargs.get("data_root") or os.environ.get("AJPQ_DATA")
        if not root:
            raise ValueError(
                f"env {env!r} needs the {spec.dataset} data set: set the AJPQ_DATA environment variable to its root, "
                "or pass --env-kwargs '{\"data_root\": \"/path\"}'"
            )
        if not Path(root).expanduser().exists():
            raise ValueError(f"env {env!r}: the {spec.dataset} data root {root!r} does not exist")
    if spec.dataset in ("mnist5k", "cifar10"):
        try:
            resolve_weights(spec, kwargs.get("weights"))
        except FileNotFoundError as err:
            raise ValueError(str(err)) from None


def check_agent(algo: str, stage_algo: str, hyperparams: dict[str, Any], hyperparams_path: str | None) -> None:
    """``--hyperparams`` and ``--hyperparams-path`` fit the agent.

    :raises ValueError: hyperparameters given to a baseline, an unknown key, or a missing file
    """
    from agents.registry import ALGORITHMS, ALIASES

    rl = ALGORITHMS.get(algo) or (ALGORITHMS.get(ALIASES.get(stage_algo, stage_algo)) if algo == "two-step" else None)
    if rl is None:
        if hyperparams or hyperparams_path:
            raise ValueError(f"--hyperparams and --hyperparams-path apply to RL algorithms; agent {algo!r} takes none")
        return
    if hyperparams_path is not None and not Path(hyperparams_path).exists():
        raise ValueError(f"--hyperparams-path {hyperparams_path!r} does not exist (expected a YAML file or a folder of them)")
    accepted = set(inspect.signature(rl.algorithm_class()).parameters) | ZOO_KEYS
    unknown = sorted(set(hyperparams) - accepted)
    if unknown:
        raise ValueError(
            f"--hyperparams: unknown key(s) {unknown} for {rl.name}; expected arguments of "
            f"{rl.algorithm_class().__name__} or RL-Zoo keys ({', '.join(sorted(ZOO_KEYS))})"
        )
    for key, value in hyperparams.items():
        check_hyperparam(key, value, "--hyperparams")
    if "policy_kwargs" in hyperparams and not isinstance(hyperparams["policy_kwargs"], dict):
        raise ValueError(f"--hyperparams: policy_kwargs must be a dict such as dict(net_arch=[64, 64]), got "
                         f"{hyperparams['policy_kwargs']!r}")


def check_hyperparam(key: str, value: Any, source: str) -> None:
    """``ValueError`` naming ``source`` when ``value`` is outside :data:`HYPERPARAM_RANGES` for ``key``."""
    if key not in HYPERPARAM_RANGES:
        return
    kind, low, high, open_low = HYPERPARAM_RANGES[key]
    if isinstance(value, str) and value.startswith("lin_") and kind is float:  # RL Zoo's schedule from the value to 0
        try:
            value = float(value[4:])
        except ValueError:
            pass
    number = isinstance(value, int | float) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
    if not (number and math.isfinite(value) and (low < value if open_low else low <= value) and value <= high):
        what = "an integer" if kind is int else "a number"
        interval = f"{'(' if open_low else '['}{low}, {high}]" if kind is float else f"{low}..{high:,}"
        raise ValueError(f"{source}: {key} must be {what} in {interval}, got {value!r}")

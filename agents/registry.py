"""Every search agent by name: SB3 / sb3-contrib algorithms (with RL-Zoo-style YAML hyperparameters) and baselines.

``make_model(name, env, ...)`` builds an algorithm of :data:`ALGORITHMS`; ``make_agent(name, ...)`` builds any
agent of :func:`agent_names` (algorithms and :data:`agents.baselines.BASELINES`) behind the one
:class:`~agents.base.SearchAgent` interface. Unknown names raise ``ValueError`` listing the valid ones.

**Hyperparameters** live in ``agents/hyperparams/<algo>.yml``, keyed by env id, in RL Zoo's format, so that
``python -m rl_zoo3.train --algo td3 --env AJPQ-MobileNet-v0 --gym-packages ajpq_env -conf agents.hyperparams.td3``
reads the same files (:mod:`agents.hyperparams`; the YAML's ``callback`` applies the schedule in RL Zoo,
:mod:`agents.zoo`, and its ``monitor_kwargs`` log the metric and size ratio; ``ajpq search`` ignores both).
A model is built from, in increasing priority: the algorithm's defaults here (:attr:`AlgoSpec.defaults`), the
YAML entry of the env id (none for an env built by hand, e.g. the synthetic one), the caller's overrides, and
then the enabled parts of the AMC/HAQ :class:`~agents.schedule.SearchSchedule`, which set ``learning_starts``
(warm-up episodes x episode length), ``action_noise`` (TD3/DDPG), ``replay_buffer_class`` (credited reward)
and ``gamma``. RL-Zoo keys handled as the zoo does: ``n_timesteps`` (ignored: the episode budget decides),
``policy`` (an alias or a dotted class path), ``policy_kwargs`` / ``replay_buffer_kwargs`` (dicts or their
Python text), ``train_freq`` lists, ``lin_<x>`` schedules, ``noise_type``/``noise_std`` and ``env_wrapper``.
On-policy rollouts (``n_steps``) are rounded up to whole episodes so that every rollout starts an episode.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.utils import LinearSchedule
from torch import nn

from agents.preflight import check_hyperparam
from agents.schedule import DecayingTruncatedNormalNoise, SearchSchedule, credited_buffer_class

if TYPE_CHECKING:
    from agents.base import SearchAgent

__all__ = [
    "ALGORITHMS",
    "ALIASES",
    "DEFAULT_ALGO",
    "HYPERPARAMS_DIR",
    "ZOO_SCHEDULE_CALLBACK",
    "AlgoSpec",
    "agent_names",
    "get_algorithm",
    "load_hyperparams",
    "make_agent",
    "make_model",
    "parse_hyperparam",
]

HYPERPARAMS_DIR = Path(__file__).parent / "hyperparams"

_OFF_POLICY = {"buffer_size": 100_000, "batch_size": 64, "train_freq": (1, "episode"), "gradient_steps": -1}


@dataclass(frozen=True)
class AlgoSpec:
    """An algorithm of the registry.

    :param name: registry name (also the YAML file stem)
    :param cls: ``"module:Class"`` of the SB3 algorithm
    :param policy: default policy (an alias of the algorithm, or ``"module:Class"``)
    :param off_policy: learns from a replay buffer (warm-up and credited reward apply)
    :param deterministic: a deterministic actor explored with action noise (TD3, DDPG)
    :param dict_obs: reads the ``Dict`` observation; otherwise the env is wrapped in ``FlattenObservation``
    :param episodes_per_rollout: on-policy only: rollout length in episodes
    :param defaults: constructor defaults below the YAML (AMC/HAQ values where they apply)
    :param description: one line for listings
    :param guided: searches with the prior-guided schedule (:mod:`agents.guide`) unless told otherwise
    """

    name: str
    cls: str
    policy: str
    off_policy: bool
    deterministic: bool = False
    dict_obs: bool = True
    episodes_per_rollout: int = 1
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    guided: bool = False

    def algorithm_class(self) -> type[BaseAlgorithm]:
        return _import(self.cls)


_DDPG_LIKE = {**_OFF_POLICY, "learning_rate": 1e-4, "tau": 0.01}  # AMC's actor rate: 1e-3 saturates the tanh actor
_MLP_300 = {"policy_kwargs": {"net_arch": [300, 300]}}  # AMC's and HAQ's actor and critic
_TWO_LEVEL = {"policy_kwargs": {"net_arch": [300, 300], "layer_arch": [128, 128], "channel_arch": [64, 64]}}

#: name -> algorithm
ALGORITHMS: dict[str, AlgoSpec] = {
    spec.name: spec
    for spec in (
        AlgoSpec("td3-twolevel", "stable_baselines3:TD3", "agents.policies:TwoLevelTD3Policy", True, True,
                 defaults={**_DDPG_LIKE, **_TWO_LEVEL}, guided=True,
                 description="AJPQ: TD3 with the two-level (layer -> sparsity, channel -> bits) actor, prior-guided"),
        AlgoSpec("ddpg-twolevel", "stable_baselines3:DDPG", "agents.policies:TwoLevelTD3Policy", True, True,
                 defaults={**_DDPG_LIKE, **_TWO_LEVEL}, guided=True, description="DDPG with the two-level actor"),
        AlgoSpec("td3", "stable_baselines3:TD3", "MultiInputPolicy", True, True, defaults={**_DDPG_LIKE, **_MLP_300},
                 description="TD3 with an MLP actor on the flattened Dict observation"),
        AlgoSpec("ddpg", "stable_baselines3:DDPG", "MultiInputPolicy", True, True,
                 defaults={**_DDPG_LIKE, **_MLP_300}, description="DDPG with an MLP actor: the AMC/HAQ agent"),
        AlgoSpec("sac", "stable_baselines3:SAC", "MultiInputPolicy", True,
                 defaults={**_OFF_POLICY, "learning_rate": 3e-4, "tau": 0.01, **_MLP_300}, description="SAC"),
        AlgoSpec("tqc", "sb3_contrib:TQC", "MultiInputPolicy", True,
                 defaults={**_OFF_POLICY, "learning_rate": 3e-4, "tau": 0.01, **_MLP_300}, description="TQC"),
        AlgoSpec("crossq", "sb3_contrib:CrossQ", "MlpPolicy", True, dict_obs=False,
                 defaults={**_OFF_POLICY, "learning_rate": 1e-3}, description="CrossQ (on FlattenObservation)"),
        AlgoSpec("ppo", "stable_baselines3:PPO", "MultiInputPolicy", False, episodes_per_rollout=4,
                 defaults={"learning_rate": 3e-4, "n_epochs": 10}, description="PPO (rollouts of 4 episodes)"),
        AlgoSpec("a2c", "stable_baselines3:A2C", "MultiInputPolicy", False, episodes_per_rollout=1,
                 defaults={"learning_rate": 7e-4}, description="A2C (one update per episode)"),
        AlgoSpec("trpo", "sb3_contrib:TRPO", "MultiInputPolicy", False, episodes_per_rollout=4,
                 defaults={"learning_rate": 1e-3}, description="TRPO (rollouts of 4 episodes)"),
    )
}
DEFAULT_ALGO = "td3-twolevel"
#: other accepted names
ALIASES: dict[str, str] = {"default": DEFAULT_ALGO, "ajpq": DEFAULT_ALGO}

# RL-Zoo keys that change the experiment beyond the model's constructor: refused rather than ignored.
_UNSUPPORTED_KEYS = ("normalize", "frame_stack", "n_envs", "vec_env_wrapper")
#: the RL-Zoo callback of the shipped YAML: the schedule ``ajpq search`` applies itself (``--schedule``)
ZOO_SCHEDULE_CALLBACK = "agents.zoo.AJPQScheduleCallback"


def agent_names() -> list[str]:
    """Every name :func:`make_agent` accepts (algorithms, baselines, aliases), sorted."""
    from agents.baselines import BASELINES

    return sorted({*ALGORITHMS, *BASELINES, *ALIASES})


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown agent {name!r}; valid names: {', '.join(agent_names())}")


def get_algorithm(name: str) -> AlgoSpec:
    """The :class:`AlgoSpec` called ``name`` (or an alias); ``ValueError`` listing the valid names otherwise."""
    name = ALIASES.get(name, name)
    if name not in ALGORITHMS:
        raise _unknown(name)
    return ALGORITHMS[name]


def make_agent(name: str, **kwargs: Any) -> SearchAgent:
    """Any agent by name: an :class:`~agents.rl.SB3Agent` for an algorithm, else a baseline.

    ``kwargs`` go to the agent's constructor (see :class:`~agents.rl.SB3Agent` and :mod:`agents.baselines`).
    """
    from agents.baselines import BASELINES

    name = ALIASES.get(name, name)
    if name in ALGORITHMS:
        from agents.rl import SB3Agent

        return SB3Agent(name, **kwargs)
    if name in BASELINES:
        return BASELINES[name](**kwargs)
    raise _unknown(name)


# ---------------------------------------------------------------------- hyperparameters
def load_hyperparams(algo: str, env_id: str | None, path: str | Path | None = None) -> dict[str, Any]:
    """The RL-Zoo-style entry of ``env_id`` in ``<path>/<algo>.yml`` (``{}`` when the file has no such entry; the
    file's ``default`` entry is RL Zoo's fallback only: for other ids the search keeps the registry's defaults).

    :param algo: registry name
    :param env_id: a registered env id; ``None`` (an env built by hand) gives ``{}``
    :param path: a directory of ``<algo>.yml`` files or one YAML file (default :data:`HYPERPARAMS_DIR`)
    """
    spec = get_algorithm(algo)
    path = Path(path) if path is not None else HYPERPARAMS_DIR
    file = path / f"{spec.name}.yml" if path.is_dir() else path
    if env_id is None or not file.is_file():
        if path != HYPERPARAMS_DIR and not file.is_file():
            raise ValueError(f"no hyperparameter file {str(file)!r}")
        return {}
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"hyperparameter file {str(file)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"hyperparameter file {str(file)!r} must map env ids to hyperparameters")
    entry = data.get(env_id, {})
    if not isinstance(entry, dict):
        raise ValueError(f"{str(file)!r}: the entry of {env_id!r} must be a mapping, got {type(entry).__name__}")
    for key, value in entry.items():
        check_hyperparam(key, value, f"{str(file)!r}, entry {env_id!r}")
    return dict(entry)


def parse_hyperparam(text: str) -> Any:
    """A hyperparameter value written as Python literal text, as RL Zoo's YAML and ``-params`` allow.

    Accepts literals, lists, tuples, dicts, ``dict(key=value, ...)`` and ``nn.<Activation>`` names
    (``th.nn.`` or ``torch.nn.`` too); nothing is executed. Text that is no such expression stays a string.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return text
    try:
        return _literal(tree.body)
    except ValueError:
        return text


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, ast.Attribute):
        path = ast.unparse(node)
        for prefix in ("th.nn.", "torch.nn.", "nn."):
            if path.startswith(prefix) and hasattr(nn, path[len(prefix) :]):
                return getattr(nn, path[len(prefix) :])
    raise ValueError(f"not a literal: {ast.unparse(node)}")


def _import(path: str) -> Any:
    """``"pkg.module:Name"`` or RL-Zoo's ``"pkg.module.Name"``."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {path!r}: {err}") from None


def _wrappers(value: Any) -> list[tuple[type[gym.Wrapper], dict[str, Any]]]:
    """RL Zoo's ``env_wrapper``: a class path, a ``{path: kwargs}`` dict, or a list of either."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((_import(item), {}))
        elif isinstance(item, dict) and len(item) == 1:
            (path, kwargs), = item.items()
            out.append((_import(path), dict(kwargs or {})))
        else:
            raise ValueError(f"env_wrapper entries must be a class path or {{path: kwargs}}, got {item!r}")
    return out


def _schedule_value(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        return LinearSchedule(float(value[4:]), 0.0, 1.0)
    return value


# ---------------------------------------------------------------------- the model
def make_model(
    name: str,
    env: gym.Env,
    *,
    episodes: int,
    seed: int | None = 0,
    schedule: SearchSchedule | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    hyperparams_path: str | Path | None = None,
    env_id: str | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
    device: str = "cpu",
    guided: bool = False,
) -> BaseAlgorithm:
    """Build algorithm ``name`` on ``env`` (an AJPQ env, possibly wrapped) for a search of ``episodes`` episodes.

    :param name: registry name (:data:`ALGORITHMS`) or alias
    :param env: the env; it is wrapped in ``FlattenObservation`` (and the YAML's ``env_wrapper``) as needed
    :param episodes: the episode budget (sizes the default replay buffer)
    :param seed: SB3's seed
    :param schedule: the AMC/HAQ schedule (default: all on); :meth:`SearchSchedule.off` for plain RL-Zoo behaviour
    :param hyperparams: overrides of the YAML entry (RL-Zoo keys and values)
    :param hyperparams_path: a YAML directory or file instead of :data:`HYPERPARAMS_DIR`
    :param env_id: the id whose YAML entry applies (default: ``env.spec.id``; none for an env built by hand)
    :param tensorboard_log: SB3's TensorBoard directory
    :param verbose: SB3's verbosity
    :param device: torch device
    :param guided: build the algorithm's :func:`~agents.guide.guided_class` (the caller attaches the guide)
    """
    spec = get_algorithm(name)
    schedule = schedule if schedule is not None else SearchSchedule()
    if env_id is None and env.spec is not None:
        env_id = env.spec.id
    episode_length = len(env.unwrapped.graph.layers)
    params: dict[str, Any] = {"policy": spec.policy, **_copy(spec.defaults)}
    params.update(load_hyperparams(spec.name, env_id, hyperparams_path))
    params.update(_copy(dict(hyperparams or {})))
    bad = [key for key in _UNSUPPORTED_KEYS if key in params]
    if bad:
        raise ValueError(f"hyperparameters {bad} are not supported by the AJPQ search (one env, raw rewards)")
    params.pop("n_timesteps", None)
    params.pop("monitor_kwargs", None)  # RL Zoo's monitor.csv; the search records every episode itself
    callback = params.pop("callback", None)
    if callback is not None and callback != ZOO_SCHEDULE_CALLBACK and callback != {ZOO_SCHEDULE_CALLBACK: None}:
        raise ValueError(f"hyperparameter callback={callback!r} is not supported by the AJPQ search; only RL Zoo's "
                         f"{ZOO_SCHEDULE_CALLBACK!r}, whose schedule the search applies itself (--schedule)")
    for key in ("policy_kwargs", "replay_buffer_kwargs", "replay_buffer_class"):
        if isinstance(params.get(key), str):
            params[key] = parse_hyperparam(params[key])
    if isinstance(params.get("replay_buffer_class"), str):
        params["replay_buffer_class"] = _import(params["replay_buffer_class"])
    policy = params.pop("policy")
    if isinstance(policy, str) and ("." in policy or ":" in policy):
        policy = _import(policy)
    if isinstance(params.get("train_freq"), list):
        params["train_freq"] = tuple(params["train_freq"])
    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        if key in params:
            params[key] = _schedule_value(params[key])

    # Wrappers: the YAML's, then FlattenObservation for algorithms that cannot read the Dict observation.
    for wrapper, kwargs in _wrappers(params.pop("env_wrapper")) if "env_wrapper" in params else []:
        env = wrapper(env, **kwargs)
    if not spec.dict_obs and isinstance(env.observation_space, gym.spaces.Dict):
        env = gym.wrappers.FlattenObservation(env)
    action_dim = int(np.prod(env.action_space.shape))

    noise_type, noise_std = params.pop("noise_type", None), params.pop("noise_std", None)
    if noise_type is not None:  # RL Zoo's noise, unless the schedule's replaces it below
        noise_cls = {"normal": NormalActionNoise, "ornstein-uhlenbeck": OrnsteinUhlenbeckActionNoise}.get(noise_type)
        if noise_cls is None:
            raise ValueError(f"noise_type must be 'normal' or 'ornstein-uhlenbeck', got {noise_type!r}")
        params["action_noise"] = noise_cls(np.zeros(action_dim), float(noise_std) * np.ones(action_dim))

    if spec.off_policy:
        params.setdefault("buffer_size", max(episodes * episode_length, 1))
        if schedule.warmup_episodes is not None:
            params["learning_starts"] = schedule.warmup_episodes * episode_length
        if schedule.credit_final_reward:
            params["replay_buffer_class"] = credited_buffer_class(isinstance(env.observation_space, gym.spaces.Dict))
        if spec.deterministic and schedule.noise_sigma is not None:
            params["action_noise"] = DecayingTruncatedNormalNoise(
                action_dim, sigma=schedule.noise_sigma, decay=schedule.noise_decay, clip=schedule.noise_clip,
                delay=schedule.warmup_episodes or 0, seed=seed,
            )
    else:
        rollout = int(params.get("n_steps", spec.episodes_per_rollout * episode_length))
        params["n_steps"] = -(-rollout // episode_length) * episode_length  # whole episodes
        if "batch_size" in inspect.signature(spec.algorithm_class()).parameters:
            params.setdefault("batch_size", episode_length)
    if schedule.gamma is not None:
        params["gamma"] = schedule.gamma
    algorithm = spec.algorithm_class()
    if guided:
        from agents.guide import guided_class

        algorithm = guided_class(algorithm)
    try:
        return algorithm(
            policy, env, seed=seed, tensorboard_log=tensorboard_log, verbose=verbose, device=device, **params
        )
    except TypeError as err:
        raise ValueError(f"bad hyperparameters for {spec.name}: {err}") from None


def _copy(params: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(params)

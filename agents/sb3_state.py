"""The state of a Stable-Baselines3 model saved without pickle, so that a checkpoint runs no code when read.

SB3's own ``model.save`` / ``save_replay_buffer`` write cloudpickled entries (the ``data`` of ``model.zip``, the
whole replay buffer), and ``load`` unpickles them: a checkpoint handed to someone could run code. Here the
model is always rebuilt from its hyperparameters (as :meth:`agents.rl.SB3Agent.setup` does) and only its
*state* is saved and restored:

* ``parameters.pt`` — ``model.get_parameters()`` (the policy's and optimizers' state dicts) and the algorithm's
  extra tensors (SAC's ``log_ent_coef``...), written with ``torch.save`` and read with ``weights_only=True``;
* ``replay_buffer.npz`` — the filled part of the replay buffer's arrays, read with ``allow_pickle=False`` and
  checked against the freshly built buffer (keys, shapes, dtypes);
* ``sb3_state.json`` — counters (``num_timesteps``, ``_n_updates``, ``_episode_num``), the action space's
  generator, and the exploration noise's state.

What is not saved (``_last_obs``, the episode-info buffers) is rebuilt by ``learn()``, which resets the env on a
resumed run: checkpoints are taken between episodes, where a reset is what the uninterrupted run did too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.noise import OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import get_device

from agents.schedule import DecayingTruncatedNormalNoise
from ajpq_env.fileio import loads_json

__all__ = ["PARAMETERS_FILE", "REPLAY_BUFFER_FILE", "STATE_FILE", "load_model_state", "save_model_state"]

PARAMETERS_FILE, REPLAY_BUFFER_FILE, STATE_FILE = "parameters.pt", "replay_buffer.npz", "sb3_state.json"
_COUNTERS = ("num_timesteps", "_n_updates", "_episode_num")


def _torch_variables(model: BaseAlgorithm) -> dict[str, torch.Tensor]:
    out = {}
    for name in model._get_torch_save_params()[1]:
        value = model
        for part in name.split("."):
            value = getattr(value, part)
        out[name] = value
    return out


def _buffer_arrays(buffer: ReplayBuffer) -> dict[str, np.ndarray]:
    """Every array of the buffer by a flat name (``observations/layer`` for ``Dict`` observations)."""
    arrays: dict[str, np.ndarray] = {}
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        value = getattr(buffer, name, None)
        if isinstance(value, dict):
            arrays.update({f"{name}/{key}": array for key, array in value.items()})
        elif value is not None:
            arrays[name] = value
    return arrays


def save_model_state(model: BaseAlgorithm, directory: Path) -> None:
    """Write the model's state into ``directory`` (which exists)."""
    torch.save({"parameters": model.get_parameters(),
                "variables": {k: v.detach().cpu() for k, v in _torch_variables(model).items()}},
               directory / PARAMETERS_FILE)
    state: dict[str, Any] = {key: int(getattr(model, key)) for key in _COUNTERS}
    state["progress_remaining"] = float(model._current_progress_remaining)
    state["action_space_rng"] = model.action_space.np_random.bit_generator.state
    noise = getattr(model, "action_noise", None)
    if isinstance(noise, DecayingTruncatedNormalNoise):
        state["noise"] = noise.get_state()
    elif isinstance(noise, OrnsteinUhlenbeckActionNoise):
        state["ou_noise_prev"] = noise.noise_prev.tolist()
    if isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
        buffer = model.replay_buffer
        if getattr(buffer, "pending", 0):
            raise RuntimeError("a checkpoint was taken in the middle of an episode: this is a bug")
        filled = buffer.buffer_size if buffer.full else buffer.pos
        np.savez(directory / REPLAY_BUFFER_FILE, **{k: v[:filled] for k, v in _buffer_arrays(buffer).items()})
        state["replay_buffer"] = {"pos": int(buffer.pos), "full": bool(buffer.full)}
    (directory / STATE_FILE).write_text(json.dumps(state))


def load_model_state(model: BaseAlgorithm, directory: Path, device: str = "cpu") -> None:
    """Restore what :func:`save_model_state` wrote into ``model`` (built with the same hyperparameters).

    :raises ValueError: anything missing, malformed or not fitting the model (the model may then be half
        restored: discard it)
    """
    state = loads_json((directory / STATE_FILE).read_text())
    if not isinstance(state, dict):
        raise ValueError(f"{STATE_FILE}: expected a JSON object")
    for key in _COUNTERS:
        if not isinstance(state.get(key), int) or isinstance(state[key], bool) or state[key] < 0:
            raise ValueError(f"{STATE_FILE}: {key!r} must be an int >= 0, got {state.get(key)!r}")
    progress = state.get("progress_remaining")
    if not isinstance(progress, float) or not math.isfinite(progress):
        raise ValueError(f"{STATE_FILE}: 'progress_remaining' must be a finite number, got {progress!r}")

    blob = torch.load(directory / PARAMETERS_FILE, map_location=get_device(device), weights_only=True)
    names, variables = model._get_torch_save_params()
    if not isinstance(blob, dict) or not isinstance(blob.get("parameters"), dict) \
            or not isinstance(blob.get("variables"), dict):
        raise ValueError(f"{PARAMETERS_FILE}: expected {{'parameters': ..., 'variables': ...}}")
    if set(blob["parameters"]) != set(names) or set(blob["variables"]) != set(variables):
        raise ValueError(f"{PARAMETERS_FILE} holds {sorted(blob['parameters'])} and {sorted(blob['variables'])}; "
                         f"the model has {sorted(names)} and {sorted(variables)}")
    model.set_parameters(blob["parameters"], exact_match=True, device=device)
    for name, tensor in _torch_variables(model).items():
        saved = blob["variables"][name]
        if not isinstance(saved, torch.Tensor) or saved.shape != tensor.shape:
            raise ValueError(f"{PARAMETERS_FILE}: variable {name!r} must be a tensor of shape {tuple(tensor.shape)}")
        tensor.data.copy_(saved)

    for key in _COUNTERS:
        setattr(model, key, state[key])
    model._current_progress_remaining = progress
    model.action_space.np_random.bit_generator.state = state["action_space_rng"]
    noise = getattr(model, "action_noise", None)
    if isinstance(noise, DecayingTruncatedNormalNoise):
        if not isinstance(state.get("noise"), dict):
            raise ValueError(f"{STATE_FILE}: the model has a decaying noise but the checkpoint no noise state")
        noise.set_state(state["noise"])
    elif isinstance(noise, OrnsteinUhlenbeckActionNoise):
        prev = np.asarray(state.get("ou_noise_prev"), dtype=np.float64)
        if prev.shape != noise.noise_prev.shape:
            raise ValueError(f"{STATE_FILE}: 'ou_noise_prev' must have shape {noise.noise_prev.shape}")
        noise.noise_prev = prev
    elif "noise" in state or "ou_noise_prev" in state:
        raise ValueError(f"{STATE_FILE}: the checkpoint has a noise state but the model has no such noise")
    if isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
        _load_buffer(model.replay_buffer, directory / REPLAY_BUFFER_FILE, state.get("replay_buffer"))


def _load_buffer(buffer: ReplayBuffer | DictReplayBuffer, path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or not isinstance(meta.get("pos"), int) or not isinstance(meta.get("full"), bool):
        raise ValueError(f"{STATE_FILE}: 'replay_buffer' must hold pos (int) and full (bool)")
    pos, full = meta["pos"], meta["full"]
    if not 0 <= pos < buffer.buffer_size + (0 if full else 1):
        raise ValueError(f"{STATE_FILE}: replay buffer position {pos} outside 0..{buffer.buffer_size}")
    filled = buffer.buffer_size if full else pos
    targets = _buffer_arrays(buffer)
    with np.load(path, allow_pickle=False) as archive:
        if set(archive.files) != set(targets):
            raise ValueError(f"{REPLAY_BUFFER_FILE} holds {sorted(archive.files)}, expected {sorted(targets)}")
        loaded = {}
        for name, target in targets.items():
            array = archive[name]
            if array.dtype != target.dtype or array.shape != (filled, *target.shape[1:]):
                raise ValueError(f"{REPLAY_BUFFER_FILE}: {name!r} is {array.dtype} {array.shape}, expected "
                                 f"{target.dtype} {(filled, *target.shape[1:])}")
            loaded[name] = array
    for name, array in loaded.items():
        targets[name][:filled] = array
    buffer.pos, buffer.full = pos, full

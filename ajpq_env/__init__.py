"""AJPQ: automated model compression by jointly applied pruning and quantization, as a Gymnasium environment.

>>> import gymnasium as gym, ajpq_env
>>> env = gym.make("AJPQ-MobileNet-v0")

Importing the package registers the env ids, and makes forked child processes safe for torch: a process forked
after torch has run a parallel region (Gymnasium's ``AsyncVectorEnv`` forks its workers after building one env
in the parent) inherits an OpenMP thread pool whose threads do not exist in the child, and its first parallel
region waits for them forever. Every forked child therefore starts with ``torch.set_num_threads(1)`` (what
PyTorch's own ``DataLoader`` workers do): ``gym.make_vec("AJPQ-MobileNet-v0", num_envs=2,
vectorization_mode="async")`` runs with default settings, one thread per worker process. A child may raise its
thread count again; with the ``"spawn"`` or ``"forkserver"`` contexts nothing is inherited and nothing changes.
"""

import os

__version__ = "0.1.0"

from ajpq_env.envs import ENV_IDS, AJPQEnv, register_envs  # noqa: E402
from ajpq_env.records import EpisodeRecord, ValidationResult  # noqa: E402


def _single_thread_in_forked_child() -> None:
    import torch

    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX; the hook runs in every child forked after this import
    os.register_at_fork(after_in_child=_single_thread_in_forked_child)

register_envs()

__all__ = ["ENV_IDS", "AJPQEnv", "EpisodeRecord", "ValidationResult", "__version__", "register_envs"]

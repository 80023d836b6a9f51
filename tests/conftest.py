"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``AJPQ_CACHE`` at a fresh temporary directory for the whole session, so tests neither read stale
    caches nor write into the user's ``~/.cache/ajpq``."""
    path = tmp_path_factory.mktemp("ajpq_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AJPQ_CACHE", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """Tiny models gain nothing from intra-op threads, and oversubscribed threads make timings erratic."""
    import torch

    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- ajpq_env.deploy
@pytest.fixture(scope="session")
def deploy_task():
    """The tiny synthetic MobileNetV2 task (random weights and data, 16x16 RGB), shared by the deploy tests."""
    from ajpq_env.tasks import synthetic_task

    return synthetic_task()


@pytest.fixture(scope="session")
def deploy_env(deploy_task):
    """An AJPQ env on :func:`deploy_task` with its defaults (joint mode, size target 0.125)."""
    from ajpq_env import AJPQEnv

    return AJPQEnv(deploy_task)


@pytest.fixture(scope="session")
def deploy_episode():
    """``run(env, seed) -> Policy``: one episode of seeded uniform random actions, returning its recipe."""
    from ajpq_env.envs import random_recipe

    return random_recipe


@pytest.fixture(scope="session")
def deploy_recipe(deploy_env):
    """A recipe as a search writes it (meta task/model...): mixed bit-widths 2..8 with pruned channels."""
    import numpy as np

    from ajpq_env.envs import random_recipe

    policy = random_recipe(deploy_env, seed=3)
    bits = np.concatenate([policy[name] for name in policy])
    assert (bits == 0).any() and len(set(bits[bits > 0].tolist())) > 2, "fixture needs pruning and mixed bits"
    return policy

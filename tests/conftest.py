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

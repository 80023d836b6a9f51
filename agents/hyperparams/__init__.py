"""RL-Zoo-style hyperparameters of every algorithm on the AJPQ envs: ``<algo>.yml``, keyed by env id.

``ajpq search`` reads them (:func:`agents.registry.load_hyperparams`); RL Baselines3 Zoo reads them through
``-conf``, either by path (``-conf agents/hyperparams/td3.yml`` from a checkout) or, wherever the package is
installed, by module: ``agents.hyperparams.<algo>`` (``-`` written ``_``) holds the file's entries as the
``hyperparams`` dict that RL Zoo's ``-conf <module>`` reads::

    python -m rl_zoo3.train --algo td3 --env AJPQ-MobileNet-v0 --gym-packages ajpq_env -conf agents.hyperparams.td3
    python -m rl_zoo3.train --algo td3 --env AJPQ-MobileNet-v0 --gym-packages ajpq_env -conf agents.hyperparams.td3_twolevel
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["HYPERPARAMS_DIR", "zoo_hyperparams"]

HYPERPARAMS_DIR = Path(__file__).parent


def zoo_hyperparams(algo: str) -> dict[str, Any]:
    """The entries of ``<algo>.yml`` (env id -> hyperparameters), as RL Zoo's ``-conf`` expects them."""
    path = HYPERPARAMS_DIR / f"{algo}.yml"
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} must map env ids to hyperparameters")
    return data

"""RL Zoo's ``-conf agents.hyperparams.td3``: the entries of ``td3.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("td3")

"""RL Zoo's ``-conf agents.hyperparams.ddpg``: the entries of ``ddpg.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("ddpg")

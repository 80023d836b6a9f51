"""RL Zoo's ``-conf agents.hyperparams.ppo``: the entries of ``ppo.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("ppo")

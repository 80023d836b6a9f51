"""RL Zoo's ``-conf agents.hyperparams.trpo``: the entries of ``trpo.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("trpo")

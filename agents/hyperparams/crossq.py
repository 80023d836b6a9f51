"""RL Zoo's ``-conf agents.hyperparams.crossq``: the entries of ``crossq.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("crossq")

"""RL Zoo's ``-conf agents.hyperparams.tqc``: the entries of ``tqc.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("tqc")

"""RL Zoo's ``-conf agents.hyperparams.a2c``: the entries of ``a2c.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("a2c")

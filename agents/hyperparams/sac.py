"""RL Zoo's ``-conf agents.hyperparams.sac``: the entries of ``sac.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("sac")

"""RL Zoo's ``-conf agents.hyperparams.ddpg_twolevel``: the entries of ``ddpg-twolevel.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("ddpg-twolevel")

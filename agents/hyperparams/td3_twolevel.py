"""RL Zoo's ``-conf agents.hyperparams.td3_twolevel``: the entries of ``td3-twolevel.yml``."""

from agents.hyperparams import zoo_hyperparams

__all__ = ["hyperparams"]

hyperparams = zoo_hyperparams("td3-twolevel")

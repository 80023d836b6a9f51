"""The AJPQ Gymnasium environments."""

from ajpq_env.envs.ajpq_env import REWARDS, AJPQEnv
from ajpq_env.envs.budget import MODES, BudgetTracker
from ajpq_env.envs.evaluator import Evaluator
from ajpq_env.envs.registration import ENV_IDS, register_envs
from ajpq_env.envs.rollout import random_episode, random_recipe

__all__ = ["ENV_IDS", "MODES", "REWARDS", "AJPQEnv", "BudgetTracker", "Evaluator", "random_episode", "random_recipe", "register_envs"]

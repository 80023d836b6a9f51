"""Search agents for the AJPQ environments: the two-level TD3/DDPG policy, the AMC/HAQ schedule, any SB3 /
sb3-contrib algorithm by name, the baselines, and the ``ajpq search`` driver (:mod:`agents.search`).

>>> from agents import make_agent
>>> agent = make_agent("td3-twolevel")     # or "ddpg", "sac", "ppo", "random", "uniform", "two-step", ...
"""

from agents.base import MemoryHooks, SearchAgent, SearchHooks, SearchResult
from agents.baselines import BASELINES, ImportanceHeuristic, RandomSearch, TwoStep, UniformPrecision
from agents.policies import TwoLevelExtractor, TwoLevelTD3Policy
from agents.registry import ALGORITHMS, DEFAULT_ALGO, agent_names, make_agent, make_model
from agents.rl import SB3Agent
from agents.schedule import CreditedDictReplayBuffer, CreditedReplayBuffer, DecayingTruncatedNormalNoise, SearchSchedule

__all__ = [
    "ALGORITHMS",
    "BASELINES",
    "DEFAULT_ALGO",
    "CreditedDictReplayBuffer",
    "CreditedReplayBuffer",
    "DecayingTruncatedNormalNoise",
    "ImportanceHeuristic",
    "MemoryHooks",
    "RandomSearch",
    "SB3Agent",
    "SearchAgent",
    "SearchHooks",
    "SearchResult",
    "SearchSchedule",
    "TwoLevelExtractor",
    "TwoLevelTD3Policy",
    "TwoStep",
    "UniformPrecision",
    "agent_names",
    "make_agent",
    "make_model",
]

"""AJPQ: automated model compression by jointly applied pruning and quantization, as a Gymnasium environment.

>>> import gymnasium as gym, ajpq_env
>>> env = gym.make("AJPQ-MobileNet-v0")
"""

__version__ = "0.1.0"

from ajpq_env.envs import ENV_IDS, AJPQEnv, register_envs  # noqa: E402
from ajpq_env.records import EpisodeRecord, ValidationResult  # noqa: E402

register_envs()

__all__ = ["ENV_IDS", "AJPQEnv", "EpisodeRecord", "ValidationResult", "__version__", "register_envs"]

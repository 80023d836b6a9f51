"""The AJPQ search schedule for RL Baselines3 Zoo, as a callback its YAML can name.

``ajpq search`` applies the AMC/HAQ schedule (:class:`~agents.schedule.SearchSchedule`) when it builds a model.
RL Zoo builds the model itself from the YAML; :class:`AJPQScheduleCallback`, named by the shipped YAML files
(``callback: agents.zoo.AJPQScheduleCallback``), applies the same schedule when training starts:

* ``learning_starts`` = warm-up episodes x episode length (uniformly random actions before learning);
* TD3/DDPG: the truncated-normal exploration noise decaying once per episode, instead of the YAML's
  ``noise_type`` / ``noise_std``;
* off-policy algorithms: the credited-reward replay buffer (every step of an episode stored with its final
  reward), which needs a single env (``--n-envs 1``, the YAML's default);
* ``gamma`` = 1.

The shipped YAML also logs the episode's ``metric`` and ``size_ratio`` in RL Zoo's ``monitor.csv``
(``monitor_kwargs: "dict(info_keywords=('metric', 'size_ratio'))"``). What RL Zoo users still do not get from
``ajpq search``: ``episodes.csv`` (one replayable record per episode), ``best_recipe.json`` (RL Zoo keeps the
last model, not the best recipe), AJPQ checkpoints and ``--resume`` (RL Zoo's own ``--trained-agent`` restarts
from a saved model but not from the replay buffer, noise and generators), and budgets counted in episodes (RL
Zoo counts steps: ``-n`` = episodes x layers, 53 for MobileNetV2, 20 for ResNet-20).

    python -m rl_zoo3.train --algo td3 --env AJPQ-MobileNet-v0 --gym-packages ajpq_env -conf agents.hyperparams.td3
"""

from __future__ import annotations

import gymnasium as gym
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.td3.td3 import TD3

from agents.schedule import DecayingTruncatedNormalNoise, SearchSchedule, credited_buffer_class

__all__ = ["AJPQScheduleCallback"]


class AJPQScheduleCallback(BaseCallback):
    """Applies the AMC/HAQ :class:`~agents.schedule.SearchSchedule` to an RL Zoo model when training starts.

    :param warmup_episodes: episodes of random actions before learning (``None``: keep ``learning_starts``)
    :param noise_sigma: initial sigma of the decaying truncated-normal noise, TD3/DDPG (``None``: keep the YAML's)
    :param noise_decay: per-episode factor of the noise's sigma
    :param noise_clip: truncation of the noise, in sigmas
    :param gamma: discount factor (``None``: keep the YAML's)
    :param credit_final_reward: store every step of an episode with its final reward (off-policy)
    :param verbose: 1 prints what was applied
    """

    def __init__(
        self,
        warmup_episodes: int | None = SearchSchedule.warmup_episodes,
        noise_sigma: float | None = SearchSchedule.noise_sigma,
        noise_decay: float = SearchSchedule.noise_decay,
        noise_clip: float = SearchSchedule.noise_clip,
        gamma: float | None = SearchSchedule.gamma,
        credit_final_reward: bool = SearchSchedule.credit_final_reward,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.schedule = SearchSchedule(warmup_episodes=warmup_episodes, noise_sigma=noise_sigma,
                                       noise_decay=noise_decay, noise_clip=noise_clip, gamma=gamma,
                                       credit_final_reward=credit_final_reward)
        self.applied: dict[str, object] = {}

    def _episode_length(self) -> int:
        graphs = self.training_env.get_attr("graph")
        return len(graphs[0].layers)

    def _init_callback(self) -> None:
        model, schedule = self.model, self.schedule
        length = self._episode_length()
        if schedule.gamma is not None:
            model.gamma = schedule.gamma
            self.applied["gamma"] = schedule.gamma
        if isinstance(model, OffPolicyAlgorithm):
            fresh = model.num_timesteps == 0 and model.replay_buffer.pos == 0 and not model.replay_buffer.full
            if schedule.warmup_episodes is not None and fresh:
                model.learning_starts = schedule.warmup_episodes * length
                self.applied["learning_starts"] = model.learning_starts
            if schedule.credit_final_reward and fresh:
                if self.training_env.num_envs != 1:
                    raise ValueError(f"the credited-reward buffer needs one env, got --n-envs {self.training_env.num_envs}; "
                                     "use --n-envs 1 or AJPQScheduleCallback(credit_final_reward=False)")
                old = model.replay_buffer
                cls = credited_buffer_class(isinstance(model.observation_space, gym.spaces.Dict))
                model.replay_buffer = cls(
                    old.buffer_size, model.observation_space, model.action_space, device=model.device, n_envs=1,
                    optimize_memory_usage=old.optimize_memory_usage,
                    handle_timeout_termination=old.handle_timeout_termination,
                )
                self.applied["replay_buffer_class"] = cls.__name__
            if isinstance(model, TD3) and schedule.noise_sigma is not None:  # DDPG is a TD3
                model.action_noise = DecayingTruncatedNormalNoise(
                    int(model.action_space.shape[0]), sigma=schedule.noise_sigma, decay=schedule.noise_decay,
                    clip=schedule.noise_clip, delay=schedule.warmup_episodes or 0, seed=model.seed,
                )
                self.applied["action_noise"] = repr(model.action_noise)
        if self.verbose:
            print(f"AJPQ schedule applied: {self.applied}")

    def _on_step(self) -> bool:
        return True

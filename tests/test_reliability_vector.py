"""Issue 10, item 11: ``gym.make_vec(..., vectorization_mode="async")`` with default settings does not hang.

Gymnasium forks its workers after building one env in the parent, whose torch OpenMP pool does not survive the
fork; ``import ajpq_env`` resets torch's threads in every forked child. The check runs the way users run it: a
fresh interpreter with torch's default thread count (at least 2, so that the pool exists even on a 1-core
runner), a full episode in each worker, and a timeout so that a regression fails instead of hanging CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gymnasium as gym, numpy as np, torch
    import ajpq_env
    if torch.get_num_threads() < 2:
        torch.set_num_threads(2)
    envs = gym.make_vec("AJPQ-MobileNet-v0", num_envs=2, vectorization_mode="async", search_size=200)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    steps, done = 0, np.zeros(2, dtype=bool)
    while not done.all():
        obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        steps += 1
        done |= terminated
    assert steps == 53, steps
    assert (info["size_ratio"] <= 0.125 + 1e-9).all() and (reward > 0).all(), info
    envs.close()
    print("OK", steps, torch.get_num_threads())
    """
)


def test_async_vector_env_runs_a_full_episode_per_worker_with_default_threads():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as err:
        raise AssertionError("AsyncVectorEnv hung (workers deadlocked after fork)") from err
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[:2] == ["OK", "53"]


def test_forked_child_starts_with_one_torch_thread():
    script = textwrap.dedent(
        """
        import os, torch, ajpq_env
        torch.set_num_threads(2)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if torch.get_num_threads() == 1 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert torch.get_num_threads() == 2  # the parent keeps its own setting
        print("OK")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr[-2000:]

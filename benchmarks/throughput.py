"""Episode wall time against one FP32 forward pass over the same search split.

For a task, times (median of ``--repeats``):

* ``fp32``: one forward pass of the uncompressed model over the search split (the env's eval batch size);
* ``unpruned``: a whole env episode (every step, compression, BatchNorm recalibration, evaluation; no
  fine-tune, cache off) whose actions keep every channel at 8 bits;
* ``sparse``: the same with 50% of every prunable channel group pruned (evaluated on the physically pruned
  network, so it is cheaper than FP32).

and prints ``episode / fp32`` for both, measured in one run. Targets: <= 1.15 unpruned, < 1.0 at 50%.

    python -m benchmarks.throughput --task mnist5k-mobilenet_v2
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from ajpq_env import AJPQEnv
from ajpq_env.tasks import TASKS


@dataclass
class Config:
    """Command-line options.

    :param task: task name (see ``ajpq envs``)
    :param data: data root for CIFAR-10 / ImageNet tasks (default ``$AJPQ_DATA``)
    :param repeats: timed repetitions of each measurement (the median is reported)
    :param threads: torch intra-op threads (0 = torch's default)
    :param search_size: search-split size (default: the task's)
    """

    task: str = "mnist5k-mobilenet_v2"
    data: str | None = None
    repeats: int = 5
    threads: int = 0
    search_size: int | None = None


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=Config.task, choices=sorted(TASKS))
    parser.add_argument("--data", default=None, help="data root (default $AJPQ_DATA)")
    parser.add_argument("--repeats", type=int, default=Config.repeats)
    parser.add_argument("--threads", type=int, default=Config.threads)
    parser.add_argument("--search-size", type=int, default=None)
    return Config(**vars(parser.parse_args(argv)))


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_episode(env: AJPQEnv, sparsity: float) -> float:
    """Seconds of one full episode with constant actions: ``sparsity`` on every prunable group, 8 bits."""
    action = np.ones(env.action_space.shape, dtype=np.float32)
    action[0] = 2.0 * sparsity / env.budget.max_sparsity - 1.0
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(action)
    return info["walltime"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    config = parse_args(argv)
    if config.threads:
        torch.set_num_threads(config.threads)
    env = AJPQEnv(config.task, target=1.0, cache_size=0, data_root=config.data, search_size=config.search_size)
    task = env.task
    search = task.splits["search"]
    batch = env.evaluator.eval_batch_size

    fp32 = _median_seconds(lambda: task.evaluate(task.model, "search", batch), config.repeats)
    unpruned = _median_seconds(lambda: time_episode(env, 0.0), config.repeats)
    sparse = _median_seconds(lambda: time_episode(env, 0.5), config.repeats)
    time_episode(env, 0.5)
    sparsity = 1 - sum(env.recipe().kept(g.leader) for g in env.graph.groups if not g.locked) / sum(
        g.channels for g in env.graph.groups if not g.locked
    )
    result = {"fp32_s": fp32, "unpruned_s": unpruned, "sparse_s": sparse,
              "unpruned_ratio": unpruned / fp32, "sparse_ratio": sparse / fp32}
    print(f"task {task.name}: search split {len(search)} samples, {len(env.graph.layers)} layers, "
          f"torch threads {torch.get_num_threads()}")
    print(f"FP32 forward over the search split      {fp32 * 1e3:8.1f} ms")
    print(f"episode, unpruned 8-bit                 {unpruned * 1e3:8.1f} ms   ratio {unpruned / fp32:.3f}  (target <= 1.15)")
    print(f"episode, {sparsity:.0%} of prunable channels pruned {sparse * 1e3:8.1f} ms   ratio {sparse / fp32:.3f}  (target < 1.0)")
    return result


if __name__ == "__main__":
    main()

"""Where the runs execute: in this process, in local worker processes (spawn), or on Ray; and how they stop.

* SIGTERM is turned into ``KeyboardInterrupt`` while the leaderboard runs (:func:`interrupt_on_sigterm`), so
  ``kill`` and Ctrl-C take the same path: finished rows stay in the CSV, interrupted runs keep their checkpoints
  for ``--resume``, and **no worker process survives** (:func:`run_local` terminates the pool's processes).
* ``--ray local`` starts a private Ray instance that listens on 127.0.0.1 only (node IP 127.0.0.1, no
  dashboard, no usage stats) and is shut down at the end; any other ``--ray`` value is the address of a running
  cluster, and when there is none :func:`connect_ray` says so before anything is written.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch

from benchmarks.leaderboard.run import RunResult, RunSpec, execute_run

__all__ = ["RAY_HINT", "LeaderboardError", "connect_ray", "interrupt_on_sigterm", "run_local", "run_ray"]

RAY_HINT = 'install the optional extra: pip install -e ".[ray]"'
#: ``ray.init`` arguments that ``--ray local`` fixes (loopback only)
LOCAL_RAY = {"address": "local", "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
STOP_SECONDS = 10.0


class LeaderboardError(ValueError):
    """The leaderboard cannot start: an output directory in the way, a CSV of other runs, no Ray (exit code 2)."""


@contextmanager
def interrupt_on_sigterm() -> Iterator[list[int]]:
    """While inside, SIGTERM raises ``KeyboardInterrupt`` in the main thread (as Ctrl-C does) and later SIGTERMs are
    ignored until the cleanup is over; yields a list that receives the numbers of the signals received. Outside the
    main thread it changes nothing."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one interrupt; the cleanup must not be cut short
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    # Ctrl-C reaches the whole process group: the worker's run ends as interrupted, its checkpoint kept; the
    # parent then stops the pool. SIGTERM keeps its default action (the parent's way to stop a worker).


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Terminate (SIGTERM), wait, then kill what is left."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(STOP_SECONDS)


def run_local(specs: list[RunSpec], workers: int, threads: int, handle: Callable[[RunResult], None]) -> None:
    """Every run of ``specs`` in this process (``workers == 1``) or in a pool of spawned processes; ``handle`` gets
    each result in this process as it comes. An interrupt (Ctrl-C, SIGTERM, or ``handle`` raising) stops every
    worker of the pool before it propagates."""
    if workers == 1:
        for spec in specs:
            handle(execute_run(spec))
        return
    context = multiprocessing.get_context("spawn")
    before = {p.pid for p in multiprocessing.active_children()}
    pool = ProcessPoolExecutor(min(workers, len(specs)), mp_context=context, initializer=_init_worker,
                               initargs=(threads,))
    try:
        futures = {pool.submit(execute_run, spec): spec for spec in specs}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 (a worker died: e.g. killed for memory)
                result = RunResult(futures[future], error=f"the worker failed: {type(err).__name__}: {err}")
            handle(result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        _stop([p for p in multiprocessing.active_children() if p.pid not in before])
        raise
    pool.shutdown(wait=True)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def connect_ray(address: str, options: dict[str, Any]) -> ModuleType:
    """Start (``address == "local"``) or join a Ray cluster; the ``ray`` module, initialised.

    A local instance listens on 127.0.0.1 only: Ray is told it runs without a cluster
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, so its node IP is the loopback address and every server binds
    to it), with no dashboard and no usage stats (``RAY_USAGE_STATS_ENABLED=0``); its node IP is checked after
    start. ``options`` are further ``ray.init`` arguments (``--ray-cpus``, ``--ray-init``).

    :raises LeaderboardError: Ray not installed, no cluster at ``address``, bad options, or a local instance that is
        not on the loopback address (Ray imported earlier in this process without the setting)
    """
    local = address == "local"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if local:
        fixed = sorted(set(options) & set(LOCAL_RAY))
        if fixed:
            raise LeaderboardError(f"--ray-init may not set {fixed} with --ray local (it stays on 127.0.0.1 only)")
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when ray is imported: loopback node IP
    try:
        import ray
    except ImportError:
        raise LeaderboardError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    kwargs = {"log_to_driver": False, **options, **(LOCAL_RAY if local else {"address": address})}
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        raise LeaderboardError(
            f"--ray {address}: no Ray cluster to connect to ({err}). Start one (`ray start --head`) and pass its "
            "address, or use --ray local for a private instance on this machine (127.0.0.1 only)"
        ) from None
    except (TypeError, ValueError, RuntimeError) as err:
        raise LeaderboardError(f"--ray {address}: ray.init({kwargs}) failed: {type(err).__name__}: {err}") from None
    if local:
        node_ip = ray.util.get_node_ip_address()
        if not _is_loopback(node_ip):
            ray.shutdown()
            raise LeaderboardError(
                f"--ray local: the Ray instance came up on {node_ip}, not on 127.0.0.1 (Ray was imported in this "
                "process before the leaderboard could configure it): run the leaderboard in a fresh process, or "
                "set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray"
            )
    return ray


def run_ray(ray: ModuleType, specs: list[RunSpec], threads: int, handle: Callable[[RunResult], None]) -> None:
    """Every run as a Ray task of :func:`execute_run` (``num_cpus=threads``) on the cluster ``ray`` is connected to.
    The nodes need this checkout installed (and any agent given as ``module:attr`` importable); each run directory
    is written on the node that ran it (use a shared ``--out``), the rows come back here. An interrupt cancels
    every pending task (force: their workers are killed) before it propagates."""
    remote = ray.remote(num_cpus=threads)(execute_run)
    pending = {remote.remote(spec): spec for spec in specs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as err:  # noqa: BLE001 (a task or node failed)
                    result = RunResult(spec, error=f"the Ray task failed: {type(err).__name__}: {err}")
                handle(result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise

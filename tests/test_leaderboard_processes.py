"""Where leaderboard runs execute and how they stop: spawn workers (same results, SIGTERM leaves no process behind),
Ray (a stand-in for the API calls; ``--ray auto`` without a cluster; a real local instance on 127.0.0.1 only).

The subprocess tests run ``python -m benchmarks.leaderboard`` as a user does.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from benchmarks.leaderboard import main, read_rows

FIRST = "synthetic-mobilenet_v2/size-0.125"
ONE = ["--suite", "smoke", "--entries", FIRST, "--finetune-epochs", "0"]


def leaderboard_process(*argv: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "benchmarks.leaderboard", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**env, "OMP_NUM_THREADS": "1"})


def gone(process) -> bool:
    import psutil

    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(processes, seconds: float = 20.0) -> list:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(gone(p) for p in processes):
        time.sleep(0.2)
    return [p for p in processes if not gone(p)]


# ---------------------------------------------------------------------- local workers
def test_sigterm_stops_the_spawn_workers(tmp_path):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "board"
    process = leaderboard_process(*ONE, "--agents", "random", "--seeds", "0", "1", "--episodes", "100000",
                                  "--workers", "2", "--out", str(out))
    parent = psutil.Process(process.pid)
    deadline, children = time.monotonic() + 180, []
    while time.monotonic() < deadline and process.poll() is None:  # both workers are searching
        children = parent.children(recursive=True)
        if (out / "runs").is_dir() and len(list((out / "runs").iterdir())) == 2:  # run_search started in each
            break
        time.sleep(0.2)
    assert process.poll() is None and len(children) >= 2, process.communicate()[0]
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "interrupted: run the same command with --resume" in output
    assert not wait_until_gone(children), "worker processes survived SIGTERM"


# ---------------------------------------------------------------------- Ray
class _Ref:
    def __init__(self, value):
        self.value = value


class _StandInRay(types.ModuleType):
    """The few calls of Ray's API that the leaderboard makes, run in this process."""

    def __init__(self) -> None:
        super().__init__("ray")
        self.init_kwargs, self.options, self.shut = None, None, False
        self.util = types.SimpleNamespace(get_node_ip_address=lambda: "127.0.0.1")

    def init(self, **kwargs):
        self.init_kwargs = kwargs

    def remote(self, **options):
        self.options = options
        return lambda fn: types.SimpleNamespace(remote=lambda *args: _Ref(fn(*args)))

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value

    def cancel(self, ref, force=False):
        pass

    def shutdown(self):
        self.shut = True


def test_ray_path_runs_each_run_as_a_remote_task_with_the_init_options(tmp_path, monkeypatch):
    ray = _StandInRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # restored after the test
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    out = tmp_path / "ray"
    argv = [*ONE, "--agents", "random", "--seeds", "0", "--episodes", "2", "--out", str(out)]
    assert main([*argv, "--ray", "local", "--ray-cpus", "3", "--ray-init", '{"object_store_memory": 100000000}']) == 0
    assert ray.init_kwargs == {"address": "local", "include_dashboard": False, "_node_ip_address": "127.0.0.1",
                               "num_cpus": 3, "object_store_memory": 100000000, "log_to_driver": False}
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0" and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert ray.options == {"num_cpus": 1} and ray.shut
    (row,) = read_rows(out / "leaderboard.csv")
    assert row.validated and row.episodes == 2
    assert main([*argv[:-1], str(tmp_path / "x"), "--ray", "local", "--ray-init", '{"include_dashboard": true}']) == 2
    ray.util.get_node_ip_address, ray.shut = (lambda: "10.1.2.3"), False  # e.g. ray imported before, unconfigured
    assert main([*argv[:-1], str(tmp_path / "x"), "--ray", "local"]) == 2
    assert ray.shut and not (tmp_path / "x").exists()


def test_ray_missing_says_how_to_install_it_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "b"
    assert main([*ONE, "--agents", "random", "--seeds", "0", "--out", str(out), "--ray", "local"]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err and not out.exists()


def test_ray_auto_without_a_cluster_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # restored after the test
    out = tmp_path / "b"
    assert main([*ONE, "--agents", "random", "--seeds", "0", "--out", str(out), "--ray", "auto"]) == 2
    err = capsys.readouterr().err
    assert "leaderboard: error: --ray auto: no Ray cluster to connect to" in err and "--ray local" in err
    assert "Traceback" not in err and not out.exists()  # no directory, no header-only CSV, no table


def _listening(processes) -> set[tuple[str, int, str]]:
    import psutil

    found = set()
    for process in processes:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port, process.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only_and_leaves_no_process(tmp_path):
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "ray"
    process = leaderboard_process(*ONE, "--agents", "random", "--seeds", "0", "--episodes", "1", "--out", str(out),
                                  "--ray", "local", "--ray-cpus", "1")
    parent, seen, listening = psutil.Process(process.pid), {}, set()
    while process.poll() is None:  # watch every process of the tree while the run lasts
        family = [parent, *parent.children(recursive=True)] if not gone(parent) else []
        seen.update({p.pid: p for p in family})
        listening |= _listening(family)
        time.sleep(0.3)
    output = process.communicate()[0]
    assert process.returncode == 0, output
    (row,) = read_rows(out / "leaderboard.csv")
    assert row.validated and Path(out / row.run).is_dir()
    names = {name for _, _, name in listening}
    assert any("gcs_server" in n or "raylet" in n for n in names), f"no Ray server seen listening: {listening}"
    exposed = sorted(item for item in listening if not _loopback(item[0]))
    assert not exposed, f"Ray processes listen beyond the loopback address: {exposed}"
    assert not wait_until_gone([p for pid, p in seen.items() if pid != process.pid]), "Ray processes survived"

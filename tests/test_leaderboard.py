"""``benchmarks.leaderboard``: the smoke suite end to end, resume, validation by replay, the table, bad input.

Every run here is on the tiny synthetic env (``--suite smoke``) with a handful of episodes.
"""

from __future__ import annotations

import csv
import math
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest

import agents.search
from ajpq_env.compression import Policy
from ajpq_env.records import read_records
from benchmarks import leaderboard
from benchmarks.leaderboard import LeaderboardRow, main, markdown_table, read_rows, validate_row

SMOKE = ["--suite", "smoke", "--seeds", "0", "1"]
FIRST = "synthetic-mobilenet_v2/size-0.125"


def csv_keys(out: Path) -> list[tuple[str, str, str]]:
    with open(out / "leaderboard.csv", newline="") as f:
        return [(r["entry"], r["agent"], r["seed"]) for r in csv.DictReader(f)]


def same_results(a: list[LeaderboardRow], b: list[LeaderboardRow]) -> bool:
    def results(rows: list[LeaderboardRow]) -> dict:
        return {r.key: (r.metric, r.size_ratio, r.bitops_ratio, r.recipe, r.episodes) for r in rows}

    return results(a) == results(b)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke suite (2 entries) with 2 agents x 2 seeds, 4 episodes per run."""
    out = tmp_path_factory.mktemp("board")
    assert main([*SMOKE, "--agents", "random", "two-step", "--out", str(out)]) == 0
    return out


def copy_board(board: Path, tmp_path: Path) -> Path:
    out = tmp_path / "board"
    shutil.copytree(board, out)
    return out


# ---------------------------------------------------------------------- the smoke suite end to end
def test_smoke_suite_writes_one_validated_row_per_run(board):
    rows = read_rows(board / "leaderboard.csv")
    expected = {(e, a, s) for e in (FIRST, "synthetic-mobilenet_v2/bitops-0.05") for a in ("random", "two-step")
                for s in (0, 1)}
    assert len(rows) == 8 and {r.key for r in rows} == expected
    for row in rows:
        assert row.validated and row.validation == "OK"
        assert row.env_id == "synthetic" and row.task == "synthetic-mobilenet_v2" and row.mode == "joint"
        assert row.episode_budget == row.episodes == 4 and row.walltime > 0
        assert getattr(row, f"{row.resource}_ratio") <= row.target and not math.isnan(row.fp32_metric)
        # the run directory is an ajpq search directory named <entry>__<agent>__s<seed>__<time>
        run = board / row.run
        assert run.name.startswith(f"{row.entry.replace('/', '-')}__{row.agent}__s{row.seed}__20")
        episodes = list(read_records(run / "episodes.csv"))
        assert len(episodes) == 4 and episodes[row.best_episode].metric == row.metric
        assert Policy.load(run / "best_recipe.json") == Policy.from_dict(row.recipe)
        assert not (run / "checkpoints").exists() and not (run / "checkpoint.json").exists()  # dropped once written


def test_smoke_suite_writes_the_table(board):
    table = (board / "leaderboard.md").read_text()
    assert f"## {FIRST}" in table and "## synthetic-mobilenet_v2/bitops-0.05" in table
    ranks = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "agent" not in line]
    assert ranks == ["| 1", "| 2", "| 1", "| 2"] and table.count("2/2 |") == 4
    assert " ± " in table and "Not validated" not in table


# ---------------------------------------------------------------------- resume
def test_rerun_without_resume_refuses_to_touch_the_csv(board, tmp_path, capsys):
    out = copy_board(board, tmp_path)
    before = (out / "leaderboard.csv").read_bytes()
    assert main([*SMOKE, "--agents", "random", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err and (out / "leaderboard.csv").read_bytes() == before


def test_resume_when_complete_adds_nothing(board, tmp_path, capsys):
    out = copy_board(board, tmp_path)
    before, runs = (out / "leaderboard.csv").read_bytes(), sorted((out / "runs").iterdir())
    assert main([*SMOKE, "--agents", "random", "two-step", "--out", str(out), "--resume"]) == 0
    assert (out / "leaderboard.csv").read_bytes() == before and sorted((out / "runs").iterdir()) == runs
    assert "8 in the CSV, 0 to run" in capsys.readouterr().out


def test_resume_finishes_a_partial_csv_without_duplicates(board, tmp_path):
    out = copy_board(board, tmp_path)
    shutil.rmtree(out / "runs")  # the missing runs are run again, for real
    lines = (out / "leaderboard.csv").read_text().splitlines(keepends=True)
    (out / "leaderboard.csv").write_text("".join(lines[:4]) + lines[4][:150])  # 3 rows and a cut-off 4th
    assert main([*SMOKE, "--agents", "random", "two-step", "--out", str(out), "--resume"]) == 0
    keys = csv_keys(out)
    assert len(keys) == len(set(keys)) == 8
    assert (out / "leaderboard.csv").read_text().startswith("".join(lines[:4]))
    assert same_results(read_rows(out / "leaderboard.csv"), read_rows(board / "leaderboard.csv"))  # seeded: equal


def test_interrupt_keeps_finished_runs_and_resume_completes(tmp_path, monkeypatch):
    out, argv = tmp_path / "board", [*SMOKE, "--agents", "random", "--out", str(tmp_path / "board")]
    real, calls = leaderboard.execute_run, []

    def interrupted_at_third(spec):
        calls.append(spec)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(spec)

    monkeypatch.setattr(leaderboard, "execute_run", interrupted_at_third)
    assert main(argv) == 130
    assert len(csv_keys(out)) == 2
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    keys = csv_keys(out)
    assert len(keys) == len(set(keys)) == 4


def test_resume_continues_an_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch):
    argv = [*SMOKE[:2], "--entries", FIRST, "--agents", "random", "--seeds", "0", "--episodes", "12"]
    real = agents.search.run_search

    def stopped_after_ten_episodes(config, **kwargs):
        def stop(record):
            if record.episode == 10:  # a checkpoint was written after episode 10 of 12 (checkpoint_every=10)
                raise KeyboardInterrupt

        return real(config, on_episode=stop, **kwargs)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(agents.search, "run_search", stopped_after_ten_episodes)
    assert main([*argv, "--out", str(out)]) == 130
    monkeypatch.undo()
    (run,) = (out / "runs").iterdir()
    assert (run / "checkpoint.json").exists() and not csv_keys(out)
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    (row,) = read_rows(out / "leaderboard.csv")
    assert out / row.run == run and row.episodes == 12 and row.validated and not (run / "checkpoint.json").exists()
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    assert same_results([row], read_rows(tmp_path / "straight" / "leaderboard.csv"))


# ---------------------------------------------------------------------- validation
def test_tampered_rows_fail_validation_with_a_message(board):
    row = next(r for r in read_rows(board / "leaderboard.csv") if r.agent == "random")
    assert validate_row(row).ok
    layer, tighter = next(iter(row.recipe["layers"])), round(row.size_ratio * 0.9, 4)
    too_many_bits = {**row.recipe, "layers": {**row.recipe["layers"], layer: [9] * len(row.recipe["layers"][layer])}}
    cases = {
        "metric: recorded": replace(row, metric=row.metric + 0.25),
        "size_ratio: recorded": replace(row, size_ratio=row.size_ratio / 2),
        "fp32_metric: recorded": replace(row, fp32_metric=0.5),
        "budget: recipe exceeds target": replace(row, target=tighter, env_kwargs={**row.env_kwargs, "target": tighter}),
        "budget: the row says size <= 0.5": replace(row, target=0.5),
        "recipe does not apply: layer": replace(row, recipe=too_many_bits),
        "cannot build the env": replace(row, task="no-such-task"),
        "recipe 'layers' must map layer names": replace(row, recipe={"format": "ajpq-recipe/1", "layers": 42}),
        "no recipe to replay": replace(row, best_episode=None),
    }
    for expected, tampered in cases.items():
        result = validate_row(tampered)  # never raises
        assert not result.ok and expected in str(result), (expected, str(result))


def test_a_row_that_fails_validation_is_flagged_in_the_table(board):
    rows = read_rows(board / "leaderboard.csv")
    rows[0] = replace(rows[0], validated=False, validation="metric: recorded 1, replayed 0.5")
    table = markdown_table(rows)
    assert "1/2 |" in table and "Not validated" in table and "metric: recorded 1, replayed 0.5" in table


# ---------------------------------------------------------------------- the table
def test_table_only_regenerates_the_table(board, tmp_path, capsys):
    out = copy_board(board, tmp_path)
    expected = (out / "leaderboard.md").read_text()
    (out / "leaderboard.md").unlink()
    capsys.readouterr()
    assert main(["--table-only", "--out", str(out)]) == 0
    assert (out / "leaderboard.md").read_text() == expected and expected.strip() in capsys.readouterr().out
    assert main(["--table-only", "--out", str(tmp_path / "nothing")]) == 2


def _row(agent: str, seed: int, metric: float | None, **kw) -> LeaderboardRow:
    values = dict(
        entry="e/size-0.5", env_id="synthetic", task="t", mode="joint", resource="size", target=0.5, agent=agent,
        seed=seed, episode_budget=10, episodes=10, best_episode=None if metric is None else 3,
        metric=math.nan if metric is None else metric, fp32_metric=0.9, size_ratio=0.4, macs_ratio=0.5,
        bitops_ratio=0.1, reward=math.nan if metric is None else metric, walltime=12.0,
        validated=metric is not None, validation="OK" if metric is not None else "no recipe", run="runs/x",
    )
    return LeaderboardRow(**{**values, **kw})


def test_table_ranks_agents_by_mean_metric_with_std():
    rows = [
        _row("a", 0, 0.9), _row("a", 1, 0.8),
        _row("b", 0, 0.86),
        _row("c", 0, 0.86, size_ratio=0.3),  # tie with b on the metric: the smaller size ranks first
        _row("d", 0, None), _row("d", 1, 0.5),
        _row("e", 0, None),
    ]
    lines = [line for line in markdown_table(rows).splitlines() if line.startswith("| ") and "rank" not in line]
    assert [line.split(" | ")[1] for line in lines] == ["c", "b", "a", "d", "e"]
    assert "0.8500 ± 0.0707" in lines[2] and "-0.0500" in lines[2] and "2/2" in lines[2]
    assert "± " not in lines[0] and "0.5000 (1/2 runs)" in lines[3] and "1/2" in lines[3]
    assert "none within budget" in lines[4] and "0/1" in lines[4]


# ---------------------------------------------------------------------- bad input, missing data, parallel, Ray
@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--agents", "random", "nope"], ["unknown agents ['nope']", "td3-twolevel", "two-step", "uniform"]),
        (["--suite", "nope"], ["unknown suite 'nope'", "default", "embedded", "smoke"]),
        (["--suite", "smoke", "--entries", "nope"], ["unknown entries ['nope']", FIRST]),
        (["--workers", "2", "--ray", "auto"], ["exclude each other"]),
    ],
)
def test_bad_input_lists_the_valid_names(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and all(name in err for name in names), err


def test_list_shows_suites_and_agents(capsys):
    assert main(["--list"]) == 0
    printed = capsys.readouterr().out
    assert "suite smoke:" in printed and FIRST in printed and "heuristic" in printed


def test_entries_without_data_or_weights_are_skipped_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("AJPQ_DATA", raising=False)
    monkeypatch.delenv("AJPQ_WEIGHTS", raising=False)
    assert main(["--suite", "cifar10", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "skip cifar10-resnet20/size-0.125:" in out and "AJPQ_WEIGHTS" in out and "0 runs" in out
    assert not csv_keys(tmp_path / "b")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "resnet20-cifar10jpeg-ft2ep.pt").touch()
    monkeypatch.setenv("AJPQ_WEIGHTS", str(weights))
    entry = next(e for e in leaderboard.SUITES["cifar10"] if e.env == "AJPQ-ResNet20-CIFAR10-v0")
    assert "AJPQ_DATA" in entry.unavailable()
    monkeypatch.setenv("AJPQ_DATA", str(tmp_path / "missing"))
    assert "does not exist" in entry.unavailable()


def test_parallel_workers_give_the_sequential_results(board, tmp_path):
    out = tmp_path / "parallel"
    assert main([*SMOKE, "--agents", "random", "--out", str(out), "--workers", "2", "--keep-checkpoints"]) == 0
    sequential = [r for r in read_rows(board / "leaderboard.csv") if r.agent == "random"]
    rows = read_rows(out / "leaderboard.csv")
    assert len(rows) == 4 and all(r.validated for r in rows) and same_results(rows, sequential)
    assert all((out / r.run / "checkpoint.json").exists() for r in rows)


def test_ray_missing_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main([*SMOKE, "--agents", "random", "--out", str(tmp_path / "b"), "--ray", "auto"]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err


class _Ref:
    def __init__(self, value):
        self.value = value


class _StandInRay(types.ModuleType):
    """The few calls of Ray's API that the leaderboard makes, run in this process (no Ray here)."""

    def __init__(self) -> None:
        super().__init__("ray")
        self.address, self.options = None, None

    def init(self, address=None, **kwargs):
        self.address = address

    def remote(self, **options):
        self.options = options
        return lambda fn: types.SimpleNamespace(remote=lambda *args: _Ref(fn(*args)))

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value

    def cancel(self, ref):
        pass


def test_ray_path_runs_each_run_as_a_remote_task(board, tmp_path, monkeypatch):
    ray = _StandInRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    out = tmp_path / "ray"
    assert main([*SMOKE, "--agents", "random", "--out", str(out), "--ray", "ray://head:10001"]) == 0
    assert ray.address == "ray://head:10001" and ray.options == {"num_cpus": 1}
    sequential = [r for r in read_rows(board / "leaderboard.csv") if r.agent == "random"]
    assert same_results(read_rows(out / "leaderboard.csv"), sequential)

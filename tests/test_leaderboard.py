"""``benchmarks.leaderboard``: suites and seeds, a tiny leaderboard with the fine-tune column end to end, resume,
validation by replay, the table's three rankings, bad input.

Every run here is on the tiny synthetic env (``--suite smoke``) with a handful of episodes.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import agents.search
from ajpq_env.compression import Policy
from ajpq_env.records import read_records
from benchmarks import leaderboard
from benchmarks.leaderboard import (
    SUITES,
    LeaderboardConfig,
    LeaderboardRow,
    Suite,
    main,
    markdown_table,
    read_rows,
    validate_row,
)

FIRST = "synthetic-mobilenet_v2/size-0.125"
ONE = ["--suite", "smoke", "--entries", FIRST]
NO_FT = ["--finetune-epochs", "0"]
EXAMPLE = "benchmarks.leaderboard.example_agent:EvolutionStrategy"
BOARD = ["--agents", "random", "two-step", "--seeds", "0", "100", "--episodes", "3"]


def csv_keys(out: Path) -> list[tuple[str, str, str]]:
    with open(out / "leaderboard.csv", newline="") as f:
        return [(r["entry"], r["agent"], r["seed"]) for r in csv.DictReader(f)]


def same_results(a: list[LeaderboardRow], b: list[LeaderboardRow]) -> bool:
    def results(rows: list[LeaderboardRow]) -> dict:
        return {r.key: (r.metric, r.size_ratio, r.bitops_ratio, r.recipe, r.episodes) for r in rows}

    return results(a) == results(b)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke entry, random and two-step, a tuning seed (0) and a held-out seed (100), 3 episodes per run, and
    the smoke suite's equal fine-tune (1 epoch of 32 samples)."""
    out = tmp_path_factory.mktemp("board")
    assert main([*ONE, *BOARD, "--out", str(out)]) == 0
    return out


def copy_board(board: Path, tmp_path: Path) -> Path:
    out = tmp_path / "board"
    shutil.copytree(board, out)
    return out


# ---------------------------------------------------------------------- the protocol: suites and seeds
@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_keeps_tuning_and_heldout_seeds_apart(name):
    suite = SUITES[name]
    assert suite.tuning_seeds and len(suite.heldout_seeds) >= 3
    assert not set(suite.tuning_seeds) & set(suite.heldout_seeds)
    assert {suite.seed_set(s) for s in suite.heldout_seeds} == {"held-out"}
    assert {suite.seed_set(s) for s in suite.tuning_seeds} == {"tuning"}
    for entry in suite.entries:  # every entry gets an equal fine-tune, the same for every agent
        assert entry.finetune_epochs >= 1
        assert entry.name.startswith(entry.task + "/") or entry.unavailable()  # named after its task, once registered


def test_a_suite_with_overlapping_seeds_is_refused():
    with pytest.raises(ValueError, match=r"seeds \[3\] are both tuning and held-out"):
        Suite("bad", SUITES["smoke"].entries, (1, 2, 3), (3, 4, 5))


def test_the_required_entries_exist():
    names = {e.name for e in SUITES["default"].entries}
    assert {"mnist5k-mobilenet_v2/size-0.125", "cifar10-mobilenet_v2/size-0.125", "cifar10-mobilenet_v2/bitops-0.03",
            "cifar10-mobilenet_v2/size-0.1", "cifar10-resnet20/size-0.125"} <= names


@pytest.mark.parametrize(("seeds", "expected", "choice"), [
    (["held-out"], [100, 101, 102], "held-out"), (["tuning"], [0, 1], "tuning"), (["7", "3", "7"], [7, 3], "chosen"),
])
def test_seeds_name_a_set_of_the_suite_or_list_seeds(seeds, expected, choice):
    config = LeaderboardConfig(suite="smoke", seeds=seeds)
    assert config.seeds == expected and config.seed_choice == choice
    assert LeaderboardConfig().seeds == list(SUITES["default"].heldout_seeds)  # the default: held-out


# ---------------------------------------------------------------------- a tiny leaderboard end to end
def test_tiny_leaderboard_with_finetune_writes_validated_rows(board):
    rows = read_rows(board / "leaderboard.csv")
    assert {r.key for r in rows} == {(FIRST, a, s) for a in ("random", "two-step") for s in (0, 100)}
    for row in rows:
        assert row.validated and row.validation == "OK"
        assert row.seed_set == ("held-out" if row.seed == 100 else "tuning")
        assert row.env_id == "synthetic" and row.task == "synthetic-mobilenet_v2" and row.mode == "joint"
        assert row.episode_budget == row.episodes == 3 and row.walltime > 0
        assert row.resource_ratio <= row.target and not math.isnan(row.fp32_metric)
        # the equal fine-tune: same budget for every agent, test metrics measured
        assert (row.finetune_epochs, row.finetune_samples) == (1, 32) and row.finetune_seconds > 0
        for value in (row.test_metric, row.test_before_finetune, row.fp32_test_metric, row.finetune_search_metric):
            assert 0.0 <= value <= 1.0
        # the run directory is an ajpq search directory named <entry>__<agent>__s<seed>__<time>
        run = board / row.run
        assert run.name.startswith(f"{row.entry.replace('/', '-')}__{row.agent}__s{row.seed}__20")
        episodes = list(read_records(run / "episodes.csv"))
        assert len(episodes) == 3 and episodes[row.best_episode].metric == row.metric
        assert Policy.load(run / "best_recipe.json") == Policy.from_dict(row.recipe)
        assert not (run / "checkpoints").exists() and not (run / "checkpoint.json").exists()  # dropped once written
        # the best-so-far curve: improving metrics, elapsed time summed from episodes.csv, ending at the best
        points = row.curve[:-1]
        assert [p[2] for p in points] == sorted(p[2] for p in points) and points[-1][0] == row.best_episode
        assert row.curve[-1][0] == 2 and row.curve[-1][2] == row.metric
        assert row.search_seconds == pytest.approx(sum(e.walltime for e in episodes), abs=1e-2)


def test_the_finetune_column_equals_ajpq_finetune_of_the_recipe(board):
    from ajpq_env.deploy import FinetuneConfig, finetune
    from ajpq_env.tasks import synthetic_task

    row = next(r for r in read_rows(board / "leaderboard.csv") if r.agent == "random" and r.seed == 100)
    config = FinetuneConfig(epochs=1, samples_per_epoch=32, seed=100, progress=False, evaluate_search=False)
    tuned = finetune(synthetic_task(), Policy.from_dict(row.recipe), config)
    assert tuned.metrics["test"] == row.test_metric and tuned.metrics["fp32_test"] == row.fp32_test_metric


def test_the_table_reports_heldout_and_tuning_seeds_apart(board):
    table = (board / "leaderboard.md").read_text()
    held_out = table.index(f"## {FIRST}: held-out seeds 100 (fewer than 3: not for claims)")
    tuning = table.index(f"## {FIRST}: tuning seeds 0 (defaults may have been tuned on them: not for claims)")
    assert held_out < tuning and "Equal fine-tune: 1 epoch(s) x 32 samples" in table
    claims = markdown_table(read_rows(board / "leaderboard.csv"), seed_sets=("held-out",))
    assert "held-out seeds 100" in claims and "tuning seeds" not in claims
    ranks = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "agent" not in line]
    assert ranks == ["| 1", "| 2", "| 1", "| 2"] and table.count("1/1 |") == 4 and "Not validated" not in table


def test_spawn_workers_run_registry_and_imported_agents_to_the_sequential_results(board, tmp_path):
    out = tmp_path / "parallel"
    argv = [*ONE, *NO_FT, "--agents", "random", EXAMPLE, "--seeds", "0", "--episodes", "3", "--workers", "2"]
    assert main([*argv, "--keep-checkpoints", "--out", str(out)]) == 0
    rows = read_rows(out / "leaderboard.csv")
    assert {r.agent for r in rows} == {"random", "example-es"} and all(r.validated for r in rows)
    sequential = [r for r in read_rows(board / "leaderboard.csv") if r.agent == "random" and r.seed == 0]
    assert same_results([r for r in rows if r.agent == "random"], sequential)
    assert all((out / r.run / "checkpoint.json").exists() for r in rows)


# ---------------------------------------------------------------------- resume
def test_rerun_without_resume_refuses_to_touch_the_csv(board, tmp_path, capsys):
    out = copy_board(board, tmp_path)
    before = (out / "leaderboard.csv").read_bytes()
    assert main([*ONE, "--agents", "random", "--seeds", "0", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err and (out / "leaderboard.csv").read_bytes() == before


def test_resume_when_complete_adds_nothing_and_other_settings_are_refused(board, tmp_path, capsys):
    out = copy_board(board, tmp_path)
    before, runs = (out / "leaderboard.csv").read_bytes(), sorted((out / "runs").iterdir())
    argv = [*ONE, *BOARD, "--out", str(out), "--resume"]
    assert main(argv) == 0
    assert (out / "leaderboard.csv").read_bytes() == before and sorted((out / "runs").iterdir()) == runs
    assert "4 in the CSV, 0 to run" in capsys.readouterr().out
    assert main([*argv, "--finetune-epochs", "2"]) == 2  # another fine-tune budget is another leaderboard
    assert "fine-tune" in capsys.readouterr().err and (out / "leaderboard.csv").read_bytes() == before


def test_resume_finishes_a_partial_csv_without_duplicates(board, tmp_path):
    out = copy_board(board, tmp_path)
    shutil.rmtree(out / "runs")  # the missing runs are run again, for real
    lines = (out / "leaderboard.csv").read_text().splitlines(keepends=True)
    (out / "leaderboard.csv").write_text("".join(lines[:4]) + lines[4][:150])  # 3 rows and a cut-off 4th
    assert main([*ONE, *BOARD, "--out", str(out), "--resume"]) == 0
    keys = csv_keys(out)
    assert len(keys) == len(set(keys)) == 4
    assert (out / "leaderboard.csv").read_text().startswith("".join(lines[:4]))
    rows, expected = read_rows(out / "leaderboard.csv"), read_rows(board / "leaderboard.csv")
    assert same_results(rows, expected)  # seeded: equal, fine-tune included
    assert {r.key: r.test_metric for r in rows} == {r.key: r.test_metric for r in expected}


def test_a_csv_of_an_older_version_is_refused(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "leaderboard.csv").write_text("entry,env_id,task,agent,seed\n")
    before = (out / "leaderboard.csv").read_bytes()
    assert main([*ONE, "--agents", "random", "--seeds", "0", "--out", str(out), "--resume"]) == 2
    assert "not a CSV of this leaderboard version" in capsys.readouterr().err
    assert (out / "leaderboard.csv").read_bytes() == before


def test_interrupt_keeps_finished_runs_and_resume_completes(tmp_path, monkeypatch):
    out = tmp_path / "board"
    argv = [*ONE, "--agents", "random", "--seeds", "0", "1", "--episodes", "2", *NO_FT, "--out", str(out)]
    real, calls = leaderboard.parallel.execute_run, []

    def interrupted_at_second(spec):
        calls.append(spec)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(spec)

    monkeypatch.setattr(leaderboard.parallel, "execute_run", interrupted_at_second)
    assert main(argv) == 130
    assert len(csv_keys(out)) == 1
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    keys = csv_keys(out)
    assert len(keys) == len(set(keys)) == 2


def test_resume_continues_an_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch):
    argv = [*ONE, "--agents", "random", "--seeds", "0", "--episodes", "4", *NO_FT]
    real = agents.search.run_search

    def stopped_after_two_episodes(config, **kwargs):
        def stop(record):
            if record.episode == 2:  # a checkpoint was written after episode 2 of 4
                raise KeyboardInterrupt

        return real(dataclasses.replace(config, checkpoint_every=2), on_episode=stop, **kwargs)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(agents.search, "run_search", stopped_after_two_episodes)
    assert main([*argv, "--out", str(out)]) == 130
    monkeypatch.undo()
    (run,) = (out / "runs").iterdir()
    assert (run / "checkpoint.json").exists() and not csv_keys(out)
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    (row,) = read_rows(out / "leaderboard.csv")
    assert out / row.run == run and row.episodes == 4 and row.validated and not (run / "checkpoint.json").exists()
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    assert same_results([row], read_rows(tmp_path / "straight" / "leaderboard.csv"))


def test_resume_continues_a_run_interrupted_before_its_first_checkpoint_in_its_folder(tmp_path, monkeypatch):
    argv = [*ONE, "--agents", "random", "--seeds", "0", "--episodes", "2", *NO_FT, "--out", str(tmp_path / "b")]
    real = agents.search.run_search

    def stopped_at_once(config, **kwargs):
        def stop(record):
            raise KeyboardInterrupt

        return real(config, on_episode=stop, **kwargs)

    monkeypatch.setattr(agents.search, "run_search", stopped_at_once)
    assert main(argv) == 130
    monkeypatch.undo()
    (run,) = (tmp_path / "b" / "runs").iterdir()
    assert not (run / "checkpoint.json").exists()
    assert main([*argv, "--resume"]) == 0
    (row,) = read_rows(tmp_path / "b" / "leaderboard.csv")
    assert tmp_path / "b" / row.run == run and row.episodes == 2 and row.validated  # no orphaned folder


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
        "no recipe to replay": replace(row, best_episode=None),
    }
    for expected, tampered in cases.items():
        result = validate_row(tampered)  # never raises
        assert not result.ok and expected in str(result), (expected, str(result))


def test_a_row_that_fails_validation_is_flagged_in_the_table(board):
    rows = [r for r in read_rows(board / "leaderboard.csv") if r.seed == 100]
    rows[0] = replace(rows[0], validated=False, validation="metric: recorded 1, replayed 0.5")
    table = markdown_table(rows)
    assert "0/1 |" in table and "Not validated" in table and "metric: recorded 1, replayed 0.5" in table


# ---------------------------------------------------------------------- the table
def test_table_only_regenerates_the_table(board, tmp_path, capsys):
    out = copy_board(board, tmp_path)
    expected = (out / "leaderboard.md").read_text()
    (out / "leaderboard.md").unlink()
    capsys.readouterr()
    assert main(["--table-only", "--out", str(out)]) == 0
    assert (out / "leaderboard.md").read_text() == expected and expected.strip() in capsys.readouterr().out
    assert main(["--table-only", "--out", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("curve", "[1,2]", "curve must be a JSON list of [episode, seconds, metric] number triples"),
        ("recipe", "[1]", "recipe must be a JSON object, got list"),
        ("validated", "maybe", "validated must be True or False"),
        ("resource", "banana", "resource must be one of ['size', 'bitops', 'macs']"),
        ("seed_set", "nope", "seed_set must be one of ['held-out', 'tuning', 'other']"),
        ("best_episode", "-5", "best_episode must be in 0.."),
        ("target", "inf", "target must be in (0, 1]"),
        ("agent", "", "agent is empty"),
    ],
)
def test_table_only_refuses_rows_whose_fields_are_not_what_the_board_writes(board, tmp_path, capsys, column, value,
                                                                            message):
    out = copy_board(board, tmp_path)
    with open(out / "leaderboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[-1][column] = value
    with open(out / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = (out / "leaderboard.md").read_bytes()
    capsys.readouterr()
    assert main(["--table-only", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"line {len(rows) + 1}: unreadable row" in err and message in err
    assert (out / "leaderboard.md").read_bytes() == before


def _row(agent: str, seed: int, metric: float | None, **kw) -> LeaderboardRow:
    found = metric is not None
    values = dict(
        entry="e/size-0.5", env_id="synthetic", task="t", mode="joint", resource="size", target=0.5, agent=agent,
        seed=seed, seed_set="held-out", episode_budget=10, episodes=10, best_episode=3 if found else None,
        metric=metric if found else math.nan, fp32_metric=0.9, size_ratio=0.4, macs_ratio=0.5, bitops_ratio=0.1,
        reward=metric if found else math.nan, walltime=12.0, validated=found, validation="OK" if found else "none",
        run="runs/x", curve=[[3, 5.0, metric], [9, 10.0, metric]] if found else [[9, 10.0, math.nan]],
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
    assert "0.8500 ± 0.0707" in lines[2] and "2/2" in lines[2]
    assert "± " not in lines[0] and "0.5000 (1/2 runs)" in lines[3] and "1/2" in lines[3]
    assert "none within budget" in lines[4] and "0/1" in lines[4] and lines[4].startswith("| — |")


def test_rankings_after_finetune_and_at_equal_wall_time_differ_from_equal_episodes():
    rows = [
        # slow learner: best search metric at its budget, reached late; worst after fine-tune
        _row("slow", 0, 0.9, test_metric=0.70, fp32_test_metric=0.8, curve=[[1, 10.0, 0.5], [9, 90.0, 0.9], [9, 100.0, 0.9]]),
        # quick rule: stops after 3 episodes (nothing left to try), keeps its result at any cut-off
        _row("rule", 0, 0.8, episodes=3, test_metric=0.78, fp32_test_metric=0.8, curve=[[0, 2.0, 0.8], [2, 6.0, 0.8]]),
        # medium: spends its budget in 50 s
        _row("mid", 0, 0.85, test_metric=0.75, fp32_test_metric=0.8, curve=[[2, 20.0, 0.85], [9, 50.0, 0.85]]),
    ]
    table = markdown_table(rows)  # cut-off: the shortest search among agents that spent their budget: 50 s
    assert "Equal wall time: 50 s of search." in table
    lines = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| ") and "rank" not in line}
    assert lines["slow"].startswith("| 1 |") and "0.7000 (3)" in lines["slow"] and "0.5000 (3)" in lines["slow"]
    assert "0.7800 (1)" in lines["rule"] and "0.8000 (2)" in lines["rule"] and "-0.0200" in lines["rule"]
    assert "0.7500 (2)" in lines["mid"] and "0.8500 (1)" in lines["mid"]
    at_5s = markdown_table(rows, walltime_cutoff=5.0)  # nobody but the rule had a result by 5 s
    five = {line.split(" | ")[1]: line for line in at_5s.splitlines() if line.startswith("| ") and "rank" not in line}
    assert five["slow"].split(" | ")[4] == "—" and "0.8000 (1)" in five["rule"]


# ---------------------------------------------------------------------- bad input, missing data
@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--agents", "random", "nope"], ["unknown agent 'nope'", "td3-twolevel", "two-step", "module:attr"]),
        (["--suite", "nope"], ["invalid choice: 'nope'", "default", "embedded", "smoke"]),
        (["--suite", "smoke", "--entries", "nope"], ["unknown entries ['nope']", FIRST]),
        (["--workers", "2", "--ray", "auto"], ["exclude each other"]),
        (["--seeds", "held-out", "3"], ["'held-out', 'tuning' or integers"]),
        (["--finetune-epochs", "-1"], ["--finetune-epochs must be >= 0"]),
        (["--finetune-samples", "1"], ["--finetune-samples must be 0"]),
        (["--ray-cpus", "2"], ["options of --ray"]),
        (["--ray", "local", "--ray-init", "[1]"], ["--ray-init must be a JSON object"]),
        (["--walltime-cutoff", "0"], ["--walltime-cutoff must be a positive"]),
    ],
)
def test_bad_input_is_a_usage_error_that_says_what_is_valid(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and all(name in err for name in names), err


def test_list_shows_suites_seeds_and_agents(capsys):
    assert main(["--list"]) == 0
    printed = capsys.readouterr().out
    assert "suite smoke:" in printed and FIRST in printed and "heuristic" in printed
    assert "held-out (tables) 100 101 102" in printed and "fine-tune 2 epoch(s) x 10000 samples" in printed


def test_entries_without_env_data_or_weights_are_skipped_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("AJPQ_DATA", raising=False)
    monkeypatch.delenv("AJPQ_WEIGHTS", raising=False)
    assert main(["--suite", "cifar10", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "skip cifar10-resnet20/size-0.125:" in out and "AJPQ_WEIGHTS" in out and "0 runs" in out
    assert not csv_keys(tmp_path / "b")
    weights = tmp_path / "weights"
    weights.mkdir()
    entry = SUITES["cifar10"].entry("cifar10-resnet20/size-0.125")
    from ajpq_env.tasks import TASKS

    (weights / TASKS[entry.task].weights).touch()
    monkeypatch.setenv("AJPQ_WEIGHTS", str(weights))
    assert "AJPQ_DATA" in entry.unavailable()
    monkeypatch.setenv("AJPQ_DATA", str(tmp_path / "missing"))
    assert "does not exist" in entry.unavailable()
    unregistered = leaderboard.entry("AJPQ-SkyNet-v9", "skynet-x", "size", 0.2, 10)  # one line adds an entry
    assert "not registered" in unregistered.unavailable()

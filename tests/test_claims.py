"""``benchmarks/claims.py``: CLAIMS.md rows from a leaderboard's held-out rows, never from tuning seeds."""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks.claims import (
    Board,
    held_out_tables,
    joint_vs_two_step,
    joint_vs_two_step_rows,
    main,
    render,
    suite_of,
    within_one_point,
    within_one_point_rows,
)
from benchmarks.leaderboard.rows import COLUMNS, LeaderboardRow

ENTRY = "cifar10-mobilenet_v2/size-0.125"


def _row(agent: str, seed: int, test: float, seed_set: str = "held-out", entry: str = ENTRY) -> LeaderboardRow:
    return LeaderboardRow(
        entry=entry, env_id="AJPQ-MobileNet-CIFAR10-v0", task="cifar10-mobilenet_v2", mode="joint", resource="size",
        target=0.125, agent=agent, seed=seed, seed_set=seed_set, episode_budget=150, episodes=150, best_episode=3,
        metric=test - 0.02, fp32_metric=0.80, size_ratio=0.124, macs_ratio=0.8, bitops_ratio=0.03, reward=0.0,
        walltime=1.0, validated=True, validation="OK", finetune_epochs=2, finetune_samples=10_000,
        test_metric=test, fp32_test_metric=0.80,
    )


def test_joint_vs_two_step_uses_held_out_seeds_only(tmp_path):
    rows = [_row("td3-twolevel", s, t) for s, t in ((100, 0.79), (101, 0.80), (102, 0.81))]
    rows += [_row("two-step", s, 0.78) for s in (100, 101, 102)]
    rows += [_row("td3-twolevel", 0, 0.10, seed_set="tuning"), _row("two-step", 0, 0.99, seed_set="tuning")]
    row = joint_vs_two_step(Board(rows))
    assert "td3-twolevel 0.8000 ± 0.0100" in row.measured and "two-step 0.7800 ± 0.0000" in row.measured
    assert "+2.00 pt" in row.measured and row.seeds == "held-out 100, 101, 102"
    assert "--suite cifar10 " in row.command and row.claim.endswith("at equal size")
    # fewer than 3 held-out seeds: says so instead of a number
    assert joint_vs_two_step(Board(rows[:2] + rows[3:])).measured.startswith("not measured")
    # runs finish in any order (parallel workers): the seeds are listed in order
    assert joint_vs_two_step(Board(rows[::-1])).seeds == "held-out 100, 101, 102"


def test_within_one_point_verdict(tmp_path):
    entry = "cifar10-mobilenet_v2/size-0.1"
    close = [_row("td3-twolevel", s, 0.795, entry=entry) for s in (100, 101, 102)]
    far = [_row("td3-twolevel", s, 0.78, entry=entry) for s in (100, 101, 102)]
    assert "(-0.50 pt, within 1 pt)" in within_one_point(Board(close), entry, "10x").measured
    assert "NOT within 1 pt" in within_one_point(Board(far), entry, "10x").measured
    assert within_one_point(Board(close[::-1]), entry, "10x").seeds == "held-out 100, 101, 102"


def test_main_writes_the_file_and_refuses_a_missing_leaderboard(tmp_path, capsys):
    skynet = tmp_path / "skynet.json"
    skynet.write_text(json.dumps([{"claim": "c", "measured": "m", "command": "cmd", "notes": ["n1"]}]))
    out = tmp_path / "CLAIMS.md"
    assert main(["--out", str(out), "--skynet", str(skynet), "--zero-bit-seeds", "1"]) == 0
    text = out.read_text()
    assert "| pruning a channel is quantizing it to 0 bits |" in text and "| c | m | `cmd` |" in text
    assert "- n1" in text and text.count("not measured") == 3  # (b) and two (c) rows without a leaderboard
    zero_bit = next(line for line in text.splitlines() if line.startswith("| pruning"))
    worst = [float(part.split()[-1]) for part in zero_bit.split(": ", 1)[1].split(" | ")[0].split(", ")]
    assert len(worst) == 3 and max(worst) < 1e-4
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--leaderboard", str(tmp_path / "nowhere")])
    skynet.write_text("{}")
    assert main(["--out", str(tmp_path / "other.md"), "--skynet", str(skynet)]) == 2
    assert "expected a JSON list" in capsys.readouterr().err and not (tmp_path / "other.md").exists()


def test_render_is_a_markdown_table():
    from benchmarks.claims import ClaimRow

    text = render([ClaimRow("a", "b", "c", "d")])
    assert "| a | b | `c` | d |" in text and text.endswith("\n")


def _write_board(folder, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(row.to_row() for row in rows)


def test_boards_of_several_folders_merge_and_a_run_in_two_is_refused(tmp_path):
    bitops = "mnist5k-mobilenet_v2/bitops-0.03"
    cifar = [_row(a, s, 0.80) for a in ("td3-twolevel", "two-step") for s in (100, 101, 102)]
    embedded = [_row(a, s, t, entry=bitops) for a, t in (("td3-twolevel", 0.97), ("two-step", 0.95))
                for s in (100, 101, 102)]
    embedded += [_row("td3-twolevel", 0, 0.5, seed_set="tuning", entry=bitops)]
    _write_board(tmp_path / "a", cifar)
    _write_board(tmp_path / "b", embedded)
    board = Board.read([tmp_path / "a", tmp_path / "b"])
    assert len(board.rows) == 13 and board.entries() == [ENTRY, bitops]
    assert suite_of(bitops) == "embedded" and suite_of(ENTRY) == "cifar10"
    rows = joint_vs_two_step_rows(board)
    assert [r.measured.split(":")[0] for r in rows] == [ENTRY, bitops]
    assert f"--suite embedded --entries {bitops} " in rows[1].command and str(tmp_path / "b") in rows[1].command
    assert "+2.00 pt" in rows[1].measured
    tables = "\n".join(held_out_tables(board))
    assert tables.startswith("## Held-out leaderboard tables")
    assert f"### {bitops}: held-out seeds 100, 101, 102" in tables and "tuning seeds" not in tables
    # the embedded suite fine-tunes on the whole train split: these runs' 10,000-sample budget is named
    assert f"--out {tmp_path / 'b'} --finetune-epochs 2 --finetune-samples 10000`" in tables
    assert f"--out {tmp_path / 'a'}`" in tables and "Only held-out sections" in tables
    with pytest.raises(ValueError, match="is in both"):
        Board.read([tmp_path / "a", tmp_path / "b", tmp_path / "a"])


def test_main_reads_several_leaderboards_into_the_file(tmp_path):
    _write_board(tmp_path / "a", [_row(a, s, 0.80) for a in ("td3-twolevel", "two-step") for s in (100, 101, 102)])
    _write_board(tmp_path / "b", [_row("td3-twolevel", s, 0.795, entry="cifar10-mobilenet_v2/size-0.1")
                                  for s in (100, 101, 102)])
    out = tmp_path / "CLAIMS.md"
    assert main(["--out", str(out), "--zero-bit-seeds", "1", "--skynet", str(tmp_path / "none.json"),
                 "--leaderboard", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    text = out.read_text()
    assert "+0.00 pt" in text and "(-0.50 pt, within 1 pt)" in text  # (b) from a, 10x row from b
    assert "### cifar10-mobilenet_v2/size-0.1: held-out seeds" in text and text.count("not measured") == 2


def test_the_same_runs_after_two_fine_tune_budgets_give_one_row_and_table_each(tmp_path):
    entry = "cifar10-mobilenet_v2/size-0.1"
    short = [_row("td3-twolevel", s, 0.797, entry=entry) for s in (100, 101, 102)]
    long = [_row("td3-twolevel", s, 0.811, entry=entry) for s in (100, 101, 102)]
    for row in long:
        row.finetune_epochs, row.finetune_samples = 4, None
    _write_board(tmp_path / "a", short)
    _write_board(tmp_path / "b", long)
    board = Board.read([tmp_path / "a", tmp_path / "b"])  # same (entry, agent, seed), other budget: not a clash
    assert board.budgets(entry) == [(2, 10_000), (4, None)]
    rows = within_one_point_rows(board, entry, "10x")
    assert len(rows) == 2
    assert "(-0.30 pt, within 1 pt) after 2 epochs x 10000 samples" in rows[0].measured
    assert "(+1.10 pt, within 1 pt) after 4 epochs x all samples" in rows[1].measured
    assert rows[0].command.endswith(f"--out {tmp_path / 'a'}")  # the suite's own budget: no options
    assert rows[1].command.endswith(f"--out {tmp_path / 'b'} --finetune-epochs 4 --finetune-samples 0")
    with pytest.raises(ValueError, match="several fine-tune budgets"):
        within_one_point(board, entry, "10x")  # never a mean over two budgets
    tables = "\n".join(held_out_tables(board))
    assert tables.count(f"### {entry}: held-out seeds 100, 101, 102") == 2
    assert "Equal fine-tune: 4 epoch(s) x the train split" in tables
    with pytest.raises(ValueError, match=r"\(4 epochs x all samples\) is in both"):
        Board.read([tmp_path / "b", tmp_path / "b"])


def test_claims_quoting_one_folder_print_its_one_command(tmp_path):
    """Two entries and four agents made by one command into one --out: every claim and table of that folder prints
    that command (per-entry commands with one --out would collide: the second stops with "pass --resume")."""
    bitops = "cifar10-mobilenet_v2/bitops-0.03"
    runs = [_row(a, s, 0.80, entry=e) for e in (ENTRY, bitops) for a in ("td3-twolevel", "two-step", "heuristic")
            for s in (100, 101, 102)]
    _write_board(tmp_path / "a", runs)
    board = Board.read([tmp_path / "a"])
    commands = {r.command for r in joint_vs_two_step_rows(board)}
    commands |= {line.strip("`") for line in held_out_tables(board) if line.startswith("`python")}
    assert commands == {f"python -m benchmarks.leaderboard --suite cifar10 --entries {ENTRY} {bitops} --agents "
                        f"td3-twolevel two-step heuristic --seeds held-out --workers 2 --threads 1 --out {tmp_path / 'a'}"}
    # an entry no folder holds: its own entry and agents, into the default folder
    assert board.command("cifar10-resnet20/size-0.125", "td3-twolevel").endswith(
        "--entries cifar10-resnet20/size-0.125 --agents td3-twolevel --seeds held-out --workers 2 --threads 1 "
        "--out runs/leaderboard")

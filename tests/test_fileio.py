"""Every reader of a user-supplied JSON or CSV file refuses deeply nested JSON and reads long CSV fields: a clear
``ValueError`` (or the reader's own error type) naming the file, never a ``RecursionError`` / ``csv.Error``
traceback."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest

from agents.checkpoint import CheckpointError, check_csv_prefix, read_json
from ajpq_env.compression.packed import MAGIC, read_header
from ajpq_env.deploy.resolve import load_recipe
from ajpq_env.fileio import atomic_write, csv_dicts, csv_fields, loads_json
from ajpq_env.records import EpisodeRecord, RecordWriter, read_records
from benchmarks.leaderboard.rows import COLUMNS, LeaderboardRow, read_rows

DEEP = "[" * 100_000  # 100 kB: past the parser's recursion limit, far below every file size limit
LONG = 300_000  # characters: past the csv module's default field size limit (131,072)


def record(episode: int, recipe: dict) -> EpisodeRecord:
    return EpisodeRecord(env_id="synthetic", task="t", mode="joint", resource="size", target=0.125, agent="random",
                         seed=0, episode=episode, metric=0.5, reward=0.5, recipe=recipe)


def test_loads_json_turns_deep_nesting_into_a_decode_error():
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        loads_json(DEEP)
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        loads_json(DEEP.encode())
    assert loads_json(b'{"a": [[1]]}') == {"a": [[1]]}


def test_csv_helpers_read_long_fields_and_name_the_line_of_a_bad_one():
    assert csv_fields(f'a,"{"x" * LONG}",c') == ["a", "x" * LONG, "c"]
    previous = csv.field_size_limit(10)  # a field longer than the limit in force is a ValueError naming the line
    try:
        with pytest.raises(ValueError, match="not a CSV line"):
            csv_fields("a," + "x" * 20)
        with pytest.raises(ValueError, match="line 2: not a CSV row"):
            list(csv_dicts(csv.DictReader(["h", "x" * 20])))
    finally:
        csv.field_size_limit(previous)


def test_an_episodes_csv_with_a_long_recipe_reads_back_and_resumes(tmp_path: Path):
    # one bit-width per channel: a large model's recipe is longer than the csv module's default field limit
    recipe = {"format": "ajpq-recipe", "layers": {f"layer{i}": [4] * 1000 for i in range(100)}}
    with RecordWriter(tmp_path / "episodes.csv") as writer:
        for episode in range(2):
            writer.write(record(episode, recipe))
    assert len(json.dumps(recipe, separators=(",", ":"))) > 131_072  # the default limit of the csv module
    assert [r.recipe for r in read_records(tmp_path / "episodes.csv")] == [recipe, recipe]
    assert len(check_csv_prefix(tmp_path / "episodes.csv", 2)) == 2


def test_an_episodes_csv_with_a_deep_recipe_is_named_not_a_traceback(tmp_path: Path):
    with RecordWriter(tmp_path / "episodes.csv") as writer:
        writer.write(record(0, {}))
    text = (tmp_path / "episodes.csv").read_text().replace(',{},{}', f',"{DEEP}",{{}}', 1)
    (tmp_path / "episodes.csv").write_text(text)
    with pytest.raises(ValueError, match="line 2: .*nested too deeply"):
        list(read_records(tmp_path / "episodes.csv"))
    with pytest.raises(CheckpointError, match="line 2: not an episode record"):
        check_csv_prefix(tmp_path / "episodes.csv", 1)


def test_run_files_recipes_and_artefact_headers_refuse_deep_json(tmp_path: Path):
    path = tmp_path / "checkpoint.json"
    path.write_text(DEEP)
    with pytest.raises(CheckpointError, match="corrupt checkpoint manifest .*nested too deeply"):
        read_json(path, "checkpoint manifest")
    path = tmp_path / "best_recipe.json"
    path.write_text(DEEP)
    with pytest.raises(ValueError, match="is not a JSON recipe: nested too deeply"):
        load_recipe(path)
    header = DEEP.encode()
    path = tmp_path / "model.ajpq"
    path.write_bytes(MAGIC + struct.pack("<I", len(header)) + header + b"\0" * 16)
    with pytest.raises(ValueError, match="corrupt header .*nested too deeply"):
        read_header(path)


def test_leaderboard_rows_refuse_deep_json_and_read_long_fields(tmp_path: Path):
    path = tmp_path / "leaderboard.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        row = LeaderboardRow(entry="e/size-0.5", env_id="synthetic", task="t", mode="joint", resource="size", target=0.5,
                             agent="a", seed=0, seed_set="held-out", episode_budget=10, episodes=10, best_episode=None,
                             metric=0.5, fp32_metric=0.9, size_ratio=0.4, macs_ratio=0.5, bitops_ratio=0.1, reward=0.5,
                             walltime=1.0, validated=False, validation="none").to_row()
        writer.writerow({**row, "curve": DEEP})  # valid but for the nesting
    with pytest.raises(ValueError, match="leaderboard.csv', line 2: unreadable row .*nested too deeply"):
        read_rows(path)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerow([*COLUMNS[:-1], COLUMNS[-1] + "x" * LONG])
    with pytest.raises(ValueError, match="lacks the columns"):  # a long header field is read, then found wrong
        read_rows(path)


def test_atomic_write_replaces_whole_or_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = atomic_write(tmp_path / "a.json", "old")
    atomic_write(path, b"new")
    assert path.read_text() == "new"
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "folder", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "folder"]

    def half_then_fail(f):  # noqa: ANN001, ANN202 (a streaming writer that fails part-way)
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "folder"]
    atomic_write(path, lambda f: f.write(b"streamed"))
    assert path.read_text() == "streamed"


def test_a_recipe_and_a_truncated_episodes_csv_are_written_whole_or_not_at_all(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    from agents.checkpoint import truncate_rows
    from ajpq_env.compression import Policy

    recipe = tmp_path / "recipe.json"
    Policy({"conv": [8, 0, 4]}).save(recipe)
    episodes = tmp_path / "episodes.csv"
    with RecordWriter(episodes) as writer:
        for e in range(3):
            writer.write(record(e, {"conv": [8, 0, 4]}))
    before = {p.name: p.read_bytes() for p in (recipe, episodes)}

    def disk_full(self: Path, data, *args, **kwargs):  # noqa: ANN001, ANN202
        with open(self, "wb") as f:
            f.write(b"{")  # a partial write, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        Policy({"conv": [2, 2, 2]}).save(recipe)
    with pytest.raises(OSError, match="No space"):
        truncate_rows(episodes, 1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old contents kept, no temporary left
    monkeypatch.undo()
    truncate_rows(episodes, 1)
    assert len(list(read_records(episodes))) == 1

"""Issue 10, items 1, 2 and 4: ``ajpq search`` loses no data, runs no code from a checkpoint, and has no dead end.

Tiny synthetic env (``--env synthetic``); every refusal is checked to leave the run folder byte for byte as it was.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.checkpoint import MANIFEST, RUN_MARKER, CheckpointError
from agents.search import main as search_main
from agents.search import parse_args, run_search

TINY = ["--env", "synthetic", "--no-progress"]
MLP = ["--hyperparams", "policy_kwargs=dict(net_arch=[16])", "batch_size=16"]


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "episodes.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "walltime"} for row in csv.DictReader(f)]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def copy_run(source: Path, target: Path, options: list[str]) -> list[str]:
    shutil.copytree(source, target)
    return [str(target) if o == str(source) else o for o in options]


def interrupt_at(episode: int):
    def callback(record) -> None:
        if record.episode == episode:
            raise KeyboardInterrupt

    return callback


def resign(out: Path) -> None:
    """Recompute the manifest's checksums after a deliberate change (what an attacker could do too)."""
    manifest = json.loads((out / MANIFEST).read_text())
    directory = out / manifest["directory"]
    manifest["files"] = {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(directory.rglob("*")) if p.is_file()}
    (out / MANIFEST).write_text(json.dumps(manifest))


class Poison:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for any code a hostile file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def td3_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A td3 run stopped after 5 episodes with its checkpoint at 3."""
    out = tmp_path_factory.mktemp("td3") / "run"
    options = [*TINY, *MLP, "--algo", "td3", "--episodes", "6", "--warmup-episodes", "1", "--checkpoint-every", "3",
               "--out", str(out)]
    run_search(parse_args(options), on_episode=interrupt_at(4))
    return out, options


# ---------------------------------------------------------------------- item 1: no data loss
def test_a_foreign_folder_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "checkpoints" / "other").mkdir(parents=True)
    (out / "checkpoints" / "other" / "weights.bin").write_bytes(b"precious")
    (out / "best_recipe.json").write_text('{"mine": true}')
    before = snapshot(out)
    assert search_main([*TINY, "--algo", "random", "--episodes", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "not a run folder" in err and str(out) in err
    assert snapshot(out) == before


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert search_main([*TINY, "--algo", "random", "--episodes", "1", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "x"


def test_checkpointing_only_removes_its_own_checkpoint_folders(tmp_path):
    out = tmp_path / "run"
    options = [*TINY, "--algo", "random", "--checkpoint-every", "1", "--out", str(out)]
    run_search(parse_args([*options, "--episodes", "2"]))
    (out / "checkpoints" / "notes").mkdir()
    (out / "checkpoints" / "notes" / "keep.txt").write_text("keep")
    run_search(parse_args([*options, "--episodes", "4", "--resume"]))
    assert (out / "checkpoints" / "notes" / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ep-000004", "notes"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: m.update(best={"episode": "x"}), "'best' must be an episode record row"),
        (lambda m: m.update(best=m["best"] | {"recipe": "{not json"}), "'best' is not a valid record"),
        (lambda m: m.update(directory="../../elsewhere"), "'directory' must be 'checkpoints/ep-000003'"),
        (lambda m: m.update(directory="/etc"), "'directory' must be"),
        (lambda m: m.update(episodes="3"), "'episodes' must be an int"),
        (lambda m: m.update(walltime=float("nan")), "'walltime' must be a finite number"),
        (lambda m: m.update(files={}), "'files' must map every checkpoint file"),
        (lambda m: m["files"].update({"../escape": "0" * 64}), "bad file entry '../escape'"),
        (lambda m: m["files"].update({"agent/agent.json": "0" * 64}), "does not match its SHA-256"),
        (lambda m: m["files"].pop("rng.json"), "files not in the manifest ['rng.json']"),
        (lambda m: m.update(format="ajpq-search-checkpoint/1"), "older checkpoints held pickled state"),
    ],
    ids=["best-fields", "best-recipe", "directory-up", "directory-absolute", "episodes-type", "walltime-nan",
         "no-files", "file-escape", "checksum", "unlisted-file", "old-format"],
)
def test_a_bad_manifest_is_refused_before_anything_is_written(td3_run, tmp_path, damage, message, capsys):
    out = tmp_path / "copy"
    options = copy_run(td3_run[0], out, td3_run[1])
    manifest = json.loads((out / MANIFEST).read_text())
    damage(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))
    before = snapshot(out)
    assert len(rows(out)) == 5  # two rows past the checkpoint, which a successful resume would drop
    assert search_main([*options, "--resume"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert snapshot(out) == before


@pytest.mark.parametrize("what", ["missing-file", "symlink", "extra-file", "csv-short", "csv-header", "best-row"])
def test_a_damaged_run_folder_is_refused_before_anything_is_written(td3_run, tmp_path, what, capsys):
    out = tmp_path / "copy"
    options = copy_run(td3_run[0], out, td3_run[1])
    directory = out / json.loads((out / MANIFEST).read_text())["directory"]
    if what == "missing-file":
        (directory / "rng.json").unlink()
    elif what == "symlink":
        (directory / "rng.json").unlink()
        (directory / "rng.json").symlink_to(tmp_path / "anywhere.json")
    elif what == "extra-file":
        (directory / "agent" / "replay_buffer.pkl").write_bytes(b"\x80")
    elif what == "csv-short":
        lines = (out / "episodes.csv").read_bytes().split(b"\r\n")
        (out / "episodes.csv").write_bytes(b"\r\n".join(lines[:3]) + b"\r\n")
    elif what == "csv-header":
        data = (out / "episodes.csv").read_bytes()
        (out / "episodes.csv").write_bytes(b"a,b,c" + data[data.index(b"\r\n"):])
    elif what == "best-row":
        manifest = json.loads((out / MANIFEST).read_text())
        manifest["best"]["metric"] = "0.999"
        (out / MANIFEST).write_text(json.dumps(manifest))
    before = snapshot(out)
    assert search_main([*options, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "ajpq search: error:" in err and "Traceback" not in err
    assert snapshot(out) == before


# ---------------------------------------------------------------------- item 2: no code from files
def test_checkpoints_hold_no_pickle(td3_run):
    out = td3_run[0]
    directory = out / json.loads((out / MANIFEST).read_text())["directory"]
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    assert names == ["agent/agent.json", "agent/parameters.pt", "agent/replay_buffer.npz", "agent/sb3_state.json",
                     "rng.json"]
    torch.load(directory / "agent" / "parameters.pt", weights_only=True)  # plain tensors and containers only
    with np.load(directory / "agent" / "replay_buffer.npz", allow_pickle=False) as archive:
        assert "observations/layer" in archive.files


@pytest.mark.parametrize("where", ["parameters", "replay-buffer", "extra-pickle"])
def test_a_poisoned_checkpoint_runs_no_code(td3_run, tmp_path, where, capsys):
    """Even with the manifest's checksums recomputed (anyone can), a poisoned file runs nothing and is refused."""
    out = tmp_path / "copy"
    options = copy_run(td3_run[0], out, td3_run[1])
    marker = tmp_path / "pwned"
    directory = out / json.loads((out / MANIFEST).read_text())["directory"]
    if where == "parameters":
        torch.save({"parameters": Poison(marker), "variables": {}}, directory / "agent" / "parameters.pt")
    elif where == "replay-buffer":  # the right arrays, but the actions are pickled objects
        with np.load(directory / "agent" / "replay_buffer.npz") as archive:
            arrays = {name: archive[name] for name in archive.files}
        arrays["actions"] = np.array([Poison(marker)] * len(arrays["actions"]), dtype=object)
        np.savez(directory / "agent" / "replay_buffer.npz", **arrays)
    else:  # a file the loader never reads, listed in the manifest
        (directory / "agent" / "replay_buffer.pkl").write_bytes(pickle.dumps(Poison(marker)))
    resign(out)
    code = search_main([*options, "--resume"])
    assert not marker.exists()
    if where != "extra-pickle":
        assert code == 2 and "corrupt checkpoint" in capsys.readouterr().err
    else:
        assert code == 0


# ---------------------------------------------------------------------- item 4: no dead ends
def test_a_run_stopped_before_its_first_checkpoint_resumes_from_zero(tmp_path, capsys):
    options = [*TINY, "--algo", "random", "--episodes", "4", "--checkpoint-every", "10"]
    whole = tmp_path / "whole"
    run_search(parse_args([*options, "--out", str(whole)]))
    out = tmp_path / "cut"
    cut = run_search(parse_args([*options, "--out", str(out)]), on_episode=interrupt_at(1))
    assert cut.interrupted and (out / RUN_MARKER).is_file() and not (out / MANIFEST).exists()
    assert len(rows(out)) == 2
    with open(out / "episodes.csv", "ab") as f:  # and a row half written when the process was killed
        f.write(b"synthetic,3,joint")
    assert search_main([*options, "--out", str(out)]) == 2
    assert "already holds a search; pass --resume" in capsys.readouterr().err
    # the marker records the versions the run was made with; other versions do not refuse a resume (only options do)
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["versions"]["torch"] == importlib.metadata.version("torch") and "stable-baselines3" in marker["versions"]
    assert marker["machine"]["cpus"] == os.cpu_count() and marker["machine"]["cpu"]
    assert marker["machine"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    marker["versions"]["torch"] = "0.0.1"
    marker["machine"] = {"cpu": "another processor"}  # nor does another machine
    (out / RUN_MARKER).write_text(json.dumps(marker))
    assert search_main([*options, "--out", str(out), "--resume"]) == 0
    assert rows(out) == rows(whole)


def test_ctrl_c_before_the_first_episode_exits_130_and_resume_starts_over(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    options = [*TINY, "--algo", "random", "--episodes", "2", "--out", str(out)]

    import agents.search as search

    def interrupted_run(self, hooks):  # Ctrl-C as the first episode starts, after the run folder was made
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(search.SearchAgent, "run", interrupted_run)
        assert search_main(options) == 130
    err = capsys.readouterr()
    assert "--resume" in err.out + err.err
    assert search_main([*options, "--resume"]) == 0
    assert [r["episode"] for r in rows(out)] == ["0", "1"]


def test_resume_with_another_episode_budget_keeps_the_first_schedule(tmp_path, capsys):
    """The default warm-up depends on --episodes (min(5, episodes // 5)); a resume keeps the first session's."""
    base = [*TINY, *MLP, "gradient_steps=2", "--algo", "td3", "--checkpoint-every", "2"]
    whole = tmp_path / "whole"
    run_search(parse_args([*base, "--episodes", "5", "--out", str(whole)]))  # warm-up 1
    out = tmp_path / "cut"
    run_search(parse_args([*base, "--episodes", "5", "--out", str(out)]), on_episode=interrupt_at(3))
    assert search_main([*base, "--episodes", "20", "--out", str(out), "--resume", "--warmup-episodes", "4"]) == 2
    assert "--warmup-episodes: checkpoint 1, now 4" in capsys.readouterr().err
    outcome = run_search(parse_args([*base, "--episodes", "10", "--out", str(out), "--resume"]))  # would be 2
    assert outcome.episodes == 10
    assert rows(out)[:5] == rows(whole)


def test_resume_compares_resolved_values(tmp_path):
    out = tmp_path / "run"
    options = [*TINY, "--algo", "random", "--episodes", "2", "--out", str(out)]
    run_search(parse_args([*options, "--env-kwargs", '{"num_buckets": 4}']))
    # explicit values equal to the stored defaults, other JSON spelling, an alias: all the same run
    outcome = run_search(parse_args([*options, "--episodes", "3", "--resume", "--target", "0.125", "--resource",
                                     "size", "--env-kwargs", '{ "num_buckets" : 4 }']))
    assert outcome.episodes == 3
    with pytest.raises(CheckpointError, match="--target: checkpoint 0.125, now 0.25"):
        run_search(parse_args([*options, "--episodes", "4", "--resume", "--target", "0.25",
                               "--env-kwargs", '{"num_buckets": 4}']))


def test_two_step_refuses_another_budget_on_resume(tmp_path):
    out = tmp_path / "run"
    options = [*TINY, "--algo", "two-step", "--stage-algo", "random", "--out", str(out)]
    run_search(parse_args([*options, "--episodes", "2"]))
    with pytest.raises(CheckpointError, match="resume it with that budget"):
        run_search(parse_args([*options, "--episodes", "4", "--resume"]))


def test_unwritable_out_is_refused_before_loading(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert search_main([*TINY, "--algo", "random", "--episodes", "1", "--out", str(parent / "run")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        parent.chmod(0o700)

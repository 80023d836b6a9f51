"""``ajpq search``: the CLI, its run directory, checkpoints and resume (tiny synthetic env: ``--env synthetic``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from agents.checkpoint import CheckpointError
from agents.search import SearchConfig, parse_args, run_search
from agents.search import main as search_main
from ajpq_env.cli import main as cli_main
from ajpq_env.compression import Policy
from ajpq_env.records import read_records

torch.set_num_threads(1)

TINY = ["--env", "synthetic", "--no-progress"]
TWO_LEVEL = ["--hyperparams", "policy_kwargs=dict(net_arch=[32, 32], layer_arch=[32], channel_arch=[16])", "batch_size=16"]
MLP = ["--hyperparams", "policy_kwargs=dict(net_arch=[16])", "batch_size=16"]


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "episodes.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "walltime"} for row in csv.DictReader(f)]


def interrupt_at(episode: int):
    def callback(record) -> None:
        if record.episode == episode:
            raise KeyboardInterrupt

    return callback


def test_cli_search_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["search", *TINY, "--algo", "random", "--episodes", "3", "--out", str(out), "--seed", "1"])
    assert code == 0
    records = list(read_records(out / "episodes.csv"))
    assert [r.episode for r in records] == [0, 1, 2] and {r.agent for r in records} == {"random"}
    best = max(records, key=lambda r: r.metric)
    assert Policy.load(out / "best_recipe.json") == Policy.from_dict(best.recipe)
    assert json.loads((out / "checkpoint.json").read_text())["episodes"] == 3
    assert list((out / "tb" / "search").glob("events.out.tfevents.*"))
    printed = capsys.readouterr().out
    assert "best metric" in printed and f"{best.metric:.4f}" in printed


def test_default_run_name_encodes_env_algo_seed_and_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcome = run_search(parse_args([*TINY, "--algo", "uniform", "--episodes", "1", "--seed", "7"]))
    assert outcome.out.parent == Path("runs") and outcome.out.name.startswith("synthetic__uniform__s7__20")


@pytest.mark.parametrize("algo", ["td3-twolevel", "two-step"])
def test_resume_after_interrupt_repeats_the_uninterrupted_run(tmp_path, algo):
    """An interrupted run resumed from its checkpoint ends with the same rows as a run never interrupted:
    the rows written after the checkpoint are played again, none is lost or duplicated."""
    options = [*TINY, *TWO_LEVEL, "--algo", algo, "--episodes", "8", "--warmup-episodes", "2", "--checkpoint-every", "3",
               "--guide-priors", "heuristic,uniform"]  # the guide's state crosses the checkpoint; cheap priors
    if algo == "two-step":
        options += ["--stage-algo", "ddpg-twolevel"]
    whole = run_search(parse_args([*options, "--out", str(tmp_path / "whole")]))
    assert whole.episodes == 8 and not whole.interrupted

    out = tmp_path / "cut"
    cut = run_search(parse_args([*options, "--out", str(out)]), on_episode=interrupt_at(4))
    assert cut.interrupted and len(rows(out)) == 5
    assert json.loads((out / "checkpoint.json").read_text())["episodes"] == 3
    resumed = run_search(parse_args([*options, "--out", str(out), "--resume"]))
    assert resumed.episodes == 8 and not resumed.interrupted
    assert [r["episode"] for r in rows(out)] == [str(i) for i in range(8)]
    assert rows(out) == rows(tmp_path / "whole")
    assert Policy.load(out / "best_recipe.json") == Policy.load(tmp_path / "whole" / "best_recipe.json")


def test_resume_extends_a_finished_run(tmp_path):
    out = tmp_path / "run"
    options = [*TINY, *MLP, "--algo", "ddpg", "--warmup-episodes", "1", "--out", str(out)]
    run_search(parse_args([*options, "--episodes", "3"]))
    outcome = run_search(parse_args([*options, "--episodes", "5", "--resume"]))
    assert outcome.episodes == 5 and [r["episode"] for r in rows(out)] == ["0", "1", "2", "3", "4"]


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A td3 run stopped after 5 episodes with its checkpoint at 3: rows 3 and 4 are past the checkpoint."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    options = [*TINY, *MLP, "--algo", "td3", "--episodes", "6", "--warmup-episodes", "1", "--checkpoint-every", "3",
               "--out", str(out)]
    run_search(parse_args(options), on_episode=interrupt_at(4))
    return out, options


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda out: (out / "checkpoint.json").write_text("{not json"), "corrupt checkpoint manifest"),
        (lambda out: next(out.glob("checkpoints/*/agent/parameters.pt")).write_bytes(b"garbage"), "corrupt checkpoint"),
        (lambda out: next(out.glob("checkpoints/*/rng.json")).write_bytes(b"\x80garbage"), "corrupt checkpoint"),
        (lambda out: next(out.glob("checkpoints/*/agent/agent.json")).write_text("[]"), "corrupt checkpoint"),
    ],
    ids=["manifest", "model", "rng", "agent-state"],
)
def test_corrupt_checkpoint_is_refused_and_nothing_is_touched(interrupted_run, tmp_path, damage, message):
    source, options = interrupted_run
    out = tmp_path / "copy"
    for name, data in snapshot(source).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    options = [o if o != str(source) else str(out) for o in options]
    damage(out)
    before = snapshot(out)
    assert len(rows(out)) == 5  # two rows past the checkpoint, which a successful resume would drop
    with pytest.raises(CheckpointError, match=message):
        run_search(parse_args([*options, "--resume"]))
    assert snapshot(out) == before


def test_mismatched_resume_says_what_differs_and_touches_nothing(interrupted_run, capsys):
    out, options = interrupted_run
    before = snapshot(out)
    changed = [*options, "--resume", "--algo", "ddpg", "--seed", "3"]
    assert search_main(changed) == 2
    err = capsys.readouterr().err
    assert "--algo: checkpoint 'td3', now 'ddpg'" in err and "--seed: checkpoint 0, now 3" in err
    assert snapshot(out) == before


def test_new_search_refuses_an_existing_run_and_resume_needs_a_checkpoint(interrupted_run, tmp_path):
    out, options = interrupted_run
    before = snapshot(out)
    with pytest.raises(ValueError, match="already holds a search; pass --resume"):
        run_search(parse_args(options))
    assert snapshot(out) == before
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_search(parse_args([*TINY, "--out", str(tmp_path / "empty"), "--resume"]))


def test_bad_options_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["search", "--env", "synthetic", "--algo", "td4"])
    assert exit_info.value.code == 2
    assert "unknown agent 'td4'; valid names: a2c, " in capsys.readouterr().err
    with pytest.raises(ValueError, match="--resume needs --out"):
        SearchConfig(resume=True)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        SearchConfig(hyperparams=["batch_size"])
    assert search_main(["--env", "AJPQ-Nope-v0", "--no-progress"]) == 2
    assert "registered AJPQ ids: AJPQ-MobileNet" in capsys.readouterr().err


def test_an_invalid_generator_state_of_the_right_size_is_a_checkpoint_error():
    """torch refuses some mt19937 states of the right length: found when the checkpoint is read, not at the end
    of a resume after the agent has loaded."""
    import base64

    from agents.checkpoint import _parse_rng, capture_rng

    state = capture_rng()
    _parse_rng(state)
    bad = {**state, "torch": base64.b64encode(b"\xff" * torch.get_rng_state().numel()).decode()}
    with pytest.raises(ValueError, match="torch: not a generator state"):
        _parse_rng(bad)


def test_an_out_name_too_long_for_the_file_system_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / ("a" * 300)
    assert search_main(["--env", "synthetic", "--episodes", "2", "--no-progress", "--threads", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ajpq search: error:" in err and "File name too long" in err

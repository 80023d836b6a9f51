"""The deploy subcommands end to end through the ``ajpq`` dispatcher, as a user runs them (synthetic task)."""

from __future__ import annotations

import json

import pytest

from ajpq_env import cli
from ajpq_env.compression import Policy
from ajpq_env.records import RecordWriter


@pytest.fixture(scope="module")
def run(tmp_path_factory, deploy_env, deploy_recipe, deploy_episode):
    """A run folder: three episodes in episodes.csv, the fixture recipe as best_recipe.json."""
    run = tmp_path_factory.mktemp("run")
    with RecordWriter(run / "episodes.csv") as writer:
        for episode in range(3):
            deploy_episode(deploy_env, seed=3 if episode == 1 else 10 + episode)
            writer.write(deploy_env.record(agent="random", seed=0, episode=episode))
    deploy_recipe.save(run / "best_recipe.json")
    return run


def test_search_to_report_end_to_end(run, capsys):
    assert cli.main(["finetune", "--recipe", str(run / "best_recipe.json"), "--epochs", "1", "--batch-size", "32",
                     "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "test top1" in out and f"ajpq export {run / 'finetune'}" in out
    summary = json.loads((run / "finetune" / "finetune.json").read_text())
    assert set(summary["metrics"]) == {"fp32_test", "before_test", "search", "test"}

    assert cli.main(["export", str(run / "finetune"), "--threads", "1"]) == 0
    manifest = json.loads((run / "export" / "export.json").read_text())
    assert manifest["source"]["kind"] == "finetuned" and manifest["onnx"]["format"] == "qdq"

    assert cli.main(["evaluate", str(run / "export" / "model.ajpq"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "match" in out and "onnxruntime" in out
    result = json.loads((run / "export" / "evaluate.json").read_text())
    assert result["size_matches"] and result["max_abs_diff"] <= 1e-4
    assert result["metric"] == result["onnx_metric"] == summary["metrics"]["test"]

    assert cli.main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "## Fine-tuning" in md and "## Export" in md and "Evaluated on the test split" in md


def test_export_does_not_replace_the_export_of_another_source(run, tmp_path, capsys):
    """A recipe and its fine-tuned model both export to RUN/export by default: the second is refused, not
    written over the first; the same source again, or --overwrite, replaces it (and its stale evaluate.json)."""
    out = tmp_path / "export"
    assert cli.main(["export", str(run / "best_recipe.json"), "--out", str(out), "--onnx", "none"]) == 0
    (out / "evaluate.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other.json"
    other.write_bytes((run / "best_recipe.json").read_bytes())
    assert cli.main(["export", str(other), "--out", str(out), "--onnx", "none"]) == 2
    err = capsys.readouterr().err
    assert "already holds the export of" in err and "best_recipe.json" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli.main(["export", str(run), "--out", str(out), "--onnx", "none"]) == 0  # the same recipe, named by its run
    assert not (out / "evaluate.json").exists()
    assert cli.main(["export", str(other), "--out", str(out), "--onnx", "none", "--overwrite"]) == 0
    assert json.loads((out / "export.json").read_text())["source"]["path"] == str(other)

    (out / "model.onnx").mkdir()  # a folder where a file goes is refused before anything is written
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli.main(["export", str(other), "--out", str(out)]) == 2
    assert "model.onnx there is not a regular file" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_export_a_recipe_without_fine_tuning(run, deploy_env, deploy_recipe, tmp_path, capsys):
    assert cli.main(["export", str(run / "best_recipe.json"), "--out", str(tmp_path), "--onnx", "fp32"]) == 0
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["metrics"]["search"] == deploy_env.apply(deploy_recipe)["metric"]
    assert cli.main(["evaluate", str(tmp_path / "model.ajpq"), "--split", "search", "--json",
                     str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["metric"] == manifest["metrics"]["search"]


def test_a_recipe_for_another_task_is_refused(run, deploy_task, tmp_path, capsys):
    assert cli.main(["finetune", "--recipe", str(run / "best_recipe.json"), "--task", "cifar10-resnet20"]) == 2
    err = capsys.readouterr().err
    assert "ajpq finetune: error:" in err and deploy_task.name in err and "cifar10-resnet20" in err

    foreign = Policy.from_dict(json.loads((run / "best_recipe.json").read_text()))
    foreign = Policy(dict(foreign), meta={"task": "synthetic-resnet20", "model": "resnet20"})
    foreign.save(tmp_path / "foreign.json")
    assert cli.main(["export", str(tmp_path / "foreign.json"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "synthetic-resnet20" in err and "resnet20" in err and "layer" in err
    assert not (tmp_path / "x").exists()


def test_evaluate_refuses_another_task_and_missing_files(run, tmp_path, capsys):
    if not (run / "export" / "model.ajpq").exists():
        assert cli.main(["export", str(run / "best_recipe.json"), "--onnx", "none"]) == 0
    assert cli.main(["evaluate", str(run / "export" / "model.ajpq"), "--task", "mnist5k-mobilenet_v2"]) == 2
    err = capsys.readouterr().err
    assert "mnist5k-mobilenet_v2" in err and "synthetic-mobilenet_v2" in err
    artefact = (run / "export" / "model.ajpq").read_bytes()
    assert cli.main(["evaluate", str(run / "export" / "model.ajpq"), "--json", str(run / "export" / "model.ajpq")]) == 2
    assert "does not end in .json" in capsys.readouterr().err
    assert (run / "export" / "model.ajpq").read_bytes() == artefact  # the artefact was not overwritten
    assert cli.main(["evaluate", str(tmp_path / "nothing.ajpq")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["finetune", "--recipe", str(tmp_path / "nothing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # a device is named as such, and never read
    assert cli.main(["finetune", "--recipe", str(tmp_path / "zero.json")]) == 2
    assert "is not a regular file" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "episodes.csv" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["finetune", "export", "evaluate", "report"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: ajpq {command}" in capsys.readouterr().out


@pytest.mark.slow
def test_embedded_task_end_to_end(tmp_path, deploy_episode, capsys):
    """The real embedded default task (packaged weights): fine-tuning recovers accuracy, runtimes agree."""
    from ajpq_env import AJPQEnv

    env = AJPQEnv("mnist5k-mobilenet_v2")
    recipe = deploy_episode(env, seed=0)
    recipe.save(tmp_path / "best_recipe.json")
    assert cli.main(["finetune", "--recipe", str(tmp_path), "--epochs", "1", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "finetune" / "finetune.json").read_text())["metrics"]
    assert metrics["test"] > metrics["before_test"] and metrics["test"] > 0.5
    assert cli.main(["export", str(tmp_path / "finetune")]) == 0
    assert cli.main(["evaluate", str(tmp_path / "export" / "model.ajpq")]) == 0
    result = json.loads((tmp_path / "export" / "evaluate.json").read_text())
    assert result["size_matches"] and result["metric"] == result["onnx_metric"] == metrics["test"]
    assert result["max_abs_diff"] <= 1e-4

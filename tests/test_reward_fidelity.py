"""benchmarks/reward_fidelity.py: setting names, balanced search subsets, and a tiny resumable run on the synthetic
task (recipes within budget, one table row per setting, nothing recomputed on a re-run)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks import reward_fidelity as rf


# ---------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("text", "name", "fields"),
    [
        ("default", "default", {"bn_calibration_batches": 1, "finetune_steps": 0, "search_size": None}),
        ("bn8x64", "bn8x64", {"bn_calibration_batches": 8, "calibration_batch_size": 64}),
        ("split2000+qat50@0.01", "qat50@0.01+split2000", {"finetune_steps": 50, "finetune_lr": 0.01,
                                                           "search_size": 2000}),
        ("bn1x64+qat25@2e-2", "qat25@0.02", {"finetune_steps": 25, "finetune_lr": 0.02}),
    ],
)
def test_settings_parse_to_canonical_names(text, name, fields):
    setting = rf.RewardSetting.parse(text)
    assert setting.name == name
    assert {k: getattr(setting, k) for k in fields} == fields
    assert rf.RewardSetting.parse(setting.name) == setting
    assert setting.full_split.search_size is None
    assert setting.env_kwargs()["finetune_steps"] == setting.finetune_steps


@pytest.mark.parametrize("text", ["qat", "bn8", "split0", "qat5@0", "split10+split20", "fast"])
def test_bad_settings_are_refused_by_name(text):
    with pytest.raises(ValueError, match="setting"):
        rf.RewardSetting.parse(text)
    with pytest.raises(SystemExit):
        rf.parse_args(["--settings", text])


# ---------------------------------------------------------------------------------------------- subsets
def test_search_subset_replaces_only_the_search_split(deploy_task):
    subset = rf.with_search_subset(deploy_task, 16)
    assert len(subset.splits["search"]) == 16
    assert subset.splits["train"] is deploy_task.splits["train"] and subset.model is deploy_task.model
    from ajpq_env.tasks.data import balanced_subset

    labels = deploy_task.splits["search"].labels.numpy()
    assert subset.splits["search"].labels.tolist() == labels[balanced_subset(labels, 16)].tolist()
    assert rf.with_search_subset(deploy_task, None) is deploy_task
    assert rf.with_search_subset(deploy_task, 10**6) is deploy_task


def test_rank_correlations():
    rho, tau = rf.rank_correlations([1, 2, 3, 4], [10, 20, 30, 40])
    assert rho == pytest.approx(1.0) and tau == pytest.approx(1.0)
    rho, tau = rf.rank_correlations([1, 2, 3, 4], [4, 3, 2, 1])
    assert rho == pytest.approx(-1.0) and tau == pytest.approx(-1.0)
    assert np.isnan(rf.rank_correlations([1, 1, 1], [1, 2, 3])[0])
    low, high = rf.spearman_interval(0.8, 24)
    assert low < 0.8 < high < 1.0


# ---------------------------------------------------------------------------------------------- a tiny run
TINY = ["--task", "synthetic-mobilenet_v2", "--target", "0.25", "--baselines", "uniform", "--random-recipes", "1",
        "--prune-recipes", "1", "--quant-recipes", "1", "--settings", "default", "qat2@0.01+split32", "qat2@0.01",
        "--finetune-epochs", "1", "--finetune-samples", "16", "--timing-recipes", "1", "--threads", "1"]


@pytest.mark.slow
def test_tiny_run_writes_tables_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "fidelity"
    # measuring alone (as a second process beside the fine-tunes would): the table has no fine-tuned targets yet
    early = rf.main([*TINY, "--out", str(out), "--phases", "search"])
    assert [r["n"] for r in early] == [0, 0, 0] and not (out / "finetune").exists()
    rows = rf.main([*TINY, "--out", str(out)])

    index = json.loads((out / "recipes.json").read_text())
    names = [r["name"] for r in index["recipes"]]
    assert len(names) >= 4 and len(set(r["digest"] for r in index["recipes"])) == len(names)
    assert {"uniform", "random", "prune-mode", "quant-mode"} <= {r["family"] for r in index["recipes"]}
    from ajpq_env.deploy.resolve import load_recipe

    for name in names:  # every recipe is an ordinary recipe file within the budget
        policy = load_recipe(out / "recipes" / f"{name}.json")
        assert policy.meta["task"] == "synthetic-mobilenet_v2"
    assert all(r["info"]["size_ratio"] <= 0.25 for r in index["recipes"])
    assert len(list((out / "finetune").glob("*.json"))) == len(names)

    assert [r["setting"] for r in rows] == ["default", "qat2@0.01+split32", "qat2@0.01"]
    assert all(r["n"] == len(names) for r in rows)
    assert all(-1.0 <= r["spearman"] <= 1.0 or np.isnan(r["spearman"]) for r in rows)
    assert np.isnan(rows[0]["spearman_vs_full_split"]) and not np.isnan(rows[1]["spearman_vs_full_split"])
    with (out / "search.csv").open() as f:
        measured = list(csv.DictReader(f))
    assert len(measured) == 3 * len(names)
    assert {int(r["search_samples"]) for r in measured if r["setting"] == "qat2@0.01+split32"} == {32}
    assert all(r["budget_met"] == "True" for r in measured)
    with (out / "timing.csv").open() as f:
        timed = list(csv.DictReader(f))
    assert [r["setting"] for r in timed] == ["default", "qat2@0.01+split32", "qat2@0.01"]
    assert all(float(r["fp32_passes"]) > 0 for r in timed)
    assert [r["fp32_passes"] for r in rows] == pytest.approx([float(r["fp32_passes"]) for r in timed])
    table = (out / "fidelity.md").read_text()
    assert "| qat2@0.01+split32 |" in table and all(f"| {n} |" in table for n in names)

    # a re-run measures and fine-tunes nothing again, and reports the same table
    import ajpq_env.deploy

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run recomputed a cached result")

    monkeypatch.setattr(ajpq_env.deploy, "finetune", refuse)
    monkeypatch.setattr(rf.AJPQEnv, "apply", refuse)
    again = rf.main([*TINY, "--out", str(out)])
    assert [r["spearman"] for r in again] == pytest.approx([r["spearman"] for r in rows], nan_ok=True)

    with pytest.raises(SystemExit, match="recipes.json was made with"):
        rf.main([*TINY, "--out", str(out), "--random-recipes", "2"])


# ---------------------------------------------------------------------------------------------- leaderboard recipes
def test_leaderboard_rows_join_with_their_finetuned_test_metric(tmp_path, deploy_env):
    from ajpq_env.compression import Policy
    from benchmarks.leaderboard.rows import COLUMNS, LeaderboardRow

    policy = Policy.random(deploy_env.graph, np.random.default_rng(0), max_sparsity=0.5)
    task = deploy_env.task.name

    def row(agent, seed, test, **over):
        fields = dict(entry="e", env_id="synthetic", task=task, mode="joint", resource="size", target=0.125,
                      agent=agent, seed=seed, seed_set="held-out", episode_budget=4, episodes=4, best_episode=1,
                      metric=0.5, fp32_metric=0.6, size_ratio=0.12, macs_ratio=0.7, bitops_ratio=0.03, reward=0.0,
                      walltime=1.0, validated=True, validation="OK", finetune_epochs=2, finetune_samples=10_000,
                      test_metric=test, recipe=policy.to_dict())
        return LeaderboardRow(**{**fields, **over}).to_row()

    path = tmp_path / "leaderboard.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerow(row("td3-twolevel", 100, 0.7))
        writer.writerow(row("two-step", 100, float("nan")))  # no fine-tune: left out
        writer.writerow(row("uniform", 100, 0.6, finetune_epochs=1))  # another fine-tune budget: left out
        writer.writerow(row("heuristic", 100, 0.6, target=0.25))  # another budget: left out
    config = rf.Config(task=task, target=0.125, leaderboard=path)
    recipes, targets = rf.leaderboard_recipes(config)
    assert [r.name for r in recipes] == ["lb-td3-twolevel-s100"] and targets == {"lb-td3-twolevel-s100": 0.7}
    assert recipes[0].policy == policy and recipes[0].family == "leaderboard"
    assert recipes[0].info["pruned_fraction"] == pytest.approx(
        np.mean(np.concatenate([policy[n] for n in policy]) == 0))
    with pytest.raises(SystemExit):
        rf.parse_args(["--leaderboard", str(tmp_path / "missing.csv")])

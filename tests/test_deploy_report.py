"""``ajpq report``: Pareto front, plots and Markdown of a search run (ajpq_env.deploy.report)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from ajpq_env.deploy import pareto_front, write_report
from ajpq_env.deploy.report import layer_rows
from ajpq_env.deploy.resolve import Architecture
from ajpq_env.records import RecordWriter


def test_pareto_front_by_hand():
    sizes = np.array([0.10, 0.12, 0.08, 0.12, 0.20, 0.10])
    metrics = np.array([0.50, 0.70, 0.40, 0.60, 0.70, 0.55])
    # 0.08/0.40, 0.10/0.55 (beats 0.10/0.50), 0.12/0.70 (ties 0.20/0.70 on metric, smaller)
    assert pareto_front(sizes, metrics).tolist() == [2, 5, 1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=40))
def test_pareto_front_is_exactly_the_undominated_points(points):
    sizes, metrics = (np.array(v) for v in zip(*points))
    front = set(pareto_front(sizes, metrics).tolist())

    def dominated(i):
        return any(sizes[j] <= sizes[i] and metrics[j] >= metrics[i]
                   and (sizes[j], metrics[j]) != (sizes[i], metrics[i]) for j in range(len(sizes)))

    for i in range(len(sizes)):
        if dominated(i):
            assert i not in front
    # one representative of every undominated (size, metric) pair
    undominated = {(sizes[i], metrics[i]) for i in range(len(sizes)) if not dominated(i)}
    assert {(sizes[i], metrics[i]) for i in front} == undominated and len(front) == len(undominated)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, deploy_env, deploy_episode):
    """A run folder as a search leaves it: 12 env episodes in episodes.csv and the best one's recipe."""
    run = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with RecordWriter(run / "episodes.csv") as writer:
            records = []
            for episode in range(12):
                deploy_episode(deploy_env, seed=100 + episode)
                records.append(deploy_env.record(env_id="", agent="random", seed=0, episode=episode))
                writer.write(records[-1])
    finally:
        torch.set_num_threads(threads)
    best = max(records, key=lambda r: r.metric)
    (run / "best_recipe.json").write_text(json.dumps(best.recipe))
    return run, best


def test_report_writes_markdown_and_images(run_dir):
    run, best = run_dir
    md_path = write_report(run)
    out = md_path.parent
    assert out == run / "report"
    for name in ("search.png", "layers.png"):
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05, f"{name} is blank"
    md = md_path.read_text()
    assert "![metric vs size](search.png)" in md and "![per-layer sparsity and bits](layers.png)" in md
    assert f"| {best.episode} (best) |" in md, "the best recipe must be marked on the Pareto table"
    layer_lines = [line for line in md.splitlines() if line.startswith("| ") and "`" in line and "|---" not in line]
    assert len(layer_lines) >= len(best.recipe["layers"])


def test_report_includes_deploy_results(run_dir, tmp_path):
    run, _ = run_dir
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "finetune").mkdir()
    (copy / "finetune" / "finetune.json").write_text(json.dumps(
        {"metrics": {"test": 0.9, "before_test": 0.5, "fp32_test": 0.95}, "history": [{}, {}], "seconds": 3}))
    md = write_report(copy, tmp_path / "out").read_text()
    assert "## Fine-tuning" in md and "**0.9000**" in md and "## Export" not in md


def test_layer_rows_with_architecture(deploy_task, deploy_recipe):
    rows = layer_rows(deploy_recipe, Architecture.from_task(deploy_task))
    assert [r["name"] for r in rows] == list(deploy_recipe)
    assert {r["kind"] for r in rows} == {"conv", "depthwise", "linear"}
    assert all(r["bytes"] <= r["fp32_bytes"] for r in rows)
    assert sum(r["kept"] for r in rows) == sum(deploy_recipe.kept(n) for n in deploy_recipe)
    without = layer_rows(deploy_recipe)
    assert all("bytes" not in r and r["kind"] == "?" for r in without)


def test_report_needs_episodes(tmp_path):
    with pytest.raises(FileNotFoundError, match="episodes.csv"):
        write_report(tmp_path)

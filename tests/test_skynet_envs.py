"""SkyNet in the environment: the fixed-precision mode, the SkyNet ids (the DAC-SDC ids on a DAC-SDC-layout copy
made here), and `ajpq export` / `ajpq evaluate` on a SkyNet recipe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from PIL import Image
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from ajpq_env import AJPQEnv
from ajpq_env.envs.registration import ENV_IDS, SKYNET_TASK_IDS
from ajpq_env.tasks import synthetic_task
from ajpq_env.tasks.detection import make_embedded_set

WEIGHTS = Path(os.environ.get("AJPQ_WEIGHTS", "/nonexistent"))
SKYNET_IDS = sorted(i for i in ENV_IDS if any(i.startswith(stem + "-") and ENV_IDS[i]["task"] == task
                                               for stem, task in SKYNET_TASK_IDS.items()))


@pytest.fixture(scope="module")
def sky_task():
    """SkyNet (published widths, random weights) on random 32x64 images with random boxes."""
    return synthetic_task("skynet", input_shape=(3, 32, 64), sizes=(32, 16, 16))


def _episode(env: AJPQEnv, seed: int, first_bits: float | None = None) -> dict:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    terminated, step, info = False, 0, {}
    while not terminated:
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        if step == 0 and first_bits is not None:
            action[1:] = first_bits
        _, _, terminated, _, info = env.step(action)
        step += 1
    return info


def test_every_skynet_task_has_four_modes_including_fixed():
    assert len(SKYNET_IDS) == 12
    for stem in SKYNET_TASK_IDS:
        assert {ENV_IDS[f"{stem}{s}-v0"]["mode"] for s in ("", "-Prune", "-Quant", "-Fixed")} == {
            "joint", "prune", "quant", "fixed"}
        assert ENV_IDS[f"{stem}-Fixed-v0"]["fixed_bits"] is None  # the agent chooses


@pytest.mark.parametrize("seed", range(4))
def test_fixed_mode_one_bit_width_for_the_network_and_budget_met(sky_task, seed):
    env = AJPQEnv(sky_task, mode="fixed", target=0.5, resource="macs", fixed_bits=None)
    info = _episode(env, seed)
    recipe = env.recipe()
    kept_bits = np.concatenate([b[b > 0] for b in recipe.values()])
    assert len(np.unique(kept_bits)) == 1 and kept_bits[0] == info["network_bits"]
    assert info["budget_met"] and info["macs_ratio"] <= 0.5
    assert any(np.any(b == 0) for b in recipe.values())  # pruned per layer


def test_fixed_mode_bits_set_by_the_user_or_clipped_to_the_budget(sky_task):
    env = AJPQEnv(sky_task, mode="fixed", target=0.3, resource="size", fixed_bits=6)
    info = _episode(env, 0, first_bits=1.0)  # the agent asks for 8 bits; the user's 6 win
    assert info["network_bits"] == 6 and info["budget_met"]
    # a size target that 8-bit weights cannot meet even maximally pruned (0.082 of FP32 at best): the first step
    # lowers the bits
    tight = AJPQEnv(sky_task, mode="fixed", target=0.06, resource="size", fixed_bits=None)
    env.reset(seed=0)
    tight.reset(seed=0)
    _, _, _, _, first = tight.step(np.ones(tight.action_space.shape, np.float32))
    assert first["clipped"] and first["network_bits"] < 8
    info = _episode(tight, 1, first_bits=1.0)
    assert info["budget_met"] and info["size_ratio"] <= 0.06


def test_fixed_bits_none_only_in_fixed_mode(sky_task):
    with pytest.raises(ValueError, match="only for mode='fixed'"):
        AJPQEnv(sky_task, mode="joint", target=0.3, fixed_bits=None)


def test_fixed_mode_passes_env_checkers(sky_task):
    env = AJPQEnv(sky_task, mode="fixed", target=0.5, resource="macs", fixed_bits=None)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


# ------------------------------------------------------------------------------------------------ DAC-SDC ids
def _dacsdc_copy(root: Path) -> Path:
    """A DAC-SDC-layout folder (two sub-categories of N.jpg + N.xml, 640x360 frames) made from embedded frames."""
    images, boxes = make_embedded_set("test", (64, 128), seed=5, count=24)
    for i, (image, box) in enumerate(zip(images, boxes)):
        folder = root / ("person1" if i % 2 else "car3")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((640, 360), Image.NEAREST).save(folder / f"{i}.jpg")
        x0, y0, x1, y1 = (box * [640, 360, 640, 360]).round().astype(int)
        (folder / f"{i}.xml").write_text(
            f"<annotation><size><width>640</width><height>360</height></size><object><name>x</name><bndbox>"
            f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>")
    return root


@pytest.mark.skipif(not (WEIGHTS / "skynet-dac-sdc.weights").is_file(),
                    reason="needs $AJPQ_WEIGHTS/skynet-dac-sdc.weights (the benchmark data's weights/ folder)")
@pytest.mark.parametrize("suffix", ["", "-Fixed"])
def test_dacsdc_ids_on_a_dacsdc_layout_copy(tmp_path, suffix):
    root = _dacsdc_copy(tmp_path / "dac-sdc")
    env = gym.make(f"AJPQ-SkyNet-DACSDC{suffix}-v0", data_root=str(root), calibration_batch_size=8)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    info = _episode(env.unwrapped, 0)
    assert info["budget_met"] and 0.0 <= info["metric"] <= 1.0
    env.close()


def test_dacsdc_id_without_data_says_where_to_put_it(monkeypatch):
    weights = Path(os.environ.get("AJPQ_WEIGHTS", "/nonexistent")) / "skynet-dac-sdc.weights"
    monkeypatch.delenv("AJPQ_DETECTION", raising=False)
    monkeypatch.delenv("AJPQ_WEIGHTS", raising=False)
    # the weights are resolved first: without them, the message says where they go
    with pytest.raises(FileNotFoundError, match="skynet-dac-sdc.weights.*AJPQ_WEIGHTS"):
        gym.make("AJPQ-SkyNet-DACSDC-v0")
    if not weights.is_file():
        pytest.skip("the data message needs the published weights ($AJPQ_WEIGHTS/skynet-dac-sdc.weights)")
    with pytest.raises(FileNotFoundError, match="AJPQ_DETECTION"):
        gym.make("AJPQ-SkyNet-DACSDC-v0", weights=str(weights))


# ------------------------------------------------------------------------------------------------ export
def test_export_and_evaluate_a_skynet_recipe(sky_task, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install -e '.[onnx]'")
    from ajpq_env.deploy import evaluate as evaluate_cli
    from ajpq_env.deploy import export as export_cli
    from ajpq_env.deploy.evaluate import evaluate_artefact
    from ajpq_env.deploy.resolve import load_splits

    task = synthetic_task("skynet")  # the task `ajpq export` rebuilds from the recipe's meta
    env = AJPQEnv(task, mode="fixed", target=0.5, resource="macs", fixed_bits=None)
    _episode(env, 0)
    recipe = tmp_path / "best_recipe.json"
    env.recipe().save(recipe)
    assert export_cli.main([str(recipe), "--out", str(tmp_path / "export")]) == 0
    manifest = json.loads((tmp_path / "export" / "export.json").read_text())
    artefact = tmp_path / "export" / "model.ajpq"
    result = evaluate_artefact(artefact, load_splits(task.name)["test"], onnx_path=tmp_path / "export" / "model.onnx",
                               metric="iou")
    assert result.size_matches and result.payload_bytes == manifest["cost"]["size_bytes"]
    assert result.max_abs_diff < 1e-3 and result.agreement == 1.0
    assert result.metric == pytest.approx(result.onnx_metric, abs=1e-6)
    assert evaluate_cli.main([str(artefact)]) == 0
    assert "match" in capsys.readouterr().out

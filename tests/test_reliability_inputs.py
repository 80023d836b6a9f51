"""Issue 10, items 2 (data sets), 5, 6 and 7: bad input is a clear error (exit code 2, one line naming the file or
option, checked before anything loads), never a traceback, a silent wrong result, or code run from a file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import agents.search as search
from ajpq_env import AJPQEnv, cli
from ajpq_env.records import RecordWriter
from ajpq_env.tasks import TASKS, load_splits
from ajpq_env.tasks.data import CIFAR10_CLASSES, load_cifar10

TINY = ["--env", "synthetic", "--no-progress"]


class Poison:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def no_env_loads(monkeypatch):
    """Fail the test if ``ajpq search`` builds an env: the option must be refused before that."""
    def refuse(config):
        raise AssertionError("the env was built before the bad option was refused")

    monkeypatch.setattr(search, "make_env", refuse)


# ---------------------------------------------------------------------- tiny CIFAR-10 roots
def fake_cifar(per_class_train: int, per_class_test: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Distinct images: train pixels are even, test pixels odd, so no test image equals a train image."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n, parity in (("train", per_class_train, 0), ("test", per_class_test, 1)):
        y = np.repeat(np.arange(10), n)
        x = (rng.integers(0, 128, (len(y), 32, 32, 3)) * 2 + parity).astype(np.uint8)
        out[split] = (x, y)
    return out


def write_npz_root(root: Path, data) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in data.items():
        np.savez(root / f"{split}.npz", x=x, y=y)
    return root


def write_batches_root(root: Path, data, protocol: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x, y = data["train"]
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        batch = {b"batch_label": b"training batch", b"labels": [int(v) for v in y[part]],
                 b"data": x[part].transpose(0, 3, 1, 2).reshape(len(part), -1), b"filenames": [b"a.png"] * len(part)}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = data["test"]
    test = {b"labels": [int(v) for v in y], b"data": x.transpose(0, 3, 1, 2).reshape(len(y), -1)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    return root


def write_image_root(root: Path, per_class: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", max(2, per_class // 5))):
        for name in CIFAR10_CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / name / f"{i}.jpg")
    return root


# ---------------------------------------------------------------------- item 2: CIFAR batches run no code
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batches_load_with_the_restricted_unpickler(tmp_path, protocol):
    data = fake_cifar(3, 2)
    root = write_batches_root(tmp_path, data, protocol)
    for split in ("train", "test"):
        x, y = load_cifar10(root, split)
        assert np.array_equal(x, data[split][0]) and np.array_equal(y, data[split][1])


def test_a_poisoned_cifar_batch_runs_no_code(tmp_path):
    root = write_batches_root(tmp_path, fake_cifar(3, 2))
    marker = tmp_path / "pwned"
    batch = {b"labels": [0], b"data": np.zeros((1, 3072), np.uint8), b"x": Poison(marker)}
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 python batch \(refusing to load global io.open"):
        load_cifar10(root, "test")
    assert not marker.exists()


def test_a_cifar_batch_of_objects_is_refused(tmp_path):
    root = write_batches_root(tmp_path, fake_cifar(3, 2))
    batch = {b"labels": [0], b"data": np.array([["x"] * 3072], dtype=object)}
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"uint8 \(N, 3072\)"):
        load_cifar10(root, "test")


# ---------------------------------------------------------------------- item 5: data sets
def test_too_few_images_per_class_is_a_clear_error(tmp_path):
    root = write_npz_root(tmp_path / "c", fake_cifar(4, 2))  # 10% of 4 rounds to 0: no search image of a class
    with pytest.raises(ValueError, match=r"the 'search' split has no image of class\(es\) \[0, 1, 2"):
        load_splits("cifar10-mobilenet_v2", data_root=root)


def test_a_truncated_jpeg_is_named(tmp_path):
    root = write_image_root(tmp_path / "img", 2)
    victim = root / "train" / "cat" / "1.jpg"
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(ValueError, match=rf"{victim}: cannot decode this image"):
        load_cifar10(root, "train")


def test_search_refuses_missing_data_before_loading(monkeypatch, capsys, no_env_loads, tmp_path):
    monkeypatch.delenv("AJPQ_DATA", raising=False)
    assert search.main(["--env", "AJPQ-MobileNet-CIFAR10-v0", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    assert "needs the cifar10 data set: set the AJPQ_DATA" in error_line(capsys)
    monkeypatch.setenv("AJPQ_DATA", str(tmp_path / "nowhere"))
    assert search.main(["--env", "AJPQ-MobileNet-CIFAR10-v0", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    assert "nowhere' does not exist" in error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--env-kwargs", '{"finetune_stpes": 3}'], "unknown key 'finetune_stpes'"),
        (["--env-kwargs", "{finetune_steps: 3}"], "--env-kwargs is not JSON"),
        (["--env-kwargs", "[3]"], "--env-kwargs must be a JSON object"),
        (["--env-kwargs", '{"target": true}'], "'target' must be float, got true"),
        (["--env-kwargs", '{"finetune_lr": NaN}'], "'finetune_lr' must be a finite number"),
        (["--env", "AJPQ-Nope-v0"], "unknown env 'AJPQ-Nope-v0'"),
        (["--env", "synthetic:nope"], "unknown model 'nope'"),
        (["--hyperparams", "learning_rat=0.1"], "unknown key(s) ['learning_rat'] for td3-twolevel"),
        (["--algo", "random", "--hyperparams", "batch_size=4"], "agent 'random' takes none"),
        (["--hyperparams-path", "/nonexistent.yml"], "does not exist"),
        (["--hyperparams", "buffer_size=0"], "buffer_size must be an integer in 1..1,000,000,000, got 0"),
        (["--hyperparams", "gamma=2"], "gamma must be a number in [0, 1], got 2"),
        (["--hyperparams", "batch_size='x'"], "batch_size must be an integer in 1..10,000,000, got 'x'"),
        (["--hyperparams", "batch_size=64.0"], "batch_size must be an integer"),
        (["--hyperparams", "learning_rate=nan"], "learning_rate must be a number in (0, 10], got 'nan'"),
        (["--hyperparams", "learning_rate=1e999"], "learning_rate must be a number in (0, 10], got inf"),
        (["--hyperparams", "tau=0"], "tau must be a number in (0, 1], got 0"),
        (["--hyperparams", "policy_kwargs=5"], "policy_kwargs must be a dict"),
    ],
)
def test_search_refuses_bad_env_and_agent_options_before_loading(options, message, tmp_path, capsys, no_env_loads):
    out = tmp_path / "run"
    assert search.main([*TINY, "--episodes", "1", "--out", str(out), *options]) == 2
    assert message in error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--threads", "0"], "--threads must be an integer in 1..1,024, got 0"),
        (["--episodes", "0"], "--episodes must be an integer"),
        (["--target", "nan"], "--target must be a number in (0, 1], got nan"),
        (["--target", "1.5"], "--target must be a number in (0, 1]"),
        (["--noise-decay", "inf"], "--noise-decay must be a number"),
        (["--device", "warp9"], "is not a torch device"),
        (["--stage-algo", "nope"], "--stage-algo: unknown agent 'nope'"),
    ],
)
def test_search_refuses_bad_numbers_as_usage_errors(options, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        search.main([*TINY, *options])
    assert exit_info.value.code == 2
    assert message in error_line(capsys)


# ---------------------------------------------------------------------- item 5/6: deploy commands
@pytest.fixture
def recipe_file(tmp_path, deploy_recipe) -> Path:
    deploy_recipe.save(tmp_path / "best_recipe.json")
    return tmp_path / "best_recipe.json"


def tamper(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["layers"][next(iter(d["layers"]))].__setitem__(0, "4"), 'has bit-width "4"; expected JSON integers'),
        (lambda d: d["layers"][next(iter(d["layers"]))].__setitem__(0, None), "has bit-width null"),
        (lambda d: d["meta"].update(finetune_steps=10**9), "meta['finetune_steps'] must be an integer in 0..10000"),
        (lambda d: d["meta"].update(b_max="8"), "meta['b_max'] must be an integer in 1..8"),
        (lambda d: d["meta"].update(finetune_lr=1e308 * 10), "meta['finetune_lr'] must be a finite number"),
        (lambda d: d.update(format="other"), "is not an AJPQ recipe"),
    ],
    ids=["bits-text", "bits-null", "finetune-steps", "bmax-text", "lr-inf", "format"],
)
@pytest.mark.parametrize("command", ["finetune", "export"])
def test_deploy_commands_refuse_bad_recipes(command, change, message, recipe_file, capsys):
    tamper(recipe_file, change)
    argv = ["finetune", "--recipe", str(recipe_file)] if command == "finetune" else ["export", str(recipe_file)]
    assert cli.main([*argv, "--threads", "1"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"ajpq {command}: error:") and message in line and str(recipe_file) in line
    assert sorted(p.name for p in recipe_file.parent.iterdir()) == ["best_recipe.json"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lr", "nan"], "argument --lr: must be a finite number, got nan"),
        (["--lr", "inf"], "argument --lr: must be a finite number"),
        (["--momentum=-inf"], "argument --momentum: must be a finite number"),
        (["--batch-size", "1"], "argument --batch-size: must lie in [2, 65536], got 1"),
        (["--epochs", "0"], "argument --epochs: must lie in [1, 10000]"),
        (["--epochs", "1e9"], "argument --epochs: expected an integer, got '1e9'"),
        (["--threads", "-1"], "argument --threads: must lie in [0, 1024]"),
    ],
)
def test_finetune_refuses_non_finite_and_out_of_range_settings(options, message, recipe_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", "--recipe", str(recipe_file), *options])
    assert exit_info.value.code == 2
    assert message in error_line(capsys)


def test_finetune_config_refuses_nan_from_a_program():
    from ajpq_env.deploy import FinetuneConfig

    with pytest.raises(ValueError, match="lr must be a finite number"):
        FinetuneConfig(lr=float("nan")).check()
    with pytest.raises(ValueError, match=r"batch_size must lie in \[2, 65536\], got 1"):
        FinetuneConfig(batch_size=1).check()


@pytest.fixture
def artefact(tmp_path, recipe_file) -> Path:
    """The recipe exported as a user does it (packed artefact, no ONNX file)."""
    out = tmp_path / "export"
    assert cli.main(["export", str(recipe_file), "--out", str(out), "--onnx", "none", "--threads", "1"]) == 0
    return out / "model.ajpq"


def test_evaluate_refuses_a_folder_a_zero_batch_and_a_corrupt_onnx(artefact, capsys):
    assert cli.main(["evaluate", str(artefact.parent)]) == 2
    assert "is a folder, not a file" in error_line(capsys)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", str(artefact), "--batch-size", "0"])
    assert exit_info.value.code == 2 and "--batch-size: must lie in [1, 65536], got 0" in error_line(capsys)
    artefact.with_suffix(".onnx").write_bytes(b"\x08\x07garbage that is no protobuf")
    assert cli.main(["evaluate", str(artefact)]) == 2
    line = error_line(capsys)
    assert "model.onnx' cannot be loaded by onnxruntime" in line and "--no-onnx" in line
    assert not (artefact.parent / "evaluate.json").exists()


def test_export_refuses_an_out_that_is_a_file(recipe_file, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["export", str(recipe_file), "--out", str(tmp_path / "file")]) == 2
    assert "is a file; expected a folder" in error_line(capsys)


# ---------------------------------------------------------------------- item 5: report
@pytest.fixture
def run_folder(tmp_path, deploy_env, deploy_episode) -> Path:
    run = tmp_path / "run"
    with RecordWriter(run / "episodes.csv") as writer:
        for episode in range(2):
            recipe = deploy_episode(deploy_env, seed=episode)
            writer.write(deploy_env.record(agent="random", seed=0, episode=episode))
    recipe.save(run / "best_recipe.json")
    return run


def test_report_names_the_file_and_line_of_a_half_written_row(run_folder, capsys):
    with open(run_folder / "episodes.csv", "ab") as f:
        f.write(b"synthetic,synthetic-mobilenet_v2,joint,size,0.125,random,0,2,0.1")
    assert cli.main(["report", str(run_folder)]) == 2
    line = error_line(capsys)
    assert "episodes.csv' line 4: the last row is unfinished" in line
    assert not (run_folder / "report").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda run: (run / "episodes.csv").write_text("a,b\n1,2\n"), "line 1: not an episodes.csv header"),
        (lambda run: (run / "episodes.csv").write_text(
            (run / "episodes.csv").read_text().replace(",0.125,", ",oops,", 1)), "line 2: field 'target'"),
        (lambda run: tamper(run / "best_recipe.json", lambda d: d["meta"].update(task="synthetic-resnet20")),
         "is a recipe of task 'synthetic-resnet20', but the episodes"),
        (lambda run: (run / "best_recipe.json").write_text("{"), "is not a JSON recipe"),
        (lambda run: ((run / "export").mkdir(), (run / "export" / "export.json").write_text("[1]")),
         "must hold a JSON object"),
        (lambda run: ((run / "export").mkdir(), (run / "export" / "export.json").write_text('{"artefact": 1}')),
         "is not what `ajpq finetune` / `export` / `evaluate` write"),
    ],
    ids=["header", "field", "other-task", "recipe-json", "export-json", "export-fields"],
)
def test_report_refuses_what_is_not_one_search(run_folder, damage, message, capsys):
    damage(run_folder)
    assert cli.main(["report", str(run_folder)]) == 2
    assert message in error_line(capsys)
    assert not (run_folder / "report").exists()


# ---------------------------------------------------------------------- item 6: the env
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target": True}, TypeError, "target must be a number, got True"),
        ({"search_size": -5}, ValueError, "search_size must be None"),
        ({"search_size": 0}, ValueError, "search_size must be None"),
        ({"search_size": True}, ValueError, "search_size must be None"),
        ({"num_buckets": 2.0}, TypeError, "num_buckets must be an int"),
        ({"finetune_lr": float("nan")}, ValueError, "finetune_lr must be finite"),
        ({"finetune_steps": "3"}, TypeError, "finetune_steps must be a number"),
    ],
)
def test_env_arguments_are_checked_before_loading(kwargs, error, message, monkeypatch):
    import ajpq_env.envs.ajpq_env as module

    monkeypatch.setattr(module, "_cached_task", lambda *a: pytest.fail("the task was loaded"))
    with pytest.raises(error, match=message):
        gym.make("AJPQ-MobileNet-v0", **kwargs)


def test_env_refuses_actions_that_are_not_real_numbers(deploy_task):
    env = AJPQEnv(deploy_task)
    env.reset(seed=0)
    for action in (np.full(5, 0.5 + 0.5j), np.array(["0.5"] * 5), np.ones(5, dtype=bool), np.array([None] * 5)):
        with pytest.raises(ValueError, match="action must be a real-valued float array"):
            env.step(action)
    env.step(np.zeros(5, dtype=np.float32))  # and a real action still works after them


# ---------------------------------------------------------------------- item 7: a search split the weights never saw
def test_resnet20_search_split_is_disjoint_from_its_training_data_by_construction(tmp_path):
    """The shipped ResNet-20 weights were trained on every CIFAR-10 training image: its search split must come
    from the test images, and its test split from the other test images."""
    meta = TASKS["cifar10-resnet20"].meta
    assert meta["search_disjoint_from_weights"] and "all 50,000" in meta["weights_trained_on"]
    data = fake_cifar(20, 6)
    root = write_npz_root(tmp_path / "cifar", data)
    splits = load_splits("cifar10-resnet20", data_root=root)
    train_x, test_x = data["train"][0], data["test"][0]
    key = lambda images: {img.tobytes() for img in images}  # noqa: E731
    assert len(splits["train"]) == len(train_x) and key(splits["train"].images) == key(train_x)
    assert key(splits["search"].images) <= key(test_x) and key(splits["test"].images) <= key(test_x)
    assert not key(splits["search"].images) & key(train_x)
    assert not key(splits["search"].images) & key(splits["test"].images)
    assert len(splits["search"]) + len(splits["test"]) == len(test_x)
    for split in splits.values():  # stratified: every class in every split
        assert set(split.labels.tolist()) == set(range(10))
    # the MobileNetV2 task, trained by benchmarks/pretrain on train minus search, keeps its held-out train split
    mobilenet = load_splits("cifar10-mobilenet_v2", data_root=root)
    assert key(mobilenet["search"].images) <= key(train_x) and not key(mobilenet["search"].images) & key(
        mobilenet["train"].images)


def test_hyperparameter_files_are_range_checked_and_the_shipped_ones_pass(tmp_path):
    import yaml

    from agents.preflight import check_hyperparam
    from agents.registry import ALGORITHMS, HYPERPARAMS_DIR, load_hyperparams

    for file in HYPERPARAMS_DIR.glob("*.yml"):
        for env_id, entry in (yaml.safe_load(file.read_text()) or {}).items():
            for key, value in entry.items():
                check_hyperparam(key, value, f"{file.name} {env_id}")  # every shipped value is in range
    (tmp_path / "td3.yml").write_text("AJPQ-MobileNet-v0:\n  buffer_size: 0\n  gamma: 0.99\n")
    assert "td3" in ALGORITHMS
    with pytest.raises(ValueError, match=r"td3.yml', entry 'AJPQ-MobileNet-v0': buffer_size must be an integer in 1\.\."):
        load_hyperparams("td3", "AJPQ-MobileNet-v0", tmp_path)

"""Issue 10, item 12: a fuzz suite that keeps the command line and the env reliable.

Hypothesis draws bad arguments and damaged files (truncated, a flipped bit, garbage, a JSON value replaced by a
huge number or another type, a poisoned pickle) for ``ajpq search --resume``, ``finetune``, ``export``,
``evaluate``, ``report`` and the env, and asserts for every case:

* the command exits with code 0 or 2 (usage or input error) and prints no traceback (any other exception
  fails the case);
* no file outside the command's output (``--out``, the run folder of a resume that succeeds, ``--json``)
  changes, and a refused resume changes nothing at all;
* no marker file appears: a poisoned pickle never runs;
* the env either works or raises ``ValueError`` / ``TypeError``.

The commands run in-process (``main(argv)``) on the tiny synthetic task; the examples are derandomised so
``make test`` sees the same few hundred cases every time. ``AJPQ_FUZZ_SCALE=10`` runs ten times as many,
drawn afresh.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import search
from ajpq_env import AJPQEnv, cli
from ajpq_env.tasks import synthetic_task

SCALE = float(os.environ.get("AJPQ_FUZZ_SCALE", "1"))
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # poisoned torch files


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=SCALE == 1,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------- helpers
class Poison:
    """Unpickling this creates the marker file: a stand-in for any code a hostile file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` in-process: its exit code and what it wrote to stderr. Any exception but SystemExit escapes."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(p == s or s in p.parents for s in skip):
            files[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


JSON_VALUES = st.sampled_from([None, True, False, -1, 0, 1, 3, 2**31, 10**30, -(10**30), 1e308, 1e-300, 0.5, "4", "",
                               "../../x", "x" * 300, [], {}, [1, 2], {"a": 1}])


def _json_paths(value: Any, path: tuple = ()) -> list[tuple]:
    paths = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            paths += _json_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:8]):
            paths += _json_paths(v, (*path, i))
    return paths


def _set(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = _set(value[path[0]], path[1:], new)
    return value


@st.composite
def damage(draw, data: bytes, marker: Path, kinds: tuple[str, ...] = ("truncate", "flip", "garbage", "json", "poison")):
    """Damaged ``data``: truncated, a bit flipped, garbage, one JSON value replaced, or a poisoned pickle."""
    kind = draw(st.sampled_from(kinds))
    if kind == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip" and data:
        pos, bit = draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 7))
        return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:]
    if kind == "json":
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if value is not None:
            path = draw(st.sampled_from(_json_paths(value)))
            return json.dumps(_set(value, path, draw(JSON_VALUES))).encode()
    if kind == "poison":
        buffer = io.BytesIO()
        if draw(st.booleans()):
            torch.save({"parameters": Poison(marker), "state_dict": Poison(marker)}, buffer)
        else:
            pickle.dump({b"data": Poison(marker), "x": Poison(marker)}, buffer)
        return buffer.getvalue()
    return draw(st.binary(max_size=200))


def resign(run: Path) -> None:
    """Recompute the checkpoint manifest's checksums (anyone can; the loader must not trust the files anyway)."""
    try:
        manifest = json.loads((run / "checkpoint.json").read_text())
        directory = run / manifest["directory"]
        manifest["files"] = {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                             for p in sorted(directory.rglob("*")) if p.is_file()}
        (run / "checkpoint.json").write_text(json.dumps(manifest))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # the manifest itself is what was damaged


class Sandbox:
    """A temporary folder with the inputs, a file that must never change, and the poison marker's place."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="ajpq-fuzz-")
        self.root = Path(self._tmp.name)
        self.marker = self.root / "MARKER-code-ran"
        (self.root / "precious.txt").write_text("must not change")

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def check(self, code: int, err: str, before: dict[str, str], allowed: tuple[Path, ...] = (),
              codes: tuple[int, ...] = (0, 2)) -> None:
        assert code in codes, f"exit code {code}: {err[-2000:]}"
        assert "Traceback" not in err, err[-3000:]
        if code == 2:
            assert err.strip(), "a refusal must say why"
        assert not self.marker.exists(), "a poisoned pickle ran"
        after = snapshot(self.root, allowed)
        before = {k: v for k, v in before.items() if k in after or not self._allowed(k, allowed)}
        assert after == before, f"files outside the output changed: {sorted(set(after.items()) ^ set(before.items()))[:5]}"

    def _allowed(self, name: str, allowed: tuple[Path, ...]) -> bool:
        path = self.root / name
        return any(path == a or a in path.parents for a in allowed)


# ---------------------------------------------------------------------- fixtures: one tiny run of each command
SEARCH = ["--env", "synthetic", "--algo", "random", "--episodes", "3", "--checkpoint-every", "1", "--no-progress",
          "--threads", "1"]
FAST_FINETUNE = ["--epochs", "1", "--samples-per-epoch", "32", "--batch-size", "32", "--eval-batch-size", "64",
                 "--bn-recalibration-batches", "1", "--no-evaluate-search", "--no-evaluate-baselines", "--no-progress",
                 "--threads", "1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A finished search run (3 episodes, a checkpoint after each)."""
    root = tmp_path_factory.mktemp("fuzz-base")
    code, err = run(search.main, [*SEARCH, "--out", str(root / "run")])
    assert code == 0, err
    return {"run": root / "run"}


@pytest.fixture(scope="module")
def deployed(base, tmp_path_factory) -> dict[str, Path]:
    """The run's best recipe fine-tuned for a few steps, and exported (packed artefact and ONNX)."""
    root = tmp_path_factory.mktemp("fuzz-deployed")
    code, err = run(cli.main, ["finetune", "--recipe", str(base["run"] / "best_recipe.json"), *FAST_FINETUNE,
                               "--out", str(root / "finetune")])
    assert code == 0, err
    code, err = run(cli.main, ["export", str(root / "finetune"), "--out", str(root / "export"), "--threads", "1"])
    assert code == 0, err
    return {"finetune": root / "finetune", "export": root / "export"}


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "tb" not in p.parts)


# ---------------------------------------------------------------------- ajpq search --resume
RESUME_OPTIONS = st.lists(st.sampled_from([
    ("--episodes", "4"), ("--episodes", "2"), ("--episodes", "0"), ("--episodes", "99999999999"), ("--seed", "1"),
    ("--target", "0.125"), ("--target", "nan"), ("--threads", "0"), ("--algo", "uniform"), ("--warmup-episodes", "1"),
    ("--env-kwargs", '{"num_buckets": 4}'), ("--env-kwargs", '{"bogus": 1}'), ("--env-kwargs", "{"),
    ("--checkpoint-every", "-3"), ("--hyperparams", "batch_size=4"),
]), max_size=2)


@given(data=st.data(), options=RESUME_OPTIONS, sign=st.booleans())
@fuzz_settings(60)
def test_fuzz_search_resume(base, data, options, sign):
    with Sandbox() as box:
        run_dir = box.root / "run"
        shutil.copytree(base["run"], run_dir)
        name = data.draw(st.sampled_from([None, *_files(run_dir)]), label="file")
        if name is not None:
            path = run_dir / name
            path.write_bytes(data.draw(damage(path.read_bytes(), box.marker), label="damage"))
            if sign:
                resign(run_dir)
        before = snapshot(box.root)
        argv = [*SEARCH, "--out", str(run_dir), "--resume", *[x for pair in options for x in pair]]
        code, err = run(search.main, argv)
        box.check(code, err, before, allowed=(run_dir,) if code == 0 else ())


# ---------------------------------------------------------------------- ajpq finetune
FINETUNE_OPTIONS = st.lists(st.sampled_from([
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "1e-3"), ("--lr", "1e400"), ("--batch-size", "1"),
    ("--batch-size", "0"), ("--batch-size", "16"), ("--epochs", "0"), ("--epochs", "10000000"), ("--epochs", "x"),
    ("--momentum=-inf",), ("--weight-decay", "-1"), ("--samples-per-epoch", "1"), ("--crop-pad", "99999"),
    ("--task", "cifar10-resnet20"), ("--task", "nope"), ("--task", "synthetic-mobilenet_v2"), ("--threads", "-1"),
    ("--seed", "-5"), ("--eval-batch-size", "0"), ("--data", "/nonexistent"),
]), max_size=2)


@given(data=st.data(), options=FINETUNE_OPTIONS, out_kind=st.sampled_from(["new", "file", "nested"]))
@fuzz_settings(40)
def test_fuzz_finetune(base, data, options, out_kind):
    with Sandbox() as box:
        recipe = box.root / "best_recipe.json"
        shutil.copy(base["run"] / "best_recipe.json", recipe)
        if data.draw(st.booleans(), label="damage recipe"):
            recipe.write_bytes(data.draw(damage(recipe.read_bytes(), box.marker), label="damage"))
        out = {"new": box.root / "out", "file": box.root / "precious.txt", "nested": box.root / "out" / "a" / "b"}[out_kind]
        before = snapshot(box.root)
        argv = ["finetune", "--recipe", str(recipe), *FAST_FINETUNE, "--out", str(out),
                *[x for pair in options for x in pair]]
        code, err = run(cli.main, argv)
        box.check(code, err, before, allowed=(box.root / "out",))


# ---------------------------------------------------------------------- ajpq export
EXPORT_OPTIONS = st.lists(st.sampled_from([
    ("--onnx", "none"), ("--onnx", "fp32"), ("--onnx", "bogus"), ("--task", "cifar10-resnet20"), ("--task", "x"),
    ("--threads", "2000"), ("--threads", "nan"), ("--weights", "/nonexistent.pt"),
]), max_size=2)


@given(data=st.data(), options=EXPORT_OPTIONS, source_kind=st.sampled_from(["folder", "model", "recipe", "missing"]))
@fuzz_settings(30)
def test_fuzz_export(deployed, data, options, source_kind):
    with Sandbox() as box:
        folder = box.root / "finetune"
        shutil.copytree(deployed["finetune"], folder)
        if data.draw(st.booleans(), label="damage a file"):
            name = data.draw(st.sampled_from(_files(folder)), label="file")
            (folder / name).write_bytes(data.draw(damage((folder / name).read_bytes(), box.marker), label="damage"))
        source = {"folder": folder, "model": folder / "model.pt", "recipe": folder / "recipe.json",
                  "missing": box.root / "nothing"}[source_kind]
        out = box.root / "out" if data.draw(st.booleans(), label="out") else box.root / "precious.txt"
        if "--onnx" not in {pair[0] for pair in options}:
            options = [*options, ("--onnx", "none")]  # keep most cases fast; the qdq path is drawn explicitly
        before = snapshot(box.root)
        code, err = run(cli.main, ["export", str(source), "--out", str(out), *[x for pair in options for x in pair]])
        box.check(code, err, before, allowed=(box.root / "out",))


# ---------------------------------------------------------------------- ajpq evaluate
EVALUATE_OPTIONS = st.lists(st.sampled_from([
    ("--batch-size", "0"), ("--batch-size", "-1"), ("--batch-size", "7"), ("--batch-size", "1e9"), ("--no-onnx",),
    ("--split", "search"), ("--split", "bogus"), ("--task", "cifar10-resnet20"), ("--task", "nope"),
    ("--threads", "-1"), ("--data", "/nonexistent"),
]), max_size=2)


@given(data=st.data(), options=EVALUATE_OPTIONS, target=st.sampled_from(["artefact", "folder", "onnx", "missing"]))
@fuzz_settings(40)
def test_fuzz_evaluate(deployed, data, options, target):
    with Sandbox() as box:
        folder = box.root / "export"
        shutil.copytree(deployed["export"], folder)
        if data.draw(st.booleans(), label="damage a file"):
            name = data.draw(st.sampled_from(_files(folder)), label="file")
            (folder / name).write_bytes(data.draw(damage((folder / name).read_bytes(), box.marker), label="damage"))
        artefact = {"artefact": folder / "model.ajpq", "folder": folder, "onnx": folder / "model.onnx",
                    "missing": box.root / "x.ajpq"}[target]
        result = box.root / "out" / "evaluate.json"
        result.parent.mkdir()
        before = snapshot(box.root)
        code, err = run(cli.main, ["evaluate", str(artefact), "--json", str(result),
                                   *[x for pair in options for x in pair]])
        box.check(code, err, before, allowed=(result,))


# ---------------------------------------------------------------------- ajpq report
@given(data=st.data(), out_kind=st.sampled_from(["default", "new", "file"]),
       append=st.sampled_from([b"", b"synthetic,synth", b"\n\n", b"\xff\xfe", b"a,b,c\r\n"]))
@fuzz_settings(30)
def test_fuzz_report(base, data, out_kind, append):
    with Sandbox() as box:
        run_dir = box.root / "run"
        shutil.copytree(base["run"], run_dir, ignore=shutil.ignore_patterns("checkpoints", "tb"))
        names = ["episodes.csv", "best_recipe.json"]
        name = data.draw(st.sampled_from([None, *names]), label="file")
        if name is not None:
            kinds = ("truncate", "flip", "garbage", "json")
            (run_dir / name).write_bytes(data.draw(damage((run_dir / name).read_bytes(), box.marker, kinds)))
        with open(run_dir / "episodes.csv", "ab") as f:
            f.write(append)
        out = {"default": None, "new": box.root / "out", "file": box.root / "precious.txt"}[out_kind]
        before = snapshot(box.root)
        code, err = run(cli.main, ["report", str(run_dir), *([] if out is None else ["--out", str(out)])])
        box.check(code, err, before, allowed=(run_dir / "report", box.root / "out"))


# ---------------------------------------------------------------------- the env
ENV_VALUES = st.sampled_from([True, False, None, -1, 0, 1, 2, 3, 8, 9, 10**9, -(10**9), 0.0, 0.125, 0.5, 1.0, 1.5,
                              float("nan"), float("inf"), -0.1, "4", "size", "joint", [], {}])
ENV_KEYS = st.sampled_from(["target", "resource", "mode", "reward", "num_buckets", "b_min", "b_max", "fixed_bits",
                            "max_sparsity", "channel_round", "importance", "a_bits", "bn_calibration_batches",
                            "calibration_batch_size", "finetune_steps", "finetune_lr", "eval_batch_size",
                            "cache_size", "search_size", "render_mode"])


@pytest.fixture(scope="module")
def tiny_task():
    return synthetic_task(sizes=(16, 16, 16))


@given(kwargs=st.dictionaries(ENV_KEYS, ENV_VALUES, max_size=2),
       actions=st.lists(st.tuples(st.sampled_from(["float32", "float64", "int64", "complex128", "bool", "str",
                                                   "object"]),
                                  st.sampled_from([(5,), (4,), (), (5, 1)]),
                                  st.sampled_from([0.0, 1.0, -5.0, 1e30, float("nan"), float("inf")])), max_size=4))
@fuzz_settings(60)
def test_fuzz_env(tiny_task, kwargs, actions):
    if kwargs.get("finetune_steps", 0) not in (0, 1, 2, 3) and not isinstance(kwargs.get("finetune_steps"), bool):
        kwargs.pop("finetune_steps")  # a valid huge number of fine-tuning steps is slow by design, not a bug
    try:
        env = AJPQEnv(tiny_task, **kwargs)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    env.reset(seed=0)
    for dtype, shape, value in actions:
        with np.errstate(invalid="ignore", over="ignore"):  # nan/inf cast to ints: garbage on purpose
            raw = np.full(shape, value if dtype not in ("str", "object") else str(value)).astype(dtype)
        try:
            obs, reward, terminated, truncated, info = env.step(raw)
        except (ValueError, TypeError) as err:
            assert str(err)
            continue
        assert env.observation_space.contains(obs) and math.isfinite(reward) and not truncated
        if terminated:
            env.reset()

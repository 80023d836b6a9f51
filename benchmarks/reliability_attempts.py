"""The attempt table of issue 10, re-run: what a hostile or careless user tries, and how each attempt ends.

Every attempt runs in a forked child (its own sandbox folder, an 8 GiB address-space limit, a timeout) and is
classified as one of :data:`VERDICTS`:

* ``fine`` — a valid use worked and its result checks out;
* ``clear error`` — refused with exit code 2 (or ``ValueError``/``TypeError`` from the library) and a message
  naming what was wrong (the attempt's keywords);
* ``unclear error`` — refused, but the message does not say what was wrong, or another exit code;
* ``traceback`` — an exception escaped, or a traceback was printed;
* ``silent wrong`` — a bad input accepted, or a valid one giving a wrong result;
* ``hang`` — past the timeout, or killed (memory blow-up);
* ``data loss`` — a file outside the command's output changed, or a failed command changed its input;
* ``code execution`` — the marker file of a poisoned pickle appeared.

    python -m benchmarks.reliability_attempts                 # every attempt; Markdown table and counts
    python -m benchmarks.reliability_attempts --only search   # the attempts whose group starts with "search"

Run it on a quiet machine when reporting the seconds column (the checks before loading are timed in-process).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import pickle
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

VERDICTS = ("fine", "clear error", "unclear error", "traceback", "silent wrong", "hang", "data loss", "code execution")


@dataclass
class Outcome:
    verdict: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Attempt:
    group: str
    name: str
    run: Callable[[Path], Outcome]
    timeout: float = 180.0


class Poison:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------- running commands and judging them
def call(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int | None, str, float, BaseException | None]:
    err, out = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    exc = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception as error:  # noqa: BLE001 (classified as a traceback)
            code, exc = None, error
    return code, err.getvalue() + out.getvalue(), time.perf_counter() - start, exc


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not any(p == s or s in p.parents for s in skip)}


def judge_refusal(box: Path, main, argv: list[str], keywords: tuple[str, ...], allowed: tuple[Path, ...] = ()) -> Outcome:
    """An attempt that must be refused with exit code 2 and a message holding ``keywords``, changing nothing."""
    before = snapshot(box, allowed)
    code, text, seconds, exc = call(main, argv)
    return _verdict(box, before, allowed, code, text, seconds, exc, keywords, expect_ok=False)


def judge_success(box: Path, main, argv: list[str], check: Callable[[], str | None] | None = None,
                  allowed: tuple[Path, ...] = ()) -> Outcome:
    """An attempt that must succeed (exit 0) and pass ``check`` (which returns a problem or ``None``)."""
    before = snapshot(box, allowed)
    code, text, seconds, exc = call(main, argv)
    outcome = _verdict(box, before, allowed, code, text, seconds, exc, (), expect_ok=True)
    if outcome.verdict == "fine" and check is not None:
        problem = check()
        if problem:
            return Outcome("silent wrong", problem, seconds)
    return outcome


def _verdict(box, before, allowed, code, text, seconds, exc, keywords, expect_ok) -> Outcome:
    if (box / "MARKER").exists():
        return Outcome("code execution", "the poisoned pickle ran", seconds)
    if snapshot(box, allowed) != before:
        changed = sorted(set(snapshot(box, allowed).items()) ^ set(before.items()))
        return Outcome("data loss", f"changed: {[c[0] for c in changed][:3]}", seconds)
    if exc is not None or "Traceback" in text:
        return Outcome("traceback", repr(exc) if exc is not None else text.strip().splitlines()[-1], seconds)
    last = text.strip().splitlines()[-1] if text.strip() else ""
    if expect_ok:
        return Outcome("fine" if code == 0 else "unclear error", last[:200], seconds)
    if code == 0:
        return Outcome("silent wrong", "accepted: " + last[:200], seconds)
    if code == 2 and all(k in text for k in keywords):
        return Outcome("clear error", last[:200], seconds)
    return Outcome("unclear error", f"exit {code}: {last[:200]}", seconds)


def judge_library(fn: Callable[[], Any], errors: tuple[type, ...], keywords: tuple[str, ...], box: Path) -> Outcome:
    """A library call that must raise one of ``errors`` with ``keywords`` in its message."""
    start = time.perf_counter()
    try:
        fn()
    except errors as err:
        seconds = time.perf_counter() - start
        if (box / "MARKER").exists():
            return Outcome("code execution", "", seconds)
        ok = all(k in str(err) for k in keywords)
        return Outcome("clear error" if ok else "unclear error", str(err)[:200], seconds)
    except Exception as err:  # noqa: BLE001
        return Outcome("traceback", repr(err)[:200], time.perf_counter() - start)
    if (box / "MARKER").exists():
        return Outcome("code execution", "", time.perf_counter() - start)
    return Outcome("silent wrong", "accepted", time.perf_counter() - start)


def judge_check(fn: Callable[[], str | None]) -> Outcome:
    """A valid use whose result ``fn`` checks (returns a problem or ``None``)."""
    start = time.perf_counter()
    try:
        problem = fn()
    except Exception as err:  # noqa: BLE001
        return Outcome("traceback", repr(err)[:200], time.perf_counter() - start)
    return Outcome("silent wrong" if problem else "fine", problem or "", time.perf_counter() - start)


# ---------------------------------------------------------------------- shared inputs, made once
class Inputs:
    """A finished random search, an interrupted td3 search, its recipe, a fine-tuned folder and an export."""

    def __init__(self, root: Path) -> None:
        from agents.search import main as search_main
        from ajpq_env import cli

        self.root = root
        self.run = root / "run"
        code, text, _, exc = call(search_main, [*SEARCH, "--out", str(self.run)])
        assert code == 0 and exc is None, text
        self.td3 = root / "td3"
        from agents.search import parse_args, run_search

        def stop(record):
            if record.episode == 4:
                raise KeyboardInterrupt

        run_search(parse_args([*TD3, "--out", str(self.td3)]), on_episode=stop)
        self.recipe = self.run / "best_recipe.json"
        code, text, _, exc = call(cli.main, ["finetune", "--recipe", str(self.recipe), *FAST_FT, "--out",
                                             str(root / "finetune")])
        assert code == 0 and exc is None, text
        self.finetune = root / "finetune"
        code, text, _, exc = call(cli.main, ["export", str(self.finetune), "--out", str(root / "export"),
                                             "--threads", "1"])
        assert code == 0 and exc is None, text
        self.export = root / "export"


SEARCH = ["--env", "synthetic", "--algo", "random", "--episodes", "3", "--checkpoint-every", "1", "--no-progress",
          "--threads", "1"]
TD3_BASE = ["--env", "synthetic", "--algo", "td3", "--checkpoint-every", "3", "--no-progress", "--threads", "1",
            "--hyperparams", "policy_kwargs=dict(net_arch=[16])", "batch_size=16"]
TD3 = [*TD3_BASE, "--episodes", "6", "--warmup-episodes", "1"]
FAST_FT = ["--epochs", "1", "--samples-per-epoch", "32", "--batch-size", "32", "--eval-batch-size", "64",
           "--no-evaluate-search", "--no-evaluate-baselines", "--no-progress", "--threads", "1"]

INPUTS: Inputs | None = None


def copy(source: Path, box: Path, name: str | None = None) -> Path:
    target = box / (name or source.name)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    return target


def edit_json(path: Path, change: Callable[[Any], Any]) -> Path:
    """Apply ``change`` to the JSON document of ``path`` in place (its return value is ignored)."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def resign(run: Path) -> None:
    manifest = json.loads((run / "checkpoint.json").read_text())
    directory = run / manifest["directory"]
    manifest["files"] = {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(directory.rglob("*")) if p.is_file()}
    (run / "checkpoint.json").write_text(json.dumps(manifest))


def rows(run: Path) -> list[str]:
    return [line for line in (run / "episodes.csv").read_text().splitlines()[1:]]


def strip_walltime(lines: list[str]) -> list[str]:
    import csv

    return [",".join(v for i, v in enumerate(next(csv.reader([line]))) if i != 14) for line in lines]


# ---------------------------------------------------------------------- the attempts
def attempts() -> list[Attempt]:
    from agents.search import main as search_main
    from ajpq_env import cli

    deploy = cli.main
    out: list[Attempt] = []

    def add(group: str, name: str, timeout: float = 180.0):
        def register(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
            out.append(Attempt(group, name, fn, timeout))
            return fn

        return register

    # -- search: options refused before the env loads --------------------------------------------------
    bad_options = [
        (["--threads", "0"], ("--threads",)), (["--threads", "-1"], ("--threads",)), (["--threads", "5000"], ("--threads",)),
        (["--episodes", "0"], ("--episodes",)), (["--episodes", "-3"], ("--episodes",)),
        (["--episodes", "100000000000"], ("--episodes",)), (["--checkpoint-every", "0"], ("--checkpoint-every",)),
        (["--target", "0"], ("--target",)), (["--target", "nan"], ("--target",)), (["--target", "inf"], ("--target",)),
        (["--target", "1.5"], ("--target",)), (["--target", "-0.1"], ("--target",)),
        (["--noise-decay", "0"], ("--noise-decay",)), (["--noise-decay", "nan"], ("--noise-decay",)),
        (["--noise-sigma", "inf"], ("--noise-sigma",)), (["--gamma", "2"], ("--gamma",)),
        (["--warmup-episodes", "-1"], ("--warmup-episodes",)), (["--env", "AJPQ-Nope-v0"], ("unknown env",)),
        (["--env", "synthetic:nope"], ("unknown model",)), (["--algo", "td4"], ("unknown agent",)),
        (["--stage-algo", "td4", "--algo", "two-step"], ("--stage-algo",)),
        (["--env-kwargs", "{finetune_steps: 3}"], ("--env-kwargs", "not JSON")),
        (["--env-kwargs", "[1, 2]"], ("--env-kwargs", "JSON object")),
        (["--env-kwargs", '{"finetune_stpes": 3}'], ("unknown key", "finetune_stpes")),
        (["--env-kwargs", '{"target": true}'], ("target", "float")),
        (["--env-kwargs", '{"num_buckets": 1.5}'], ("num_buckets",)),
        (["--env-kwargs", '{"search_size": "100"}'], ("search_size",)),
        (["--env-kwargs", '{"finetune_lr": NaN}'], ("finetune_lr", "finite")),
        (["--algo", "td3", "--hyperparams", "learning_rat=0.1"], ("learning_rat",)),
        (["--hyperparams", "batch_size"], ("KEY=VALUE",)),
        (["--algo", "random", "--hyperparams", "batch_size=4"], ("random",)),
        (["--hyperparams-path", "/nonexistent.yml"], ("--hyperparams-path",)), (["--device", "warp9"], ("--device",)),
    ]
    for argv, keywords in bad_options:
        @add("search: options", " ".join(argv))
        def _(box: Path, argv=argv, keywords=keywords) -> Outcome:
            return judge_refusal(box, search_main, [*SEARCH, "--out", str(box / "run"), *argv], keywords)

    @add("search: options", "--resume without --out")
    def _(box: Path) -> Outcome:
        return judge_refusal(box, search_main, [*SEARCH, "--resume"], ("--resume needs --out",))

    @add("search: options", "CIFAR env without AJPQ_DATA")
    def _(box: Path) -> Outcome:
        os.environ.pop("AJPQ_DATA", None)
        return judge_refusal(box, search_main, ["--env", "AJPQ-MobileNet-CIFAR10-v0", "--no-progress", "--out",
                                                str(box / "r")], ("AJPQ_DATA",))

    @add("search: options", "CIFAR env with AJPQ_DATA that does not exist")
    def _(box: Path) -> Outcome:
        os.environ["AJPQ_DATA"] = str(box / "nowhere")
        return judge_refusal(box, search_main, ["--env", "AJPQ-MobileNet-CIFAR10-v0", "--no-progress", "--out",
                                                str(box / "r")], ("nowhere", "does not exist"))

    @add("search: options", "ResNet-20 env without its weights")
    def _(box: Path) -> Outcome:
        os.environ["AJPQ_DATA"] = str(box)
        os.environ.pop("AJPQ_WEIGHTS", None)
        return judge_refusal(box, search_main, ["--env", "AJPQ-ResNet20-CIFAR10-v0", "--no-progress", "--out",
                                                str(box / "r")], ("resnet20-cifar10jpeg-ft2ep.pt", "AJPQ_WEIGHTS"))

    # -- search: run folders (items 1, 4) ----------------------------------------------------------------
    @add("search: run folder", "--out is a file")
    def _(box: Path) -> Outcome:
        (box / "f").write_text("x")
        return judge_refusal(box, search_main, [*SEARCH, "--out", str(box / "f")], ("is a file",))

    @add("search: run folder", "--out holds checkpoints/other and a best_recipe.json of its own")
    def _(box: Path) -> Outcome:
        (box / "mine" / "checkpoints" / "other").mkdir(parents=True)
        (box / "mine" / "checkpoints" / "other" / "w.bin").write_bytes(b"precious")
        (box / "mine" / "best_recipe.json").write_text("{}")
        return judge_refusal(box, search_main, [*SEARCH, "--out", str(box / "mine")], ("not empty", "not a run folder"))

    @add("search: run folder", "new search into an existing run")
    def _(box: Path) -> Outcome:
        run = copy(INPUTS.run, box)
        return judge_refusal(box, search_main, [*SEARCH, "--out", str(run)], ("already holds a search", "--resume"))

    @add("search: run folder", "--resume of a folder that does not exist")
    def _(box: Path) -> Outcome:
        return judge_refusal(box, search_main, [*SEARCH, "--out", str(box / "none"), "--resume"], ("nothing to resume",))

    @add("search: run folder", "--resume of a finished run (nothing left)")
    def _(box: Path) -> Outcome:
        run = copy(INPUTS.run, box)
        before = rows(run)
        return judge_success(box, search_main, [*SEARCH, "--out", str(run), "--resume"],
                             lambda: None if rows(run) == before else "rows changed", allowed=(run,))

    @add("search: run folder", "Ctrl-C before the first checkpoint, then --resume")
    def _(box: Path) -> Outcome:
        from agents.search import parse_args, run_search

        options = ["--env", "synthetic", "--algo", "random", "--episodes", "3", "--checkpoint-every", "10",
                   "--no-progress", "--threads", "1"]
        whole = box / "whole"
        run_search(parse_args([*options, "--out", str(whole)]))

        def stop(record):
            if record.episode == 1:
                raise KeyboardInterrupt

        run_search(parse_args([*options, "--out", str(box / "cut")]), on_episode=stop)
        with open(box / "cut" / "episodes.csv", "ab") as f:
            f.write(b"synthetic,synthetic-mob")  # and half a row, as kill -9 leaves it
        return judge_success(box, search_main, [*options, "--out", str(box / "cut"), "--resume"],
                             lambda: None if strip_walltime(rows(box / "cut")) == strip_walltime(rows(whole))
                             else "the resumed run differs from the uninterrupted one", allowed=(box / "cut",))

    @add("search: run folder", "--resume with another --episodes keeps the warm-up")
    def _(box: Path) -> Outcome:
        from agents.search import parse_args, run_search

        base = TD3_BASE  # the default warm-up, min(5, episodes // 5): 2 for 10 episodes, 3 for 15 unless kept
        whole, cut = box / "whole", box / "cut"
        run_search(parse_args([*base, "--episodes", "10", "--out", str(whole)]))

        def stop(record):
            if record.episode == 4:
                raise KeyboardInterrupt

        run_search(parse_args([*base, "--episodes", "10", "--out", str(cut)]), on_episode=stop)
        return judge_success(box, search_main, [*base, "--episodes", "15", "--out", str(cut), "--resume"],
                             lambda: None if strip_walltime(rows(cut))[:10] == strip_walltime(rows(whole))
                             else "the first 10 episodes differ from the uninterrupted run", allowed=(cut,))

    @add("search: run folder", "--resume with an explicit --target equal to the default")
    def _(box: Path) -> Outcome:
        run = copy(INPUTS.run, box)
        return judge_success(box, search_main, [*SEARCH, "--out", str(run), "--resume", "--target", "0.125",
                                                "--episodes", "4"], allowed=(run,))

    @add("search: run folder", "--resume with other options")
    def _(box: Path) -> Outcome:
        run = copy(INPUTS.run, box)
        return judge_refusal(box, search_main, [*SEARCH, "--out", str(run), "--resume", "--seed", "5"],
                             ("--seed: checkpoint 0, now 5",))

    manifest_damage: list[tuple[str, Callable[[dict], Any], tuple[str, ...]]] = [
        ("malformed best entry", lambda m: m.update(best={"episode": "x"}), ("checkpoint.json", "best")),
        ("best recipe not JSON", lambda m: m.update(best={**m["best"], "recipe": "{"}), ("checkpoint.json", "best")),
        ("best row differs from the CSV", lambda m: m.update(best={**m["best"], "metric": "0.999"}), ("best record",)),
        ("directory ../../elsewhere", lambda m: m.update(directory="../../elsewhere"), ("directory",)),
        ("directory absolute", lambda m: m.update(directory="/etc"), ("directory",)),
        ("episodes as text", lambda m: m.update(episodes="3"), ("episodes",)),
        ("episodes huge", lambda m: m.update(episodes=10**30), ("directory",)),
        ("walltime NaN", lambda m: m.update(walltime=float("nan")), ("walltime",)),
        ("file list empty", lambda m: m.update(files={}), ("files",)),
        ("file entry escaping the folder", lambda m: m["files"].update({"../../x": "0" * 64}), ("bad file entry",)),
        ("wrong checksum", lambda m: m["files"].update({"rng.json": "0" * 64}), ("SHA-256",)),
        ("format 1 (pickled state)", lambda m: m.update(format="ajpq-search-checkpoint/1"), ("format",)),
        ("identity differs from the run marker", lambda m: m["identity"].update(seed=9), ("run marker",)),
    ]
    for name, change, keywords in manifest_damage:
        @add("search: resume of a damaged checkpoint", name)
        def _(box: Path, change=change, keywords=keywords) -> Outcome:
            run = copy(INPUTS.run, box)
            edit_json(run / "checkpoint.json", change)
            return judge_refusal(box, search_main, [*SEARCH, "--out", str(run), "--resume"], keywords)

    file_damage: list[tuple[str, Callable[[Path], Any], tuple[str, ...]]] = [
        ("manifest truncated", lambda r: (r / "checkpoint.json").write_bytes((r / "checkpoint.json").read_bytes()[:50]),
         ("checkpoint manifest",)),
        ("manifest a JSON list", lambda r: (r / "checkpoint.json").write_text("[1, 2]"), ("checkpoint manifest",)),
        ("run marker garbage", lambda r: (r / "ajpq-run.json").write_bytes(b"\x00\xff"), ("run marker",)),
        ("run marker removed, manifest kept", lambda r: (r / "ajpq-run.json").unlink(), ("older ajpq search",)),
        ("rng.json deleted", lambda r: next(r.glob("checkpoints/*/rng.json")).unlink(), ("files missing",)),
        ("rng.json a symlink", lambda r: (next(r.glob("checkpoints/*/rng.json")).unlink(),
                                          (r / "checkpoints" / "ep-000003" / "rng.json").symlink_to("/etc/hostname")),
         ("symbolic link",)),
        ("checkpoints a symlink", lambda r: (shutil.rmtree(r / "checkpoints"), (r / "checkpoints").symlink_to("/tmp")),
         ("symbolic link",)),
        ("extra file in the checkpoint", lambda r: (r / "checkpoints" / "ep-000003" / "x.pkl").write_bytes(b"\x80"),
         ("not in the manifest",)),
        ("episodes.csv header replaced", lambda r: (r / "episodes.csv").write_bytes(
            b"a,b,c" + (r / "episodes.csv").read_bytes()[(r / "episodes.csv").read_bytes().index(b"\r\n"):]),
         ("episodes.csv", "line 1")),
        ("episodes.csv truncated to 1 row", lambda r: (r / "episodes.csv").write_bytes(
            b"\r\n".join((r / "episodes.csv").read_bytes().split(b"\r\n")[:2]) + b"\r\n"), ("episodes.csv", "rows")),
        ("episodes.csv row garbled", lambda r: (r / "episodes.csv").write_bytes(
            (r / "episodes.csv").read_bytes().replace(b",0.125,", b",zzz,", 1)), ("episodes.csv", "line 2")),
        ("agent state rng garbage, re-signed", lambda r: (edit_json(next(r.glob("checkpoints/*/agent/agent.json")),
                                                                    lambda a: a.update(rng={"x": 1})), resign(r)),
         ("corrupt checkpoint",)),
        ("generator state wrong length, re-signed", lambda r: (edit_json(next(r.glob("checkpoints/*/rng.json")),
                                                                         lambda a: a.update(torch="AAAA")), resign(r)),
         ("rng.json",)),
    ]
    for name, damage, keywords in file_damage:
        @add("search: resume of a damaged checkpoint", name)
        def _(box: Path, damage=damage, keywords=keywords) -> Outcome:
            run = copy(INPUTS.run, box)
            damage(run)
            return judge_refusal(box, search_main, [*SEARCH, "--out", str(run), "--resume"], keywords)

    # -- code from files (item 2) ------------------------------------------------------------------------
    def poisoned_td3(box: Path, where: str) -> Outcome:
        run = copy(INPUTS.td3, box)
        directory = run / json.loads((run / "checkpoint.json").read_text())["directory"]
        marker = box / "MARKER"
        if where == "parameters.pt":
            torch.save({"parameters": Poison(marker), "variables": {}}, directory / "agent" / "parameters.pt")
        elif where == "replay_buffer.npz":
            with np.load(directory / "agent" / "replay_buffer.npz") as archive:
                arrays = {k: archive[k] for k in archive.files}
            arrays["actions"] = np.array([Poison(marker)] * len(arrays["actions"]), dtype=object)
            np.savez(directory / "agent" / "replay_buffer.npz", **arrays)
        elif where == "replay_buffer.pkl":
            (directory / "agent" / "replay_buffer.pkl").write_bytes(pickle.dumps(Poison(marker)))
        elif where == "model.zip":
            (directory / "agent" / "model.zip").write_bytes(pickle.dumps(Poison(marker)))
        elif where == "rng.pkl":
            (directory / "rng.pkl").write_bytes(pickle.dumps(Poison(marker)))
        resign(run)
        options = [*TD3, "--out", str(run), "--resume"]
        if where in ("parameters.pt", "replay_buffer.npz"):
            return judge_refusal(box, search_main, options, ("corrupt checkpoint",))
        return judge_success(box, search_main, options, allowed=(run,))  # never read: the run goes on

    for where in ("parameters.pt", "replay_buffer.npz", "replay_buffer.pkl", "model.zip", "rng.pkl"):
        @add("code from files", f"poisoned {where} in a re-signed checkpoint")
        def _(box: Path, where=where) -> Outcome:
            return poisoned_td3(box, where)

    @add("code from files", "poisoned CIFAR-10 python batch")
    def _(box: Path) -> Outcome:
        from ajpq_env.tasks.data import load_cifar10

        folder = box / "cifar-10-batches-py"
        folder.mkdir()
        (folder / "test_batch").write_bytes(pickle.dumps({b"data": Poison(box / "MARKER"), b"labels": [0]}))
        return judge_library(lambda: load_cifar10(box, "test"), (ValueError,), ("test_batch", "refusing"), box)

    @add("code from files", "poisoned fine-tuned model.pt")
    def _(box: Path) -> Outcome:
        folder = copy(INPUTS.finetune, box)
        torch.save({"state_dict": Poison(box / "MARKER")}, folder / "model.pt")
        return judge_refusal(box, deploy, ["export", str(folder), "--out", str(box / "x"), "--onnx", "none"],
                             ("model.pt",), allowed=(box / "x",))

    # -- the env (item 6) ---------------------------------------------------------------------------------
    def env_args(kwargs: dict, errors: tuple[type, ...], keywords: tuple[str, ...]) -> Callable[[Path], Outcome]:
        def attempt(box: Path) -> Outcome:
            import gymnasium as gym

            import ajpq_env  # noqa: F401

            return judge_library(lambda: gym.make("AJPQ-MobileNet-v0", **kwargs), errors, keywords, box)

        return attempt

    for kwargs, keywords in [
        ({"target": True}, ("target",)), ({"target": "0.5"}, ("target",)), ({"target": float("nan")}, ("target",)),
        ({"target": 0.0}, ("target",)), ({"search_size": -5}, ("search_size",)), ({"search_size": 0}, ("search_size",)),
        ({"search_size": True}, ("search_size",)), ({"num_buckets": 2.0}, ("num_buckets",)),
        ({"num_buckets": 0}, ("num_buckets",)), ({"finetune_lr": float("nan")}, ("finetune_lr",)),
        ({"finetune_steps": "3"}, ("finetune_steps",)), ({"mode": "bogus"}, ("mode",)), ({"resource": "x"}, ("resource",)),
        ({"reward": "x"}, ("reward",)), ({"b_min": 9}, ("b_min",)), ({"max_sparsity": 1.0}, ("max_sparsity",)),
        ({"targt": 0.1}, ("targt",)),
    ]:
        out.append(Attempt("env: arguments", json.dumps(kwargs, default=str), env_args(kwargs, (ValueError, TypeError),
                                                                                     keywords)))

    @add("env: arguments", "AJPQEnv(render_mode='human') (gym.make wraps it in HumanRendering, by design)")
    def _(box: Path) -> Outcome:
        from ajpq_env import AJPQEnv
        from ajpq_env.tasks import synthetic_task

        return judge_library(lambda: AJPQEnv(synthetic_task(), render_mode="human"), (ValueError,), ("render_mode",),
                             box)

    def env_action(action: Any, keywords: tuple[str, ...]) -> Callable[[Path], Outcome]:
        def attempt(box: Path) -> Outcome:
            from ajpq_env import AJPQEnv
            from ajpq_env.tasks import synthetic_task

            env = AJPQEnv(synthetic_task())
            env.reset(seed=0)
            return judge_library(lambda: env.step(action), (ValueError, RuntimeError), keywords, box)

        return attempt

    for name, action, keywords in [
        ("complex", np.full(5, 0.5 + 0.5j), ("real-valued",)), ("strings", np.array(["0.5"] * 5), ("real-valued",)),
        ("bools", np.ones(5, dtype=bool), ("real-valued",)), ("objects", np.array([None] * 5), ("real-valued",)),
        ("NaN", np.array([np.nan, 0, 0, 0, 0]), ("finite",)), ("inf", np.array([0, np.inf, 0, 0, 0]), ("finite",)),
        ("shape (3,)", np.zeros(3), ("shape",)), ("scalar", np.float32(0.5), ("shape",)),
    ]:
        out.append(Attempt("env: actions", name, env_action(action, keywords)))

    @add("env: actions", "step before reset")
    def _(box: Path) -> Outcome:
        from ajpq_env import AJPQEnv
        from ajpq_env.tasks import synthetic_task

        env = AJPQEnv(synthetic_task())
        return judge_library(lambda: env.step(np.zeros(5, np.float32)), (RuntimeError,), ("reset",), box)

    @add("env: vector", "gym.make_vec async, default threads, one episode per worker", timeout=300)
    def _(box: Path) -> Outcome:
        script = ("import gymnasium as gym, numpy as np, torch, ajpq_env\n"
                  "torch.set_num_threads(max(2, torch.get_num_threads()))\n"
                  "e = gym.make_vec('AJPQ-MobileNet-v0', num_envs=2, vectorization_mode='async', search_size=200)\n"
                  "e.reset(seed=0); d = np.zeros(2, bool)\n"
                  "while not d.all():\n    d |= e.step(e.action_space.sample())[2]\n"
                  "e.close(); print('OK')\n")
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            return Outcome("hang", "workers deadlocked", time.perf_counter() - start)
        ok = done.returncode == 0 and done.stdout.strip() == "OK"
        return Outcome("fine" if ok else "traceback", done.stderr[-200:], time.perf_counter() - start)

    # -- data sets (items 2, 5, 7) ------------------------------------------------------------------------
    def data_attempt(make: Callable[[Path], Path], split: str, keywords: tuple[str, ...],
                     loader: str = "load_cifar10") -> Callable[[Path], Outcome]:
        def attempt(box: Path) -> Outcome:
            from ajpq_env import tasks
            from ajpq_env.tasks.data import load_cifar10

            root = make(box)
            if loader == "load_cifar10":
                return judge_library(lambda: load_cifar10(root, split), (ValueError, FileNotFoundError), keywords, box)
            return judge_library(lambda: tasks.load_splits(loader, data_root=root), (ValueError, FileNotFoundError),
                                 keywords, box)

        return attempt

    def images(box: Path, per_class: int, truncate: bool = False, size: int = 32, extra_class: bool = False) -> Path:
        from PIL import Image

        from ajpq_env.tasks.data import CIFAR10_CLASSES

        rng = np.random.default_rng(0)
        for split, n in (("train", per_class), ("test", max(2, per_class // 5))):
            for name in (*CIFAR10_CLASSES, *(["unicorn"] if extra_class else [])):
                (box / split / name).mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(box / split / name / f"{i}.jpg")
        if truncate:
            victim = box / "train" / "cat" / "1.jpg"
            victim.write_bytes(victim.read_bytes()[:150])
        return box

    def npz(box: Path, per_train: int, per_test: int, shape=(32, 32, 3)) -> Path:
        for split, n in (("train", per_train), ("test", per_test)):
            y = np.repeat(np.arange(10), n)
            np.savez(box / f"{split}.npz", x=np.zeros((len(y), *shape), np.uint8), y=y)
        return box

    out += [
        Attempt("data", "truncated JPEG", data_attempt(lambda b: images(b, 2, truncate=True), "train",
                                                       ("1.jpg", "cannot decode"))),
        Attempt("data", "fewer than 10 images per class", data_attempt(lambda b: npz(b, 4, 2), "", ("split", "class"),
                                                                       loader="cifar10-mobilenet_v2")),
        Attempt("data", "one image per class in test (ResNet-20 split)", data_attempt(
            lambda b: npz(b, 20, 1), "", ("split", "class"), loader="cifar10-resnet20")),
        Attempt("data", "npz images of the wrong shape", data_attempt(lambda b: npz(b, 3, 2, (28, 28)), "train",
                                                                      ("train.npz", "32, 32, 3"))),
        Attempt("data", "image folder with a class that is not CIFAR-10", data_attempt(
            lambda b: images(b, 2, extra_class=True), "train", ("unicorn",))),
        Attempt("data", "64x64 images", data_attempt(lambda b: images(b, 1, size=64), "train", ("32x32",))),
        Attempt("data", "root that is a text file", data_attempt(lambda b: (b / "x.txt").write_text("x") and b / "x.txt",
                                                                 "train", ("x.txt",))),
        Attempt("data", "empty folder", data_attempt(lambda b: b, "train", ("no CIFAR-10",))),
    ]

    @add("data", "ResNet-20 search split disjoint from its weights' training images")
    def _(box: Path) -> Outcome:
        from ajpq_env.tasks import TASKS, load_splits

        rng = np.random.default_rng(0)
        data = {}
        for split, n, parity in (("train", 20, 0), ("test", 6, 1)):
            y = np.repeat(np.arange(10), n)
            data[split] = ((rng.integers(0, 128, (len(y), 32, 32, 3)) * 2 + parity).astype(np.uint8), y)
            np.savez(box / f"{split}.npz", x=data[split][0], y=y)

        def check() -> str | None:
            splits = load_splits("cifar10-resnet20", data_root=box)
            train = {img.tobytes() for img in data["train"][0]}
            if {img.tobytes() for img in splits["search"].images} & train:
                return "the search split holds training images"
            if not TASKS["cifar10-resnet20"].meta.get("search_disjoint_from_weights"):
                return "the provenance is not recorded"
            return None

        return judge_check(check)

    # -- finetune (items 5, 6) ------------------------------------------------------------------------------
    def recipe_attempt(command: str, change: Callable[[dict], Any], keywords: tuple[str, ...]) -> Callable[[Path], Outcome]:
        def attempt(box: Path) -> Outcome:
            recipe = copy(INPUTS.recipe, box)
            edit_json(recipe, change)
            argv = (["finetune", "--recipe", str(recipe), *FAST_FT, "--out", str(box / "o")] if command == "finetune"
                    else ["export", str(recipe), "--out", str(box / "o"), "--onnx", "none"])
            return judge_refusal(box, deploy, argv, ("best_recipe.json", *keywords), allowed=(box / "o",))

        return attempt

    first = lambda d: d["layers"][next(iter(d["layers"]))]  # noqa: E731
    recipe_changes = [
        ('bit-width "4"', lambda d: first(d).__setitem__(0, "4"), ('"4"',)),
        ("bit-width null", lambda d: first(d).__setitem__(0, None), ("null",)),
        ("bit-width true", lambda d: first(d).__setitem__(0, True), ("true",)),
        ("bit-width 9", lambda d: first(d).__setitem__(0, 9), ("9",)),
        ("bit-width -1", lambda d: first(d).__setitem__(0, -1), ("-1",)),
        ("bit-width 4.5", lambda d: first(d).__setitem__(0, 4.5), ("4.5",)),
        ("a layer missing", lambda d: d["layers"].pop(next(iter(d["layers"]))), ("missing",)),
        ("meta finetune_steps 1e9", lambda d: d["meta"].update(finetune_steps=10**9), ("finetune_steps",)),
        ("meta bn_calibration_batches 1e9", lambda d: d["meta"].update(bn_calibration_batches=10**9),
         ("bn_calibration_batches",)),
        ('meta b_min "2"', lambda d: d["meta"].update(b_min="2"), ("b_min",)),
        ("meta importance l3", lambda d: d["meta"].update(importance="l3"), ("importance",)),
        ("meta task of another model", lambda d: d["meta"].update(task="synthetic-resnet20", model="resnet20"),
         ("synthetic-resnet20",)),
        ("format other", lambda d: d.update(format="x"), ("not an AJPQ recipe",)),
        ("meta a list", lambda d: d.update(meta=[1]), ("meta",)),
    ]
    for command in ("finetune", "export"):
        for name, change, keywords in recipe_changes:
            out.append(Attempt(f"{command}: recipes", name, recipe_attempt(command, change, keywords)))

    finetune_options = [
        (["--lr", "nan"], ("--lr",)), (["--lr", "inf"], ("--lr",)), (["--lr", "0"], ("lr",)), (["--lr", "-1"], ("--lr",)),
        (["--batch-size", "1"], ("--batch-size",)), (["--batch-size", "0"], ("--batch-size",)),
        (["--epochs", "0"], ("--epochs",)), (["--epochs", "100000000"], ("--epochs",)),
        (["--momentum=inf"], ("--momentum",)), (["--weight-decay", "nan"], ("--weight-decay",)),
        (["--samples-per-epoch", "1"], ("--samples-per-epoch",)), (["--crop-pad", "100000"], ("--crop-pad",)),
        (["--threads", "-1"], ("--threads",)), (["--task", "cifar10-resnet20"], ("cifar10-resnet20",)),
        (["--task", "nope"], ("nope",)),
    ]
    for argv, keywords in finetune_options:
        @add("finetune: options", " ".join(argv))
        def _(box: Path, argv=argv, keywords=keywords) -> Outcome:
            recipe = copy(INPUTS.recipe, box)
            return judge_refusal(box, deploy, ["finetune", "--recipe", str(recipe), *FAST_FT, "--out", str(box / "o"),
                                               *argv], keywords, allowed=(box / "o",))

    @add("finetune: options", "recipe missing")
    def _(box: Path) -> Outcome:
        return judge_refusal(box, deploy, ["finetune", "--recipe", str(box / "none.json")], ("none.json",))

    @add("finetune: options", "--out is a file")
    def _(box: Path) -> Outcome:
        recipe = copy(INPUTS.recipe, box)
        (box / "f").write_text("x")
        return judge_refusal(box, deploy, ["finetune", "--recipe", str(recipe), *FAST_FT, "--out", str(box / "f")],
                             ("is a file",))

    @add("finetune: options", "a valid fine-tune")
    def _(box: Path) -> Outcome:
        recipe = copy(INPUTS.recipe, box)

        def check() -> str | None:
            metrics = json.loads((box / "o" / "finetune.json").read_text())["metrics"]
            return None if all(np.isfinite(v) for v in metrics.values()) else f"non-finite metrics {metrics}"

        return judge_success(box, deploy, ["finetune", "--recipe", str(recipe), *FAST_FT, "--out", str(box / "o")],
                             check, allowed=(box / "o",))

    # -- export ---------------------------------------------------------------------------------------------
    export_cases: list[tuple[str, Callable[[Path], list[str]], tuple[str, ...]]] = [
        ("source missing", lambda b: [str(b / "none")], ("none",)),
        ("--out is a file", lambda b: [str(copy(INPUTS.finetune, b)), "--out", str((b / "f").write_text("x") and b / "f")],
         ("is a file",)),
        ("model.pt truncated", lambda b: [str(_damaged(copy(INPUTS.finetune, b) / "model.pt", lambda d: d[:100]).parent)],
         ("model.pt",)),
        ("model.pt garbage", lambda b: [str(_damaged(copy(INPUTS.finetune, b) / "model.pt", lambda d: b"\x00" * 64).parent)],
         ("model.pt",)),
        ("--onnx bogus", lambda b: [str(copy(INPUTS.finetune, b)), "--onnx", "bogus"], ("--onnx",)),
        ("--task of another model", lambda b: [str(copy(INPUTS.finetune, b)), "--task", "cifar10-resnet20"],
         ("cifar10-resnet20",)),
        ("--threads nan", lambda b: [str(copy(INPUTS.finetune, b)), "--threads", "nan"], ("--threads",)),
    ]
    for name, argv_of, keywords in export_cases:
        @add("export", name)
        def _(box: Path, argv_of=argv_of, keywords=keywords) -> Outcome:
            argv = argv_of(box)
            if "--out" not in argv:
                argv += ["--out", str(box / "o")]
            return judge_refusal(box, deploy, ["export", *argv], keywords, allowed=(box / "o",))

    @add("export", "a valid export (fine-tuned folder, qdq ONNX)")
    def _(box: Path) -> Outcome:
        folder = copy(INPUTS.finetune, box)

        def check() -> str | None:
            manifest = json.loads((box / "o" / "export.json").read_text())
            ok = manifest["artefact"]["payload_bytes"] == manifest["cost"]["size_bytes"]
            return None if ok else "payload bytes differ from the reported size"

        return judge_success(box, deploy, ["export", str(folder), "--out", str(box / "o")], check, allowed=(box / "o",))

    # -- evaluate --------------------------------------------------------------------------------------------
    def header_edit(change: Callable[[dict], Any], resign_payload: bool = False,
                    payload: Callable[[bytes], bytes] | None = None) -> Callable[[Path], Path]:
        def make(box: Path) -> Path:
            folder = copy(INPUTS.export, box)
            path = folder / "model.ajpq"
            data = path.read_bytes()
            (length,) = struct.unpack("<I", data[8:12])
            header, body = json.loads(data[12:12 + length]), data[12 + length:]
            change(header)
            if payload is not None:
                body = payload(body)
            if resign_payload:
                header["payload_sha256"] = hashlib.sha256(body).hexdigest()
            raw = json.dumps(header).encode()
            path.write_bytes(data[:8] + struct.pack("<I", len(raw)) + raw + body)
            return path

        return make

    evaluate_cases: list[tuple[str, Callable[[Path], list[str]], tuple[str, ...]]] = [
        ("a folder", lambda b: [str(copy(INPUTS.export, b))], ("folder",)),
        ("missing", lambda b: [str(b / "x.ajpq")], ("x.ajpq",)),
        ("--batch-size 0", lambda b: [str(copy(INPUTS.export, b) / "model.ajpq"), "--batch-size", "0"], ("--batch-size",)),
        ("corrupt ONNX", lambda b: [str(_damaged(copy(INPUTS.export, b) / "model.onnx", lambda d: d[:300]).with_name(
            "model.ajpq"))], ("model.onnx",)),
        ("artefact truncated", lambda b: [str(_damaged(copy(INPUTS.export, b) / "model.ajpq", lambda d: d[:len(d) // 2]))],
         ("model.ajpq",)),
        ("artefact garbage", lambda b: [str(_damaged(copy(INPUTS.export, b) / "model.ajpq", lambda d: b"\x01" * 100))],
         ("model.ajpq",)),
        ("payload bit flip", lambda b: [str(_damaged(copy(INPUTS.export, b) / "model.ajpq",
                                                     lambda d: d[:-10] + bytes([d[-10] ^ 1]) + d[-9:]))], ("model.ajpq",)),
        ("header input_shape [1,1,3000,3000]", lambda b: [str(header_edit(
            lambda h: h.update(input_shape=[1, 1, 3000, 3000]))(b))], ("input_shape",)),
        ("header width_mult 1e4", lambda b: [str(header_edit(
            lambda h: h["builder_kwargs"].update(width_mult=1e4))(b))], ("width_mult",)),
        ("header num_classes 1e9", lambda b: [str(header_edit(
            lambda h: h["builder_kwargs"].update(num_classes=10**9))(b))], ("num_classes",)),
        ("header builder with ImageNet weights", lambda b: [str(header_edit(
            lambda h: h.update(builder="mobilenet_v2_imagenet", builder_kwargs={"weights": "IMAGENET1K_V1"}))(b))],
         ("weights",)),
        ("NaN payload with a matching checksum", lambda b: [str(header_edit(
            lambda h: None, resign_payload=True, payload=lambda d: b"\xff" * len(d))(b)), "--no-onnx"], ("model.ajpq",)),
        ("--json is a folder", lambda b: [str(copy(INPUTS.export, b) / "model.ajpq"), "--json", str(b)], ("--json",)),
        ("--split bogus", lambda b: [str(copy(INPUTS.export, b) / "model.ajpq"), "--split", "bogus"], ("--split",)),
        ("--task of another model", lambda b: [str(copy(INPUTS.export, b) / "model.ajpq"), "--task", "cifar10-resnet20"],
         ("cifar10-resnet20",)),
    ]
    for name, argv_of, keywords in evaluate_cases:
        @add("evaluate", name, timeout=120)
        def _(box: Path, argv_of=argv_of, keywords=keywords) -> Outcome:
            argv = argv_of(box)
            return judge_refusal(box, deploy, ["evaluate", *argv, "--json", str(box / "e.json")] if "--json" not in argv
                                 else ["evaluate", *argv], keywords, allowed=(box / "e.json",))

    @add("evaluate", "a valid evaluation")
    def _(box: Path) -> Outcome:
        folder = copy(INPUTS.export, box)

        def check() -> str | None:
            result = json.loads((box / "e.json").read_text())
            return None if result["size_matches"] and result["max_abs_diff"] <= 1e-3 else f"mismatch {result}"

        return judge_success(box, deploy, ["evaluate", str(folder / "model.ajpq"), "--json", str(box / "e.json")], check,
                             allowed=(box / "e.json",))

    # -- report ----------------------------------------------------------------------------------------------
    report_cases: list[tuple[str, Callable[[Path], Any], tuple[str, ...]]] = [
        ("half-written last row", lambda r: open(r / "episodes.csv", "ab").write(b"synthetic,synthetic-mobile"),
         ("episodes.csv", "line 5", "unfinished")),
        ("wrong header", lambda r: (r / "episodes.csv").write_text("a,b\n1,2\n"), ("episodes.csv", "line 1")),
        ("text in a number field", lambda r: (r / "episodes.csv").write_bytes(
            (r / "episodes.csv").read_bytes().replace(b",0.125,", b",abc,", 1)), ("line 2", "target")),
        ("another task's recipe", lambda r: edit_json(r / "best_recipe.json", lambda d: d["meta"].update(
            task="synthetic-resnet20")), ("synthetic-resnet20",)),
        ("recipe not JSON", lambda r: (r / "best_recipe.json").write_text("{"), ("best_recipe.json",)),
        ('recipe bit-width "4"', lambda r: edit_json(r / "best_recipe.json", lambda d: first(d).__setitem__(0, "4")),
         ('"4"',)),
        ("episodes.csv missing", lambda r: (r / "episodes.csv").unlink(), ("episodes.csv",)),
        ("episodes.csv empty", lambda r: (r / "episodes.csv").write_text(""), ("episodes.csv",)),
        ("episodes.csv binary garbage", lambda r: (r / "episodes.csv").write_bytes(b"\xff\xfe\x00garbage"),
         ("episodes.csv",)),
        ("export.json not an object", lambda r: ((r / "export").mkdir(), (r / "export" / "export.json").write_text("[]")),
         ("export.json",)),
        ("export.json missing fields", lambda r: ((r / "export").mkdir(),
                                                  (r / "export" / "export.json").write_text('{"artefact": 1}')),
         ("export.json",)),
    ]
    for name, damage, keywords in report_cases:
        @add("report", name)
        def _(box: Path, damage=damage, keywords=keywords) -> Outcome:
            run = copy(INPUTS.run, box)
            damage(run)
            return judge_refusal(box, deploy, ["report", str(run)], keywords, allowed=(run / "report",))

    @add("report", "run folder is a file")
    def _(box: Path) -> Outcome:
        (box / "f").write_text("x")
        return judge_refusal(box, deploy, ["report", str(box / "f")], ("f",))

    @add("report", "--out is a file")
    def _(box: Path) -> Outcome:
        run = copy(INPUTS.run, box)
        (box / "f").write_text("x")
        return judge_refusal(box, deploy, ["report", str(run), "--out", str(box / "f")], ("is a file",))

    @add("report", "a valid report")
    def _(box: Path) -> Outcome:
        run = copy(INPUTS.run, box)
        return judge_success(box, deploy, ["report", str(run)],
                             lambda: None if (run / "report" / "report.md").is_file() else "no report.md",
                             allowed=(run / "report",))

    # -- RL Baselines3 Zoo (item 10) -------------------------------------------------------------------------
    @add("rl zoo", "the README's command, 2 episodes", timeout=600)
    def _(box: Path) -> Outcome:
        command = [sys.executable, "-m", "rl_zoo3.train", "--algo", "td3", "--env", "AJPQ-MobileNet-v0",
                   "--gym-packages", "ajpq_env", "-conf", "agents.hyperparams.td3", "-n", "106", "--eval-freq", "-1",
                   "-f", str(box), "--env-kwargs", "search_size:100"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=500, cwd=box)
        monitors = list(box.glob("td3/*/0.monitor.csv"))
        ok = done.returncode == 0 and monitors and "metric,size_ratio" in monitors[0].read_text()
        return Outcome("fine" if ok else "traceback", done.stderr.strip().splitlines()[-1][:200] if not ok else "",
                       time.perf_counter() - start)

    return out


def _damaged(path: Path, change: Callable[[bytes], bytes]) -> Path:
    path.write_bytes(change(path.read_bytes()))
    return path


# ---------------------------------------------------------------------- isolation
def run_isolated(attempt: Attempt, root: Path) -> Outcome:
    """Run ``attempt`` in a forked child with its own sandbox; a timeout or a killed child is a hang."""
    box = Path(tempfile.mkdtemp(prefix="attempt-", dir=root))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        try:
            resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))
            os.environ["AJPQ_CACHE"] = str(box / ".cache")
            outcome = attempt.run(box)
        except BaseException as err:  # noqa: BLE001 (classified)
            outcome = Outcome("traceback", repr(err)[:300])
        try:
            os.write(write, json.dumps(asdict(outcome)).encode())
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(write)
    chunks, deadline = [], time.monotonic() + attempt.timeout
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([read], [], [], max(left, 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            shutil.rmtree(box, ignore_errors=True)
            return Outcome("hang", f"no answer after {attempt.timeout:.0f} s", attempt.timeout)
        chunk = os.read(read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(box, ignore_errors=True)
    if not chunks:
        return Outcome("hang", f"the child died ({os.waitstatus_to_exitcode(status)}): memory blow-up or crash")
    return Outcome(**json.loads(b"".join(chunks)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-run the attempt table of issue 10 and count the verdicts.")
    parser.add_argument("--only", default="", help="run only the attempts whose group starts with this")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    global INPUTS
    with tempfile.TemporaryDirectory(prefix="ajpq-attempts-") as tmp:
        root = Path(tmp)
        os.environ["AJPQ_CACHE"] = str(root / ".cache")
        start = time.perf_counter()
        INPUTS = Inputs(root / "inputs")
        print(f"inputs made in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        selected = [a for a in attempts() if a.group.startswith(args.only)]
        results: list[tuple[Attempt, Outcome]] = []
        for i, attempt in enumerate(selected, 1):
            outcome = run_isolated(attempt, root)
            results.append((attempt, outcome))
            print(f"[{i}/{len(selected)}] {attempt.group} | {attempt.name}: {outcome.verdict} ({outcome.seconds:.2f} s)"
                  + (f" -- {outcome.detail}" if outcome.verdict not in ("fine", "clear error") else ""), file=sys.stderr)
    counts = Counter(o.verdict for _, o in results)
    lines = ["| group | attempt | verdict | seconds | message |", "|---|---|---|---:|---|"]
    lines += [f"| {a.group} | {a.name.replace('|', '/')} | {o.verdict} | {o.seconds:.2f} | "
              f"{o.detail.replace('|', '/').replace(chr(10), ' ')[:140]} |" for a, o in results]
    lines += ["", f"{len(results)} attempts: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)]
    refusals = [o.seconds for a, o in results if a.group.startswith("search: options") and o.verdict == "clear error"]
    if refusals:
        lines.append(f"search option refusals (in-process, before any env loads): at most {max(refusals):.3f} s")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(counts.get(v, 0) == 0 for v in ("traceback", "silent wrong", "hang", "data loss",
                                                    "code execution")) else 1


if __name__ == "__main__":
    sys.exit(main())

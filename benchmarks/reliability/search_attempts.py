"""Attempts on ``ajpq search``: options refused before loading, run folders, damaged and poisoned checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.reliability import harness
from benchmarks.reliability.harness import (
    SEARCH,
    TD3,
    TD3_BASE,
    Attempt,
    Attempts,
    Outcome,
    Poison,
    copy,
    edit_json,
    judge_library,
    judge_refusal,
    judge_success,
    resign,
    rows,
    strip_walltime,
)

__all__ = ["attempts"]


def attempts() -> list[Attempt]:
    from agents.search import main as search_main
    from ajpq_env import cli

    deploy = cli.main
    out = Attempts()
    add = out.add

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
        run = copy(harness.INPUTS.run, box)
        return judge_refusal(box, search_main, [*SEARCH, "--out", str(run)], ("already holds a search", "--resume"))

    @add("search: run folder", "--resume of a folder that does not exist")
    def _(box: Path) -> Outcome:
        return judge_refusal(box, search_main, [*SEARCH, "--out", str(box / "none"), "--resume"], ("nothing to resume",))

    @add("search: run folder", "--resume of a finished run (nothing left)")
    def _(box: Path) -> Outcome:
        run = copy(harness.INPUTS.run, box)
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
        run = copy(harness.INPUTS.run, box)
        return judge_success(box, search_main, [*SEARCH, "--out", str(run), "--resume", "--target", "0.125",
                                                "--episodes", "4"], allowed=(run,))

    @add("search: run folder", "--resume with other options")
    def _(box: Path) -> Outcome:
        run = copy(harness.INPUTS.run, box)
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
            run = copy(harness.INPUTS.run, box)
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
            run = copy(harness.INPUTS.run, box)
            damage(run)
            return judge_refusal(box, search_main, [*SEARCH, "--out", str(run), "--resume"], keywords)

    # -- code from files (item 2) ------------------------------------------------------------------------
    def poisoned_td3(box: Path, where: str) -> Outcome:
        run = copy(harness.INPUTS.td3, box)
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
        folder = copy(harness.INPUTS.finetune, box)
        torch.save({"state_dict": Poison(box / "MARKER")}, folder / "model.pt")
        return judge_refusal(box, deploy, ["export", str(folder), "--out", str(box / "x"), "--onnx", "none"],
                             ("model.pt",), allowed=(box / "x",))

    return out

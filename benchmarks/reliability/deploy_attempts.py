"""Attempts on ``ajpq finetune``, ``export``, ``evaluate``, ``report`` and the RL Zoo command."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reliability import harness
from benchmarks.reliability.harness import (
    FAST_FT,
    Attempt,
    Attempts,
    Outcome,
    copy,
    damaged,
    edit_json,
    judge_refusal,
    judge_success,
)

__all__ = ["attempts"]


def attempts() -> list[Attempt]:
    from ajpq_env import cli

    deploy = cli.main
    out = Attempts()
    add = out.add

    # -- finetune (items 5, 6) ------------------------------------------------------------------------------
    def recipe_attempt(command: str, change: Callable[[dict], Any], keywords: tuple[str, ...]) -> Callable[[Path], Outcome]:
        def attempt(box: Path) -> Outcome:
            recipe = copy(harness.INPUTS.recipe, box)
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
            recipe = copy(harness.INPUTS.recipe, box)
            return judge_refusal(box, deploy, ["finetune", "--recipe", str(recipe), *FAST_FT, "--out", str(box / "o"),
                                               *argv], keywords, allowed=(box / "o",))

    @add("finetune: options", "recipe missing")
    def _(box: Path) -> Outcome:
        return judge_refusal(box, deploy, ["finetune", "--recipe", str(box / "none.json")], ("none.json",))

    @add("finetune: options", "--out is a file")
    def _(box: Path) -> Outcome:
        recipe = copy(harness.INPUTS.recipe, box)
        (box / "f").write_text("x")
        return judge_refusal(box, deploy, ["finetune", "--recipe", str(recipe), *FAST_FT, "--out", str(box / "f")],
                             ("is a file",))

    @add("finetune: options", "a valid fine-tune")
    def _(box: Path) -> Outcome:
        recipe = copy(harness.INPUTS.recipe, box)

        def check() -> str | None:
            metrics = json.loads((box / "o" / "finetune.json").read_text())["metrics"]
            return None if all(np.isfinite(v) for v in metrics.values()) else f"non-finite metrics {metrics}"

        return judge_success(box, deploy, ["finetune", "--recipe", str(recipe), *FAST_FT, "--out", str(box / "o")],
                             check, allowed=(box / "o",))

    # -- export ---------------------------------------------------------------------------------------------
    export_cases: list[tuple[str, Callable[[Path], list[str]], tuple[str, ...]]] = [
        ("source missing", lambda b: [str(b / "none")], ("none",)),
        ("--out is a file", lambda b: [str(copy(harness.INPUTS.finetune, b)), "--out", str((b / "f").write_text("x") and b / "f")],
         ("is a file",)),
        ("model.pt truncated", lambda b: [str(damaged(copy(harness.INPUTS.finetune, b) / "model.pt", lambda d: d[:100]).parent)],
         ("model.pt",)),
        ("model.pt garbage", lambda b: [str(damaged(copy(harness.INPUTS.finetune, b) / "model.pt", lambda d: b"\x00" * 64).parent)],
         ("model.pt",)),
        ("--onnx bogus", lambda b: [str(copy(harness.INPUTS.finetune, b)), "--onnx", "bogus"], ("--onnx",)),
        ("--task of another model", lambda b: [str(copy(harness.INPUTS.finetune, b)), "--task", "cifar10-resnet20"],
         ("cifar10-resnet20",)),
        ("--threads nan", lambda b: [str(copy(harness.INPUTS.finetune, b)), "--threads", "nan"], ("--threads",)),
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
        folder = copy(harness.INPUTS.finetune, box)

        def check() -> str | None:
            manifest = json.loads((box / "o" / "export.json").read_text())
            ok = manifest["artefact"]["payload_bytes"] == manifest["cost"]["size_bytes"]
            return None if ok else "payload bytes differ from the reported size"

        return judge_success(box, deploy, ["export", str(folder), "--out", str(box / "o")], check, allowed=(box / "o",))

    # -- evaluate --------------------------------------------------------------------------------------------
    def header_edit(change: Callable[[dict], Any], resign_payload: bool = False,
                    payload: Callable[[bytes], bytes] | None = None) -> Callable[[Path], Path]:
        def make(box: Path) -> Path:
            folder = copy(harness.INPUTS.export, box)
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
        ("a folder", lambda b: [str(copy(harness.INPUTS.export, b))], ("folder",)),
        ("missing", lambda b: [str(b / "x.ajpq")], ("x.ajpq",)),
        ("--batch-size 0", lambda b: [str(copy(harness.INPUTS.export, b) / "model.ajpq"), "--batch-size", "0"], ("--batch-size",)),
        ("corrupt ONNX", lambda b: [str(damaged(copy(harness.INPUTS.export, b) / "model.onnx", lambda d: d[:300]).with_name(
            "model.ajpq"))], ("model.onnx",)),
        ("artefact truncated", lambda b: [str(damaged(copy(harness.INPUTS.export, b) / "model.ajpq", lambda d: d[:len(d) // 2]))],
         ("model.ajpq",)),
        ("artefact garbage", lambda b: [str(damaged(copy(harness.INPUTS.export, b) / "model.ajpq", lambda d: b"\x01" * 100))],
         ("model.ajpq",)),
        ("payload bit flip", lambda b: [str(damaged(copy(harness.INPUTS.export, b) / "model.ajpq",
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
        ("--json is a folder", lambda b: [str(copy(harness.INPUTS.export, b) / "model.ajpq"), "--json", str(b)], ("--json",)),
        ("--split bogus", lambda b: [str(copy(harness.INPUTS.export, b) / "model.ajpq"), "--split", "bogus"], ("--split",)),
        ("--task of another model", lambda b: [str(copy(harness.INPUTS.export, b) / "model.ajpq"), "--task", "cifar10-resnet20"],
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
        folder = copy(harness.INPUTS.export, box)

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
            run = copy(harness.INPUTS.run, box)
            damage(run)
            return judge_refusal(box, deploy, ["report", str(run)], keywords, allowed=(run / "report",))

    @add("report", "run folder is a file")
    def _(box: Path) -> Outcome:
        (box / "f").write_text("x")
        return judge_refusal(box, deploy, ["report", str(box / "f")], ("f",))

    @add("report", "--out is a file")
    def _(box: Path) -> Outcome:
        run = copy(harness.INPUTS.run, box)
        (box / "f").write_text("x")
        return judge_refusal(box, deploy, ["report", str(run), "--out", str(box / "f")], ("is a file",))

    @add("report", "a valid report")
    def _(box: Path) -> Outcome:
        run = copy(harness.INPUTS.run, box)
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

    return out

"""The harness of the attempt table: verdicts, judging a command or a library call, the shared inputs, and
running each attempt in a forked child with its own sandbox (see :mod:`benchmarks.reliability`)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Attempt",
    "Attempts",
    "FAST_FT",
    "Inputs",
    "Outcome",
    "Poison",
    "SEARCH",
    "TD3",
    "TD3_BASE",
    "VERDICTS",
    "call",
    "copy",
    "damaged",
    "edit_json",
    "judge_check",
    "judge_library",
    "judge_refusal",
    "judge_success",
    "resign",
    "rows",
    "run_isolated",
    "snapshot",
    "strip_walltime",
]

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


class Attempts(list):
    """A list of :class:`Attempt` with a decorator that registers a function as one."""

    def add(self, group: str, name: str, timeout: float = 180.0) -> Callable[[Callable[[Path], Outcome]], Any]:
        def register(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
            self.append(Attempt(group, name, fn, timeout))
            return fn

        return register


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

#: the shared inputs, made once by the runner before the attempts fork
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


def damaged(path: Path, change: Callable[[bytes], bytes]) -> Path:
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

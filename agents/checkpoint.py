"""Checkpoints of a search run directory, written so that an interrupted run resumes with no episode lost or repeated.

Layout of a run directory ``OUT``::

    OUT/episodes.csv          every finished episode, one row each (RecordWriter), flushed as it ends
    OUT/best_recipe.json      the best recipe under the budget so far (Policy JSON)
    OUT/checkpoint.json       the manifest of the latest checkpoint (replaced atomically)
    OUT/checkpoints/ep-NNNNNN/agent/   the agent's state (SearchAgent.save)
    OUT/checkpoints/ep-NNNNNN/rng.pkl  Python, NumPy and torch global generator states
    OUT/tb/                   TensorBoard logs

A checkpoint is complete before the manifest points at it, and only then are older checkpoint directories
removed. Rows of ``episodes.csv`` written after the latest checkpoint are dropped on resume (the resumed run
plays those episodes again), but only once the whole checkpoint has been read and loaded: a corrupt or
mismatched checkpoint raises :class:`CheckpointError` and leaves every file as it was.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.base import SearchAgent

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "Manifest",
    "capture_rng",
    "count_rows",
    "load_rng",
    "read_manifest",
    "restore_rng",
    "truncate_rows",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "ajpq-search-checkpoint/1"
MANIFEST = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, corrupt, or made by a run with other options."""


@dataclass
class Manifest:
    """What ``checkpoint.json`` holds.

    :param episodes: finished episodes at the checkpoint
    :param identity: the run's options that a resume must repeat (env, algo, target, seed...)
    :param directory: the checkpoint directory, relative to the run directory
    :param best: the best record's CSV row at the checkpoint (``None``: none met the budget yet)
    :param walltime: seconds spent by the run up to the checkpoint
    """

    episodes: int
    identity: dict[str, Any]
    directory: str
    best: dict[str, str] | None = None
    walltime: float = 0.0
    format: str = field(default=CHECKPOINT_FORMAT)


# ---------------------------------------------------------------------- generators
def capture_rng() -> dict[str, Any]:
    """The global generators' states: Python's ``random``, NumPy's legacy global, torch's CPU generator."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------------- episodes.csv
def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        return header, list(reader)


def count_rows(path: Path) -> int:
    """Data rows of a CSV file (0 when it does not exist)."""
    return len(_rows(path)[1]) if path.exists() else 0


def truncate_rows(path: Path, rows: int) -> None:
    """Keep the header and the first ``rows`` rows of ``path`` (atomic rewrite; nothing to do when shorter)."""
    header, data = _rows(path)
    if len(data) <= rows:
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(data[:rows])
    os.replace(tmp, path)


# ---------------------------------------------------------------------- writing
def write_checkpoint(out: Path, agent: SearchAgent, manifest: Manifest) -> None:
    """Save ``agent`` and the global generators as checkpoint ``manifest.episodes`` of run directory ``out``."""
    directory = out / "checkpoints" / f"ep-{manifest.episodes:06d}"
    if directory.exists():
        shutil.rmtree(directory)
    agent.save(directory / "agent")
    with open(directory / "rng.pkl", "wb") as f:
        pickle.dump(capture_rng(), f)
    manifest.directory = str(directory.relative_to(out))
    data = {**manifest.__dict__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, out / MANIFEST)
    for old in (out / "checkpoints").iterdir():
        if old != directory:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- reading
def read_manifest(out: Path, identity: dict[str, Any]) -> Manifest:
    """The manifest of run directory ``out``, checked against this run's ``identity``; reads nothing else.

    :raises CheckpointError: no checkpoint, a corrupt manifest, or options that differ from the checkpoint's
    """
    path = out / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"nothing to resume: {str(path)!r} does not exist (run without --resume to start a search in {str(out)!r})"
        )
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{str(path)!r} is not a checkpoint of format {CHECKPOINT_FORMAT!r}")
        manifest = Manifest(
            episodes=int(data["episodes"]), identity=dict(data["identity"]), directory=str(data["directory"]),
            best=data.get("best"), walltime=float(data.get("walltime", 0.0)),
        )
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"corrupt checkpoint manifest {str(path)!r}: {err!r}") from None
    differ = {
        key: (manifest.identity.get(key), value)
        for key, value in identity.items()
        if _jsonable(manifest.identity.get(key)) != _jsonable(value)
    }
    if differ:
        lines = "; ".join(f"--{k.replace('_', '-')}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(
            f"the checkpoint in {str(out)!r} was made with other options ({lines}); resume with the same options, "
            "or start a new search with another --out"
        )
    if not (out / manifest.directory).is_dir():
        raise CheckpointError(f"corrupt checkpoint: directory {str(out / manifest.directory)!r} is missing")
    return manifest


def load_rng(out: Path, manifest: Manifest) -> dict[str, Any]:
    """The generator states of the checkpoint (not yet restored)."""
    path = out / manifest.directory / "rng.pkl"
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
        if not {"python", "numpy", "torch"} <= set(state):
            raise KeyError("python/numpy/torch")
    except Exception as err:  # unpickling damaged bytes can raise almost anything
        raise CheckpointError(f"corrupt checkpoint: cannot read {str(path)!r}: {err!r}") from None
    return state


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))

"""Run folders and checkpoints of ``ajpq search``: nothing lost, nothing repeated, nothing executed when read.

Layout of a run folder ``OUT``::

    OUT/ajpq-run.json         the run marker, written when the run starts: format and the run's resolved options
    OUT/episodes.csv          every finished episode, one row each (RecordWriter), flushed as it ends
    OUT/best_recipe.json      the best recipe under the budget so far (Policy JSON)
    OUT/checkpoint.json       the manifest of the latest checkpoint (replaced atomically)
    OUT/checkpoints/ep-NNNNNN/agent/   the agent's state (SearchAgent.save: JSON, npz, weights-only tensors)
    OUT/checkpoints/ep-NNNNNN/rng.json Python, NumPy and torch global generator states
    OUT/tb/                   TensorBoard logs

**A run folder is recognised by its marker** (:data:`RUN_MARKER`); ``ajpq search`` refuses to start in any
other non-empty folder, and only ever deletes ``checkpoints/ep-NNNNNN`` folders of its own run.

**Nothing in a checkpoint runs code when read.** Every file is JSON, an ``.npz`` read with
``allow_pickle=False``, or a ``torch.save`` of plain tensors read with ``weights_only=True``; the manifest lists
every file of the checkpoint with its SHA-256, the listed files must be exactly the checkpoint folder's files,
and the folder must be ``checkpoints/ep-NNNNNN`` inside the run folder (no ``..``, no symbolic links).

A checkpoint is complete before the manifest points at it, and only then are older checkpoint folders removed.
Rows of ``episodes.csv`` written after the latest checkpoint are dropped on resume (the resumed run plays those
episodes again), but only once the manifest, every listed file, the CSV rows it keeps and the agent's state have
been read and checked: a corrupt or mismatched checkpoint raises :class:`CheckpointError` and leaves every file
as it was. A run stopped before its first checkpoint resumes from episode 0.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.base import SearchAgent
from ajpq_env.compression import Policy
from ajpq_env.compression.latency import cpu_fields
from ajpq_env.fileio import atomic_write, csv_fields, loads_json
from ajpq_env.records import EpisodeRecord

__all__ = [
    "CHECKPOINT_FORMAT",
    "MANIFEST",
    "RUN_FORMAT",
    "RUN_MARKER",
    "CheckpointError",
    "CsvRows",
    "Manifest",
    "capture_rng",
    "check_new_run_folder",
    "compare_identity",
    "load_rng",
    "machine_info",
    "package_versions",
    "read_csv_rows",
    "read_manifest",
    "read_run_marker",
    "restore_rng",
    "truncate_rows",
    "write_checkpoint",
    "write_run_marker",
]

CHECKPOINT_FORMAT = "ajpq-search-checkpoint/2"
RUN_FORMAT = "ajpq-search-run/1"
MANIFEST = "checkpoint.json"
RUN_MARKER = "ajpq-run.json"
CHECKPOINTS = "checkpoints"
_DIRECTORY = re.compile(r"checkpoints/ep-(\d{6})")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RNG_FILE = "rng.json"
#: largest JSON file (marker, manifest, agent state) read; larger ones are refused before they are read
MAX_JSON_BYTES = 64 * 2**20
#: the files and folders of a run folder that the search writes (none may be a symbolic link)
RUN_ENTRIES = (RUN_MARKER, "episodes.csv", "best_recipe.json", MANIFEST, CHECKPOINTS, "tb")


class CheckpointError(ValueError):
    """A run folder that cannot be resumed: missing, corrupt, or made by a run with other options."""


# ---------------------------------------------------------------------- small readers
def read_json(path: Path, what: str) -> Any:
    """The JSON value of ``path`` (at most :data:`MAX_JSON_BYTES`); :class:`CheckpointError` naming ``what``."""
    try:
        if path.is_symlink() or not path.is_file():
            raise CheckpointError(f"{what} {str(path)!r} is missing or not a regular file")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{what} {str(path)!r} is larger than {MAX_JSON_BYTES} bytes")
        return loads_json(path.read_bytes())
    except CheckpointError:
        raise
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"corrupt {what} {str(path)!r}: {err}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------- the run folder
def check_new_run_folder(out: Path) -> None:
    """Refuse to start a new search in ``out`` unless it is absent or an empty folder that can be written.

    :raises ValueError: ``out`` is a file, holds a search already (pass ``--resume``), holds anything else, or
        cannot be created or written
    """
    if out.is_symlink() and not out.exists():
        raise ValueError(f"--out {str(out)!r} is a dangling symbolic link; choose another --out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; choose a new or empty folder")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if (out / RUN_MARKER).exists() or (out / MANIFEST).exists():
            raise ValueError(f"{str(out)!r} already holds a search; pass --resume to continue it, or choose another --out")
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(
                f"--out {str(out)!r} is not empty ({shown}) and is not a run folder of ajpq search (no {RUN_MARKER}); "
                "a search only starts in a new or empty folder: choose another --out"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"--out {str(out)!r} is not writable; choose a folder you can write to")
        return
    parent = out.parent
    while not parent.exists():
        if parent.is_symlink():
            raise ValueError(f"--out {str(out)!r}: {str(parent)!r} is a dangling symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {str(out)!r} cannot be created: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(out)!r} cannot be created: {str(parent)!r} is not writable")


#: the distributions whose versions shape a search's trajectory (recorded in the run marker, not compared on resume)
TRAJECTORY_PACKAGES = ("ajpq-env", "torch", "numpy", "gymnasium", "stable-baselines3", "sb3-contrib", "torch-pruning")


def package_versions() -> dict[str, str | None]:
    """Python's and :data:`TRAJECTORY_PACKAGES`' versions (``None``: not installed): the same command gives the same
    episodes only with the same versions, so a run records them beside its options."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRAJECTORY_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def machine_info() -> dict[str, Any]:
    """The processor and torch's CPU kernels a run used. With the same code, versions and seed, a learned search's
    episodes can still part on another machine: the TD3 updates run through MKL and oneDNN, whose kernels depend
    on the processor, and a last-bit difference in one update grows into another trajectory. So a run records
    them beside the package versions (the rules' episodes, free of learned updates, stay the same)."""
    fields = cpu_fields()
    cpu = platform.processor() or platform.machine()
    if "model name" in fields:  # Linux: with the vendor/family/model numbers (a virtual machine may say only "AMD EPYC")
        cpu = fields["model name"] + "".join(f", {key} {fields[key]}" for key in ("vendor_id", "cpu family", "model")
                                             if key in fields)
    libraries = [line.strip(" -") for line in torch.__config__.show().splitlines()
                 if "Math Kernel Library" in line or "MKL-DNN" in line or "oneDNN" in line]
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_cpu_libraries": libraries}


def write_run_marker(out: Path, identity: dict[str, Any]) -> None:
    """Create ``out`` and write its run marker (the run's resolved options, the package versions and the machine it
    ran with)."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"format": RUN_FORMAT, "identity": _jsonable(identity), "versions": package_versions(),
            "machine": machine_info(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(out / RUN_MARKER, json.dumps(data, indent=1))


def read_run_marker(out: Path) -> dict[str, Any]:
    """The resolved options stored in the run marker of ``out``.

    :raises CheckpointError: ``out`` is no run folder of ``ajpq search`` (nothing to resume), or its marker or
        entries are damaged (a symbolic link where the search writes)
    """
    if not out.is_dir():
        raise CheckpointError(
            f"nothing to resume: {str(out)!r} is not a run folder (run without --resume to start a search there)"
        )
    for name in RUN_ENTRIES:
        if (out / name).is_symlink():
            raise CheckpointError(f"{str(out / name)!r} is a symbolic link; a run folder holds only its own files")
    path = out / RUN_MARKER
    if not path.exists():
        if (out / MANIFEST).exists():
            raise CheckpointError(
                f"{str(out)!r} was written by an older ajpq search whose checkpoints hold pickled state, which is not "
                "read any more (it could run code); start a new search with another --out"
            )
        raise CheckpointError(
            f"nothing to resume: {str(out)!r} holds no {RUN_MARKER} (run without --resume to start a search in a new "
            "or empty folder)"
        )
    data = read_json(path, "run marker")
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT or not isinstance(data.get("identity"), dict):
        raise CheckpointError(f"corrupt run marker {str(path)!r}: expected format {RUN_FORMAT!r} with an 'identity'")
    return data["identity"]


def compare_identity(stored: dict[str, Any], now: dict[str, Any], out: Path, keys: tuple[str, ...] | None = None) -> None:
    """Refuse a resume whose resolved options differ from the stored ones, listing every difference."""
    keys = tuple(now) if keys is None else keys
    differ = {k: (stored.get(k), now[k]) for k in keys if _jsonable(stored.get(k)) != _jsonable(now[k])}
    if differ:
        lines = "; ".join(f"--{k.replace('_', '-')}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(
            f"the search in {str(out)!r} was made with other options ({lines}); resume with the same options, "
            "or start a new search with another --out"
        )


# ---------------------------------------------------------------------- generators
def capture_rng() -> dict[str, Any]:
    """The global generators' states as JSON: Python's ``random``, NumPy's legacy global, torch's CPU generator."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": numpy_state["state"]["key"].tolist(),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_rng(state: Any) -> dict[str, Any]:
    """Check a :func:`capture_rng` state and convert it to what the setters take; ``ValueError`` when malformed."""
    if not isinstance(state, dict) or set(state) != {"python", "numpy", "torch"}:
        raise ValueError("expected an object with keys python, numpy and torch")
    version, internal, gauss = state["python"]
    if not (_is_int(version) and isinstance(internal, list) and len(internal) == 625
            and all(_is_int(v) and 0 <= v < 2**32 for v in internal)
            and (gauss is None or isinstance(gauss, float))):
        raise ValueError("python: expected [version, 625 ints in 0..2**32-1, gauss]")
    numpy = state["numpy"]
    key = numpy.get("key") if isinstance(numpy, dict) else None
    if not (isinstance(numpy, dict) and numpy.get("bit_generator") == "MT19937" and isinstance(key, list)
            and len(key) == 624 and all(_is_int(v) and 0 <= v < 2**32 for v in key)
            and _is_int(numpy.get("pos")) and 0 <= numpy["pos"] <= 624 and numpy.get("has_gauss") in (0, 1)
            and isinstance(numpy.get("gauss"), float)):
        raise ValueError("numpy: expected the MT19937 state (624 key words, pos, has_gauss, gauss)")
    raw = base64.b64decode(state["torch"], validate=True) if isinstance(state["torch"], str) else b""
    if len(raw) != torch.get_rng_state().numel():
        raise ValueError(f"torch: expected {torch.get_rng_state().numel()} base64-encoded bytes")
    parsed = {
        "python": (version, tuple(internal), gauss),
        "numpy": {"bit_generator": "MT19937", "state": {"key": np.array(key, dtype=np.uint32), "pos": numpy["pos"]},
                  "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]},
        "torch": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
    }
    # each setter's own checks, on scratch generators: a state of the right shape can still be invalid (torch
    # refuses an mt19937 state whose words are inconsistent), and the global generators are set only after the
    # agent has loaded
    for name, trial in (("python", lambda: random.Random().setstate(parsed["python"])),
                        ("numpy", lambda: np.random.RandomState().set_state(parsed["numpy"])),
                        ("torch", lambda: torch.Generator().set_state(parsed["torch"]))):
        try:
            trial()
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"{name}: not a generator state ({err})") from None
    return parsed


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global generators to a state returned by :func:`load_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------------- episodes.csv
@dataclass
class CsvRows:
    """The lines of ``episodes.csv``: header, complete rows (text, without line ends), and whether a last,
    unfinished row (no line end: a run killed while writing it) follows them."""

    header: list[str]
    rows: list[str]
    partial: bool


def read_csv_rows(path: Path) -> CsvRows:
    """Split ``episodes.csv`` into its header and complete rows (no field of a record holds a line break)."""
    if not path.exists():
        return CsvRows([], [], False)
    text = path.read_bytes().decode("utf-8")
    lines = text.split("\n")
    partial = lines[-1] != ""
    lines = [line.removesuffix("\r") for line in lines[:-1]]
    if not lines:
        return CsvRows([], [], partial)
    return CsvRows(csv_fields(lines[0]), lines[1:], partial)


def parse_row(line: str, header: list[str]) -> dict[str, str]:
    values = csv_fields(line)
    if len(values) != len(header):
        raise ValueError(f"{len(values)} fields, expected {len(header)}")
    return dict(zip(header, values, strict=True))


def truncate_rows(path: Path, rows: int) -> None:
    """Keep the header and the first ``rows`` complete rows of ``path`` (atomic rewrite; an absent file gets the
    header only)."""
    content = read_csv_rows(path)
    header = content.header or [f.name for f in fields(EpisodeRecord)]
    kept = content.rows[:rows]
    text = io.StringIO(newline="")
    csv.writer(text).writerow(header)
    text.writelines(line + "\r\n" for line in kept)
    atomic_write(path, text.getvalue())


def check_csv_prefix(path: Path, episodes: int) -> list[dict[str, str]]:
    """The first ``episodes`` rows of ``episodes.csv``, checked: the record header, one row per episode in order.

    :raises CheckpointError: naming the file and line of what is wrong
    """
    try:
        content = read_csv_rows(path)
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError, as is a header that is not CSV
        raise CheckpointError(f"cannot read {str(path)!r}: {err}") from None
    expected = [f.name for f in fields(EpisodeRecord)]
    if episodes == 0 and not content.header:
        return []
    if content.header != expected:
        raise CheckpointError(f"{str(path)!r} line 1: not the header of an episodes.csv ({', '.join(expected)})")
    if len(content.rows) < episodes:
        raise CheckpointError(
            f"{str(path)!r} has {len(content.rows)} complete rows but the checkpoint has {episodes} episodes: the run "
            "folder was modified; start a new search"
        )
    rows = []
    for i, line in enumerate(content.rows[:episodes]):
        try:
            row = parse_row(line, expected)
            record = EpisodeRecord.from_row(row)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{str(path)!r} line {i + 2}: not an episode record ({err})") from None
        if record.episode != i:
            raise CheckpointError(f"{str(path)!r} line {i + 2}: episode {record.episode}, expected {i}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- the manifest
@dataclass
class Manifest:
    """What ``checkpoint.json`` holds.

    :param episodes: finished episodes at the checkpoint
    :param identity: the run's resolved options that a resume must repeat (env, algo, target, seed...)
    :param directory: the checkpoint folder, ``checkpoints/ep-NNNNNN`` relative to the run folder
    :param best: the best record's CSV row at the checkpoint (``None``: none met the budget yet)
    :param walltime: seconds spent by the run up to the checkpoint
    :param files: every file of the checkpoint folder (POSIX path relative to it) -> its SHA-256
    """

    episodes: int
    identity: dict[str, Any]
    directory: str
    best: dict[str, str] | None = None
    walltime: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    format: str = field(default=CHECKPOINT_FORMAT)


def write_checkpoint(out: Path, agent: SearchAgent, manifest: Manifest) -> None:
    """Save ``agent`` and the global generators as checkpoint ``manifest.episodes`` of run folder ``out``."""
    root = out / CHECKPOINTS
    directory = root / f"ep-{manifest.episodes:06d}"
    _remove(directory)
    agent.save(directory / "agent")
    (directory / _RNG_FILE).write_text(json.dumps(capture_rng()))
    manifest.directory = directory.relative_to(out).as_posix()
    manifest.files = {p.relative_to(directory).as_posix(): _sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()}
    data = {**manifest.__dict__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(out / MANIFEST, json.dumps(data, indent=1))
    for old in root.iterdir():  # only this run's own checkpoint folders, never anything else
        if old != directory and re.fullmatch(r"ep-\d{6}", old.name):
            _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def read_manifest(out: Path) -> Manifest | None:
    """The checked manifest of run folder ``out``, or ``None`` when no checkpoint was written yet.

    Checked: the format, every field's type and range, that the folder is ``checkpoints/ep-NNNNNN`` of this
    many episodes inside ``out`` (no symbolic link on the way), that the listed files are exactly the folder's
    files and match their SHA-256, and that the best row is an episode record with a recipe.

    :raises CheckpointError: naming the file and what is wrong
    """
    path = out / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    data = read_json(path, "checkpoint manifest")
    where = f"checkpoint manifest {str(path)!r}"
    if not isinstance(data, dict):
        raise CheckpointError(f"corrupt {where}: expected a JSON object")
    if data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{where} has format {data.get('format')!r}, expected {CHECKPOINT_FORMAT!r} (older checkpoints held "
            "pickled state and are not read); start a new search with another --out"
        )
    episodes, identity, directory = data.get("episodes"), data.get("identity"), data.get("directory")
    best, walltime, files = data.get("best"), data.get("walltime", 0.0), data.get("files")
    if not _is_int(episodes) or episodes < 0:
        raise CheckpointError(f"corrupt {where}: 'episodes' must be an int >= 0, got {episodes!r}")
    if not isinstance(identity, dict):
        raise CheckpointError(f"corrupt {where}: 'identity' must be an object")
    if not isinstance(walltime, int | float) or isinstance(walltime, bool) or not math.isfinite(walltime) or walltime < 0:
        raise CheckpointError(f"corrupt {where}: 'walltime' must be a finite number >= 0, got {walltime!r}")
    if directory != f"{CHECKPOINTS}/ep-{episodes:06d}" or not _DIRECTORY.fullmatch(str(directory)):
        raise CheckpointError(
            f"corrupt {where}: 'directory' must be '{CHECKPOINTS}/ep-{episodes:06d}' inside the run folder, "
            f"got {directory!r}"
        )
    if best is not None:
        best = _check_best(best, episodes, where)
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"corrupt {where}: 'files' must map every checkpoint file to its SHA-256")
    manifest = Manifest(episodes, identity, directory, best, float(walltime), files)
    _check_files(out, manifest, where)
    return manifest


def _check_best(best: Any, episodes: int, where: str) -> dict[str, str]:
    names = {f.name for f in fields(EpisodeRecord)}
    if not isinstance(best, dict) or set(best) != names or not all(isinstance(v, str) for v in best.values()):
        raise CheckpointError(f"corrupt {where}: 'best' must be an episode record row (strings for {sorted(names)})")
    try:
        record = EpisodeRecord.from_row(best)
        Policy.from_dict(record.recipe)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"corrupt {where}: 'best' is not a valid record: {err}") from None
    if not 0 <= record.episode < episodes:
        raise CheckpointError(f"corrupt {where}: 'best' is episode {record.episode}, outside 0..{episodes - 1}")
    return best


def _check_files(out: Path, manifest: Manifest, where: str) -> None:
    root, directory = out / CHECKPOINTS, out / manifest.directory
    for p in (root, directory):
        if p.is_symlink() or not p.is_dir():
            raise CheckpointError(f"corrupt checkpoint: {str(p)!r} is missing or not a plain folder")
    base = directory.resolve()
    if not base.is_relative_to(out.resolve()):
        raise CheckpointError(f"corrupt checkpoint: {str(directory)!r} lies outside the run folder")
    for name, digest in manifest.files.items():
        parts = name.split("/") if isinstance(name, str) else []
        if not parts or any(p in ("", ".", "..") for p in parts) or "\\" in name or not isinstance(digest, str) \
                or not _SHA256.fullmatch(digest):
            raise CheckpointError(f"corrupt {where}: bad file entry {name!r}: {digest!r}")
    present = set()
    for p in directory.rglob("*"):
        if p.is_symlink():
            raise CheckpointError(f"corrupt checkpoint: {str(p)!r} is a symbolic link")
        if p.is_file():
            present.add(p.relative_to(directory).as_posix())
        elif not p.is_dir():
            raise CheckpointError(f"corrupt checkpoint: {str(p)!r} is not a regular file")
    missing, extra = sorted(set(manifest.files) - present), sorted(present - set(manifest.files))
    if missing or extra:
        raise CheckpointError(
            f"corrupt checkpoint in {str(directory)!r}: files missing {missing[:5]}, files not in the manifest {extra[:5]}"
        )
    for name, digest in manifest.files.items():
        if _sha256(directory / name) != digest:
            raise CheckpointError(f"corrupt checkpoint: {str(directory / name)!r} does not match its SHA-256 in {MANIFEST}")


def load_rng(out: Path, manifest: Manifest) -> dict[str, Any]:
    """The generator states of the checkpoint (checked, not yet restored)."""
    path = out / manifest.directory / _RNG_FILE
    try:
        return _parse_rng(read_json(path, "generator state"))
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"corrupt checkpoint: {str(path)!r}: {err}") from None

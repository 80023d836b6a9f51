"""Every episode is a replayable record (in the manner of CompilerGym's ``CompilerEnvState``).

An :class:`EpisodeRecord` holds what is needed to rebuild and re-measure the compressed model: the env id and
its arguments, the recipe, and the numbers it was reported with. Records go to CSV one row at a time
(:class:`RecordWriter`); :meth:`AJPQEnv.validate` replays one in a fresh env and returns a
:class:`ValidationResult` listing what did not match instead of raising.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ajpq_env.fileio import csv_fields, loads_json

__all__ = ["EpisodeRecord", "RecordWriter", "ValidationResult", "read_records"]


@dataclass
class EpisodeRecord:
    """One finished episode.

    :param env_id: the registered id (or ``""`` for an env built by hand)
    :param task: task name
    :param mode: ``"joint"``, ``"prune"`` or ``"quant"``
    :param resource: budgeted resource
    :param target: budget ratio
    :param agent: who chose the actions (``"td3"``, ``"random"``...)
    :param seed: the seed of the run
    :param episode: episode number within the run (0-based)
    :param metric: search-split metric of the compressed model
    :param fp32_metric: search-split metric of the FP32 model
    :param size_ratio: storage / FP32 storage
    :param macs_ratio: MACs / FP32 MACs
    :param bitops_ratio: BitOPs / FP32 BitOPs
    :param reward: the episode's final reward
    :param walltime: seconds from reset to the end of the episode
    :param recipe: the policy as a recipe dict (see :class:`~ajpq_env.compression.Policy`)
    :param env_kwargs: keyword arguments the env was made with (JSON-serialisable)
    """

    env_id: str
    task: str
    mode: str
    resource: str
    target: float
    agent: str = ""
    seed: int | None = None
    episode: int = 0
    metric: float = math.nan
    fp32_metric: float = math.nan
    size_ratio: float = math.nan
    macs_ratio: float = math.nan
    bitops_ratio: float = math.nan
    reward: float = math.nan
    walltime: float = math.nan
    recipe: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, str]:
        row = asdict(self)
        row["recipe"] = json.dumps(self.recipe, separators=(",", ":"))
        row["env_kwargs"] = json.dumps(self.env_kwargs, separators=(",", ":"))
        return {k: "" if v is None else str(v) for k, v in row.items()}

    @classmethod
    def from_row(cls, row: dict[str, str]) -> EpisodeRecord:
        """The record of a CSV row (:meth:`to_row`); ``ValueError`` naming the first field that is not what the
        writer writes (a missing field, text for a number, a recipe that is not a JSON object...)."""
        if not isinstance(row, dict):
            raise ValueError(f"expected a row (field name -> text), got {type(row).__name__}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = row.get(f.name, "")
            if not isinstance(raw, str):
                raise ValueError(f"field {f.name!r} must be text, got {type(raw).__name__}")
            try:
                kwargs[f.name] = _parse_field(f.name, f.type, raw)
            except ValueError as err:
                raise ValueError(f"field {f.name!r}: {err}") from None
        return cls(**kwargs)


def _parse_field(name: str, kind: Any, raw: str) -> Any:
    if name in ("recipe", "env_kwargs"):
        value = loads_json(raw) if raw else {}
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {raw[:40]!r}")
        return value
    if name in ("seed", "episode"):
        if name == "seed" and raw in ("", "None"):
            return None
        value = int(raw or 0)
        if name == "episode" and value < 0:
            raise ValueError(f"expected an episode number >= 0, got {raw!r}")
        return value
    if kind in ("float", float):
        value = float(raw) if raw else math.nan
        if math.isinf(value):
            raise ValueError(f"expected a finite number (or empty / nan), got {raw!r}")
        return value
    return raw


@dataclass
class ValidationResult:
    """Outcome of replaying a record: ``ok`` and, when not, every mismatch as a readable line."""

    record: EpisodeRecord
    errors: list[str] = field(default_factory=list)
    replayed: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        head = f"{self.record.env_id or self.record.task} episode {self.record.episode}"
        return f"{head}: OK" if self.ok else f"{head}: " + "; ".join(self.errors)


class RecordWriter:
    """Appends records to a CSV file, one flushed and synced row per record (an interrupt loses no finished row).

    :param path: the CSV file (created with a header when new or empty)
    :param record_type: a dataclass with a ``to_row() -> dict[str, str]`` method (default :class:`EpisodeRecord`)
    """

    def __init__(self, path: str | Path, record_type: type = EpisodeRecord) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=[f.name for f in fields(record_type)])
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, record: Any) -> None:
        self._writer.writerow(record.to_row())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | Path) -> Iterator[EpisodeRecord]:
    """The records of a CSV written by :class:`RecordWriter`, checked row by row.

    :raises ValueError: naming the file and line: not the record header, a row with another number of fields,
        a field that does not parse, or an unfinished last row (a writer killed in the middle of it)
    """
    path = Path(path)
    expected = [f.name for f in fields(EpisodeRecord)]
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not a text CSV file ({err})") from None
    lines = text.split("\n")
    if not text:
        raise ValueError(f"{str(path)!r} is empty; expected the header {','.join(expected)}")
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if number == len(lines):
            if line:
                raise ValueError(f"{str(path)!r} line {number}: the last row is unfinished (no line end: a search "
                                 "stopped while writing it); `ajpq search --resume` drops it")
            return
        try:
            values = csv_fields(line)
        except ValueError as err:
            raise ValueError(f"{str(path)!r} line {number}: {err}") from None
        if number == 1:
            if values != expected:
                raise ValueError(f"{str(path)!r} line 1: not an episodes.csv header; expected {','.join(expected)}")
            continue
        if len(values) != len(expected):
            raise ValueError(f"{str(path)!r} line {number}: {len(values)} fields, expected {len(expected)}")
        try:
            yield EpisodeRecord.from_row(dict(zip(expected, values, strict=True)))
        except ValueError as err:
            raise ValueError(f"{str(path)!r} line {number}: {err}") from None

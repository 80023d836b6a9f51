"""Reading files a user may be handed, where every malformation is a ``ValueError``, and writing files atomically.

The standard parsers have two exits that are not: ``json.loads`` raises ``RecursionError`` on input nested deeper
than the interpreter's stack (``"[" * 100_000`` is 100 kB), and the ``csv`` module raises ``csv.Error`` on a field
longer than ``csv.field_size_limit()`` (131,072 characters by default), which a recipe of a large model reaches in
``episodes.csv`` (one bit-width per channel: ResNet-50 has about 26,000). Every reader of a user-supplied file
goes through these helpers, so that each names the file and what is wrong instead of raising a traceback.

:func:`atomic_write` writes a file whole or not at all (a temporary file renamed into place, removed when the
write or the rename fails), so that an interrupted or refused write never leaves a half file or a stray one.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["MAX_CSV_FIELD", "atomic_write", "check_int", "csv_dicts", "csv_fields", "csv_header", "loads_json"]

#: The longest CSV field read (a recipe of 64 MiB, the limit of every JSON file of a run); longer is refused.
MAX_CSV_FIELD = 64 * 2**20


def loads_json(data: str | bytes) -> Any:
    """``json.loads``, with input nested too deeply for the parser refused as ``json.JSONDecodeError`` (a
    ``ValueError``), so that every handler of malformed JSON also handles it."""
    try:
        return json.loads(data)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to parse (no file of AJPQ nests more than a few levels)",
                                   "", 0) from None


def check_int(value: object, low: int, high: int, what: str, source: str) -> int:
    """``value`` when it is an integer (not a bool) in ``low..high``; else ``ValueError`` naming ``source`` and
    ``what`` (a field of a file read)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{source}: {what} must be an integer in {low}..{high}, got {value!r}")
    return value


# A process-wide setting of the csv module, made once on import (every reader of ours imports this module): only
# ever raised, to the size of the largest file of a run.
if csv.field_size_limit() < MAX_CSV_FIELD:
    csv.field_size_limit(MAX_CSV_FIELD)


def csv_fields(line: str) -> list[str]:
    """The fields of one CSV line; ``ValueError`` when it is not one."""
    try:
        return next(csv.reader([line]), [])
    except csv.Error as err:
        raise ValueError(f"not a CSV line ({err})") from None


def csv_dicts(reader: csv.DictReader) -> Iterator[dict[str, str]]:
    """The rows of ``reader``, with ``csv.Error`` raised as ``ValueError`` naming the line."""
    try:
        yield from reader
    except csv.Error as err:
        # line_num counts the lines of the rows read so far: the failing row starts on the next one
        raise ValueError(f"line {reader.line_num + 1}: not a CSV row ({err})") from None


def csv_header(lines: Iterable[str]) -> list[str]:
    """The first row of ``lines`` (``[]`` when there is none); ``ValueError`` when it is not CSV."""
    try:
        return next(csv.reader(lines), [])
    except csv.Error as err:
        raise ValueError(f"line 1: not a CSV header ({err})") from None


def atomic_write(path: str | os.PathLike[str], data: str | bytes | Callable[[IO[bytes]], object]) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed into place; on any error the
    temporary file is removed and the error raised (``path`` keeps its old content).

    :param data: text (UTF-8), bytes, or a function that writes into the open binary file (such as
        ``lambda f: np.savez(f, **arrays)``, which then streams instead of building the bytes in memory)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            with open(tmp, "wb") as f:
                data(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

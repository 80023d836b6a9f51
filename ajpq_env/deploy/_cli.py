"""Command-line plumbing shared by the deploy subcommands: a documented config dataclass becomes an argparse parser.

Every field of the dataclass is one option (``snake_case`` -> ``--kebab-case``); its help text is the field's
``metadata["help"]`` plus its default (unless the help states it). A field without a default is a required
option, one with ``metadata["positional"]`` a positional argument. Supported field types: ``int``, ``float``,
``str``, ``Path``, ``bool`` (``--x`` when the default is ``False``, else ``--x`` / ``--no-x``) and ``X | None``
of those (``none`` on the command line is ``None``); ``metadata["choices"]`` restricts the values, and
``low`` / ``high`` bound a number (inclusive). Every float must be finite: ``nan`` and ``inf`` are usage errors
(exit code 2), as is a number out of its bounds, before anything is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = ["MAX_THREADS", "build_parser", "check_output_folder", "existing_file", "finite", "option", "parse_config",
           "parse_configs", "set_threads"]

#: the largest ``--threads`` accepted
MAX_THREADS = 1024

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False,
           choices: tuple[Any, ...] | None = None, metavar: str | None = None, low: float | None = None,
           high: float | None = None) -> Any:
    """A dataclass field documented for the command line (see the module docstring)."""
    meta = {"help": help, "positional": positional, "choices": choices, "metavar": metavar, "low": low, "high": high}
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """``(type, optional)`` of an annotation ``X`` or ``X | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported option type {annotation!r}")
        return args[0], True
    return annotation, False


def finite(value: float, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` when it is a finite number within ``[low, high]``; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must lie in [{'-inf' if low is None else f'{low:g}'}, "
                         f"{'inf' if high is None else f'{high:g}'}], got {value!r}")
    return value


def _converter(kind: type, optional: bool, low: float | None, high: float | None) -> Any:
    def convert(text: str) -> Any:
        if optional and text.lower() in ("", "none"):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a ' + kind.__name__}, "
                                             f"got {text!r}") from None
        if kind in (int, float):
            try:
                finite(value, "the value", low, high)
            except ValueError as err:
                raise argparse.ArgumentTypeError(f"{str(err).removeprefix('the value ')}") from None
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert


def _add_fields(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config: type) -> None:
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        kind, optional = _base_type(hints[f.name])
        meta = f.metadata
        help_text = meta.get("help", "")
        kwargs: dict[str, Any] = {}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        convert = _converter(kind, optional, meta.get("low"), meta.get("high"))
        if meta.get("positional"):
            parser.add_argument(f.name, type=convert, help=help_text, **kwargs)
            continue
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        if not required and "default" not in help_text:
            help_text = f"{help_text} (default: {'unset' if default is None else default})"
        if kind is bool:
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=default, help=help_text)
            continue
        parser.add_argument(flag, type=convert, default=default, required=required, help=help_text, **kwargs)


def build_parser(
    configs: list[tuple[str | None, type]], prog: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one argument per field of each dataclass; a titled entry becomes an argument group."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for title, config in configs:
        _add_fields(parser if title is None else parser.add_argument_group(title), config)
    return parser


def parse_config(config: type[T], argv: list[str] | None, *, prog: str, description: str,
                 epilog: str | None = None) -> T:
    """Parse ``argv`` into an instance of the dataclass ``config``."""
    return parse_configs([(None, config)], argv, prog=prog, description=description, epilog=epilog)[0]


def parse_configs(configs: list[tuple[str | None, type]], argv: list[str] | None, *, prog: str, description: str,
                  epilog: str | None = None) -> list[Any]:
    """Parse ``argv`` into one instance of each dataclass of ``configs`` (``(group title or None, class)``)."""
    namespace = vars(build_parser(configs, prog, description, epilog).parse_args(argv))
    return [config(**{f.name: namespace[f.name] for f in dataclasses.fields(config)}) for _, config in configs]


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` when ``threads > 0``; 0 keeps torch's default."""
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must lie in 0..{MAX_THREADS} (0 = torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def existing_file(path: Path, what: str) -> Path:
    """``path`` when it is a file; otherwise a ``FileNotFoundError`` that names ``what`` was looked for."""
    if path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} is a folder, not a file")
    if path.exists() and not path.is_file():  # a device, a FIFO, a socket (or a link to one)
        raise FileNotFoundError(f"{what} {str(path)!r} is not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return path


def check_output_file(path: Path, option: str) -> None:
    """``ValueError`` unless ``path`` names a file (not a folder) whose folder exists or can be created and is
    writable: checked before any work whose result would be lost."""
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; expected a file name")
    check_output_folder(path.parent, option)


def check_output_folder(path: Path, option: str) -> None:
    """``ValueError`` unless ``path`` is a folder, or can be created as one, that this user can write."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file; expected a folder (it is created when missing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {str(path)!r} cannot be created: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(path)!r} is not writable: {str(parent)!r} does not allow it")

"""The ``ajpq`` command line.

Each subcommand lives in its own module with a ``main(argv: list[str] | None) -> int`` that parses its own
options (``prog="ajpq <name>"``); this dispatcher imports only the one that runs, so ``ajpq --help`` and
``ajpq inspect`` stay fast (no Stable-Baselines3 import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ajpq_env import __version__

__all__ = ["SUBCOMMANDS", "main"]

#: name -> (module with ``main(argv)``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("ajpq_env.inspect_cmd", "print a model's compressible layers, coupling groups and totals"),
    "envs": ("ajpq_env.inspect_cmd:envs_main", "list the registered env ids with their tasks and defaults"),
    "search": ("agents.search", "search a compression policy with an RL agent or a baseline"),
    "finetune": ("ajpq_env.deploy.finetune", "quantization-aware fine-tuning of a recipe"),
    "export": ("ajpq_env.deploy.export", "export a fine-tuned model (or a recipe as searched) to a packed .ajpq artefact and ONNX"),
    "evaluate": ("ajpq_env.deploy.evaluate", "evaluate an exported artefact (and its ONNX file) on the test split"),
    "profile": ("ajpq_env.deploy.profile", "measure a task's per-layer latency table on this machine (resource='latency')"),
    "report": ("ajpq_env.deploy.report", "Markdown summary and plots of a search run"),
    "leaderboard": ("benchmarks.leaderboard", "run, resume and tabulate the benchmark leaderboard"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ajpq",
        description="AJPQ: automated model compression by jointly applied pruning and quantization.",
        epilog="Run 'ajpq <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"ajpq {__version__}")
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), metavar="command",
                        help="; ".join(f"{name}: {text}" for name, (_, text) in SUBCOMMANDS.items()))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r}; expected one of: {', '.join(sorted(SUBCOMMANDS))}")
    target = SUBCOMMANDS[name][0]
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            parser.error(f"command {name!r} is not available in this installation ({err})")
        raise
    return int(getattr(module, function or "main")(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

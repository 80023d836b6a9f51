"""``ajpq inspect`` (a model's layer table) and ``ajpq envs`` (the registered env ids)."""

from __future__ import annotations

import argparse
import inspect
import json
import math

import torch
from rich.console import Console
from rich.table import Table

from ajpq_env.compression import CompressionGraph, CostModel
from ajpq_env.models import MODELS, build_model

# the bounds an artefact or checkpoint may name: inspect takes the same, so what it shows can also be loaded
from ajpq_env.models.registry import MAX_IN_CHANNELS, MAX_INPUT_SIDE, MAX_NUM_CLASSES, MAX_WIDTH_MULT

__all__ = ["envs_main", "main"]

#: Input shape used to trace each model when none is given.
DEFAULT_INPUTS = {
    "mobilenet_v1": (3, 32, 32),
    "mobilenet_v2": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "mobilenet_v2_imagenet": (3, 224, 224),
    "skynet": (3, 160, 320),
}


def _shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 3x32x32, got {text!r}") from None
    if not (1 <= c <= MAX_IN_CHANNELS and 1 <= h <= MAX_INPUT_SIDE and 1 <= w <= MAX_INPUT_SIDE):
        raise argparse.ArgumentTypeError(f"expected C in 1..{MAX_IN_CHANNELS} and H, W in 1..{MAX_INPUT_SIDE} "
                                         f"(such as 3x32x32), got {text!r}")
    return c, h, w


def _width(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_WIDTH_MULT:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number in (0, {MAX_WIDTH_MULT:g}] such as 0.5, got {text!r}")
    return value


def _classes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"expected an integer in 1..{MAX_NUM_CLASSES}, got {text!r}")
    return value


def _console() -> Console:
    """A console at least 150 columns wide, so tables are not folded when the output is piped."""
    return Console(width=max(Console().width, 150))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ajpq inspect", description="Print a model's compressible layers.")
    parser.add_argument("--model", default="mobilenet_v2", help=f"one of {', '.join(sorted(MODELS))}")
    parser.add_argument("--width-mult", type=_width, default=None, help="width multiplier (MobileNets)")
    parser.add_argument("--num-classes", type=_classes, default=None, help="classifier outputs (default: the model's)")
    parser.add_argument("--input", type=_shape, default=None, help="input shape CxHxW (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON instead")
    args = parser.parse_args(argv)
    if args.model not in MODELS:
        parser.error(f"unknown model {args.model!r}; valid models: {', '.join(sorted(MODELS))}")
    kwargs: dict[str, object] = {}
    if args.width_mult is not None:
        kwargs["width_mult"] = args.width_mult
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    shape = args.input or DEFAULT_INPUTS.get(args.model, (3, 32, 32))
    if "in_channels" not in kwargs and args.model in ("mobilenet_v1", "mobilenet_v2") and shape[0] != 3:
        kwargs["in_channels"] = shape[0]
    accepted = inspect.signature(MODELS[args.model]).parameters
    for key, option in (("width_mult", "--width-mult"), ("num_classes", "--num-classes"), ("in_channels", "--input")):
        if key in kwargs and key not in accepted:
            parser.error(f"{option} does not apply to {args.model} (its builder takes {', '.join(accepted) or 'nothing'})")
    try:
        model = build_model(args.model, **kwargs).eval()
        graph = CompressionGraph(model, torch.zeros(1, *shape))
    except (RuntimeError, ValueError) as err:  # e.g. an input too small for the network's strides
        parser.error(f"cannot trace {args.model} on a {'x'.join(map(str, shape))} input: {str(err).splitlines()[0]}")
    rows = graph.table()
    fp32 = CostModel(graph).fp32
    if args.json:
        print(json.dumps({"layers": rows, "totals": fp32.to_dict(), "groups": len(graph.groups)}, indent=1))
        return 0
    table = Table(title=f"{args.model} {kwargs or ''} input {'x'.join(map(str, shape))}")
    for column, justify in (("#", "right"), ("name", "left"), ("type", "left"), ("in", "right"), ("out", "right"),
                            ("kernel", "right"), ("stride", "right"), ("params", "right"), ("MACs", "right"),
                            ("group", "right"), ("sparsity lock", "left")):
        table.add_column(column, justify=justify)
    for r in rows:
        table.add_row(str(r["index"]), r["name"], r["kind"], str(r["in"]), str(r["out"]), r["kernel"],
                      str(r["stride"]), f"{r['params']:,}", f"{r['macs']:,}", str(r["group"]), r["lock"])
    console = _console()
    console.print(table)
    prunable = sum(1 for g in graph.groups if not g.locked)
    console.print(
        f"{len(rows)} compressible layers, {len(graph.groups)} coupling groups ({prunable} prunable); "
        f"weights {fp32.params:,} params, {fp32.macs:,} MACs, FP32 size {fp32.size_bytes:,} bytes"
    )
    return 0


def envs_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ajpq envs", description="List the registered AJPQ env ids.")
    parser.parse_args(argv)
    from ajpq_env.envs.registration import ENV_IDS
    from ajpq_env.tasks import TASKS

    table = Table(title="AJPQ environments (gym.make(id, **kwargs) overrides any default)")
    for column in ("id", "task", "mode", "target", "resource", "task description"):
        table.add_column(column)
    for env_id, kw in ENV_IDS.items():
        table.add_row(env_id, kw["task"], kw["mode"], str(kw["target"]), kw["resource"], TASKS[kw["task"]].description)
    _console().print(table)
    return 0

"""Evaluate an exported artefact as a user would: ``ajpq evaluate ARTEFACT [--onnx FILE]``.

The packed file goes through the package's loader (:func:`ajpq_env.compression.load`, which rebuilds the
architecture from the file's header alone), the ONNX file through onnxruntime; both run the task's test split.
Reported: the metric of each, how far apart their logits are, the artefact's bytes on disk (header and payload)
against the recipe's cost-model size, and CPU time per sample. The task (for its data) comes from the recipe
stored in the artefact's header; ``--task`` may only confirm it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajpq_env.compression import CostModel, Policy, packed
from ajpq_env.deploy._cli import check_output_file, existing_file, option, parse_config, set_threads
from ajpq_env.deploy.export import EVALUATION_FILE, MANIFEST_FILE, read_manifest
from ajpq_env.deploy.onnx_export import onnx_session
from ajpq_env.deploy.resolve import Architecture, check_recipe_data, load_splits, recipe_task_name
from ajpq_env.fileio import atomic_write
from ajpq_env.tasks import Split
from ajpq_env.tasks.metrics import Metric, get_metric
from ajpq_env.tasks.registry import task_metric

__all__ = ["ArtefactEvaluation", "EvaluateArgs", "evaluate_artefact", "main", "run_onnx", "run_torch"]


@dataclass
class ArtefactEvaluation:
    """What ``ajpq evaluate`` measured. Metrics are top-1 accuracy in [0, 1]; times are ms per sample, one
    batch pass over the split; sizes are bytes.

    :param max_abs_diff: largest absolute difference between the loader's and onnxruntime's logits
    :param agreement: fraction of samples on which both predict the same class
    :param size_bytes: the recipe's :class:`~ajpq_env.compression.CostModel` size, which the payload must equal
    """

    artefact: str
    task: str
    split: str
    samples: int
    metric: float
    loader_ms: float
    file_bytes: int
    header_bytes: int
    payload_bytes: int
    size_bytes: int
    fp32_size_bytes: int
    onnx: str | None = None
    onnx_bytes: int | None = None
    onnx_metric: float | None = None
    onnx_ms: float | None = None
    max_abs_diff: float | None = None
    agreement: float | None = None

    @property
    def size_matches(self) -> bool:
        """Bytes on disk minus the header equal the reported size."""
        return self.file_bytes - self.header_bytes == self.payload_bytes == self.size_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size_matches": self.size_matches, "size_ratio": self.size_bytes / self.fp32_size_bytes}


@torch.inference_mode()
def run_torch(model: torch.nn.Module, split: Split, batch_size: int = 500) -> tuple[np.ndarray, float]:
    """Logits of ``model`` on ``split`` (float32 (N, classes)) and the seconds the forward passes took."""
    model.eval()
    model(split.batch(np.arange(min(len(split), 8)))[0])  # warm-up, untimed
    outputs, seconds = [], 0.0
    for x, _ in split.batches(batch_size):
        start = time.perf_counter()
        outputs.append(model(x).numpy())
        seconds += time.perf_counter() - start
    return np.concatenate(outputs), seconds


def run_onnx(session: Any, split: Split, batch_size: int = 500) -> tuple[np.ndarray, float]:
    """Logits of an onnxruntime session on ``split`` and the seconds ``session.run`` took."""
    name = session.get_inputs()[0].name
    session.run(None, {name: split.batch(np.arange(min(len(split), 8)))[0].numpy()})  # warm-up, untimed
    outputs, seconds = [], 0.0
    for x, _ in split.batches(batch_size):
        feed = {name: x.numpy()}
        start = time.perf_counter()
        outputs.append(session.run(None, feed)[0])
        seconds += time.perf_counter() - start
    return np.concatenate(outputs), seconds


def evaluate_artefact(
    path: str | os.PathLike[str],
    split: Split,
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    split_name: str = "test",
    batch_size: int = 500,
    metric: Metric | str = "top1",
) -> ArtefactEvaluation:
    """Run the packed artefact (package loader) and optionally its ONNX file (onnxruntime) on ``split``.

    :param path: the ``.ajpq`` file
    :param split: the data (normally the task's test split)
    :param onnx_path: the ONNX file; ``None`` skips onnxruntime
    :param split_name: the split's name, for the record
    :param batch_size: samples per forward pass
    :param metric: the task's metric (a :class:`~ajpq_env.tasks.metrics.Metric` or its name)
    """
    metric = get_metric(metric) if isinstance(metric, str) else metric
    path = Path(path)
    header, offset = packed.read_header(path)
    shape = list(header["input_shape"][1:])  # one sample's (C, H, W)
    # read_header ties a known task's input to the task; a synthetic task's (or another data set's) is checked here,
    # since the model's adaptive pooling would otherwise score data of another shape without a word
    sample = list(split.batch(np.arange(1))[0].shape[1:]) if len(split) else shape
    if sample != shape:
        raise ValueError(f"artefact {str(path)!r} was exported for inputs of shape {shape} (C, H, W), but the "
                         f"{split_name} split holds samples of shape {sample}; evaluate it on the data of the task "
                         "it was searched on")
    policy = Policy.from_dict(header["recipe"])
    architecture = Architecture(str(policy.meta.get("task", "")), header["builder"], header["builder_kwargs"],
                                tuple(shape), header.get("importance", "l1"))
    costs = CostModel(architecture.graph())
    labels = split.labels.numpy()
    logits, seconds = run_torch(packed.load(path), split, batch_size)
    file_bytes = path.stat().st_size
    result = ArtefactEvaluation(
        artefact=str(path), task=architecture.task, split=split_name, samples=len(split),
        metric=float(metric.scores(logits, labels).mean()), loader_ms=1000 * seconds / len(split),
        file_bytes=file_bytes, header_bytes=offset, payload_bytes=file_bytes - offset,
        size_bytes=costs(policy).size_bytes, fp32_size_bytes=costs.fp32.size_bytes,
    )
    if onnx_path is not None:
        onnx_path = existing_file(Path(onnx_path), "ONNX file")
        onnx_logits, onnx_seconds = run_onnx(onnx_session(onnx_path), split, batch_size)
        result.onnx, result.onnx_bytes = str(onnx_path), onnx_path.stat().st_size
        result.onnx_metric = float(metric.scores(onnx_logits, labels).mean())
        result.onnx_ms = 1000 * onnx_seconds / len(split)
        result.max_abs_diff = float(np.abs(onnx_logits - logits).max())
        result.agreement = metric.agreement(onnx_logits, logits)
    return result


# --------------------------------------------------------------------------------------------- command line
@dataclass
class EvaluateArgs:
    """``ajpq evaluate`` options."""

    artefact: Path = option(help="the packed .ajpq file written by `ajpq export`", positional=True,
                            metavar="ARTEFACT")
    onnx: Path | None = option(None, "ONNX file to run through onnxruntime; default: ARTEFACT with suffix .onnx")
    no_onnx: bool = option(False, "evaluate the packed artefact only")
    task: str | None = option(None, "task whose data to use; default: the one in the artefact (another is refused)")
    data: str | None = option(None, "data set root (CIFAR-10); default $AJPQ_DATA")
    split: str = option("test", "data split to evaluate", choices=("test", "search", "train"))
    batch_size: int = option(500, "samples per forward pass, 1..65536", low=1, high=65_536)
    json: Path | None = option(None, "write the results here; default: evaluate.json next to the artefact")
    threads: int = option(0, "CPU threads of torch and onnxruntime (0 = torch's default)", low=0, high=1024)


def _check_onnx(path: Path) -> None:
    """Open ``path`` with onnxruntime once, so that a corrupt file is a clear error before any data loads."""
    existing_file(path, "ONNX file")
    try:
        onnx_session(path)
    except ModuleNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 (onnxruntime's own exception classes for unreadable models)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"ONNX file {str(path)!r} cannot be loaded by onnxruntime ({first}); re-export it, or pass "
                         "--no-onnx") from None


def _print(result: ArtefactEvaluation, manifest: dict[str, Any]) -> None:
    ratio = result.size_bytes / result.fp32_size_bytes
    print(f"{result.artefact}: {result.file_bytes:,} B on disk = header {result.header_bytes:,} B + payload "
          f"{result.payload_bytes:,} B; reported size {result.size_bytes:,} B ({ratio:.4f} of FP32 "
          f"{result.fp32_size_bytes:,} B): {'match' if result.size_matches else 'MISMATCH'}")
    print(f"{result.split} split of {result.task or '?'} ({result.samples} samples):")
    print(f"  package loader  metric {result.metric:.4f}  {result.loader_ms:.3f} ms/sample")
    if result.onnx is not None:
        print(f"  onnxruntime     metric {result.onnx_metric:.4f}  {result.onnx_ms:.3f} ms/sample  "
              f"({result.onnx_bytes:,} B)")
        print(f"  max |logit difference| {result.max_abs_diff:.2e}, same prediction on {result.agreement:.2%}")
    recorded = manifest.get("metrics", {}).get(result.split)
    if recorded is not None:
        by = {"finetuned": "ajpq finetune", "recipe": "ajpq export (the model as searched)"}
        print(f"  measured by {by.get(manifest.get('source', {}).get('kind'), 'the exporter')}: {recorded:.4f}")


def main(argv: list[str] | None = None) -> int:
    """``ajpq evaluate``: measure an artefact and its ONNX file on the task's test split."""
    args = parse_config(EvaluateArgs, argv, prog="ajpq evaluate",
                        description="Run an exported artefact through the package's loader and its ONNX file "
                                    "through onnxruntime on the task's test split.")
    try:
        set_threads(args.threads)
        existing_file(args.artefact, "ARTEFACT (the model.ajpq file written by `ajpq export`)")
        out = args.json or args.artefact.parent / EVALUATION_FILE
        check_output_file(out, "--json")
        if out.suffix.lower() != ".json":  # a typo must not overwrite the artefact, its ONNX file or a run's CSV
            raise ValueError(f"--json {str(out)!r} does not end in .json; expected a .json file name for the results")
        header, _ = packed.read_header(args.artefact)
        if not isinstance(header.get("recipe"), dict):
            raise ValueError(f"artefact {str(args.artefact)!r} holds no recipe in its header")
        check_recipe_data(header["recipe"], f"the recipe in artefact {str(args.artefact)!r}")
        policy = Policy.from_dict(header["recipe"])
        name = recipe_task_name(policy, args.task, source=f"artefact {str(args.artefact)!r}")
        split = load_splits(name, data_root=args.data)[args.split]
        onnx_path = None if args.no_onnx else args.onnx
        if onnx_path is None and not args.no_onnx and args.artefact.with_suffix(".onnx").is_file():
            onnx_path = args.artefact.with_suffix(".onnx")
        if onnx_path is not None:
            _check_onnx(onnx_path)
        metric = task_metric(name)
        result = evaluate_artefact(args.artefact, split, onnx_path=onnx_path, split_name=args.split,
                                   batch_size=args.batch_size, metric=metric)
    except (ValueError, OSError, ModuleNotFoundError) as err:  # OSError: e.g. a name too long for the file system
        print(f"ajpq evaluate: error: {err}", file=sys.stderr)
        return 2
    _print(result, read_manifest(args.artefact.parent / MANIFEST_FILE))
    try:
        atomic_write(out, json.dumps(result.to_dict(), indent=1))
    except OSError as err:
        print(f"ajpq evaluate: error: cannot write {str(out)!r}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0 if result.size_matches else 1


if __name__ == "__main__":
    sys.exit(main())

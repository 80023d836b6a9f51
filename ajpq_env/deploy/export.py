"""Export a compressed model: the engine's packed artefact plus an ONNX file (``ajpq export SOURCE``).

``SOURCE`` is either a fine-tuning output (``ajpq finetune``'s folder or its ``model.pt``) or a recipe JSON
(or a run folder holding ``best_recipe.json``). A recipe is compressed exactly as the search measured it (the
engine's :class:`~ajpq_env.compression.pipeline.Compressor` with the recipe's settings: physically pruned and
quantized, BatchNorm recalibrated and folded, activations calibrated), so the artefact scores what the search
reported. The output folder holds::

    model.ajpq    the packed file (:mod:`ajpq_env.compression.packed`): JSON header + payload whose length is
                  the recipe's CostModel size_bytes; `ajpq evaluate` and `ajpq_env.compression.load` read it
    model.onnx    the same network for onnxruntime (see :mod:`ajpq_env.deploy.onnx_export`)
    export.json   the manifest: task, recipe digest, byte counts, cost and ratios, source, known metrics

Library use::

    >>> from ajpq_env.deploy import export_model
    >>> deployable = compress_as_searched(task, policy, graph)                      # doctest: +SKIP
    >>> manifest = export_model(deployable, Architecture.from_task(task), "out")      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ajpq_env.compression import CompressionGraph, CostModel, Policy, packed
from ajpq_env.compression.pipeline import Deployable, DeploySettings
from ajpq_env.compression.qat import grid_errors
from ajpq_env.deploy._cli import check_output_folder, option, parse_config, set_threads
from ajpq_env.deploy.checkpoint import MODEL_FILE, Finetuned
from ajpq_env.deploy.onnx_export import ONNX_FORMATS, export_onnx
from ajpq_env.deploy.resolve import Architecture, fit_recipe, load_recipe, recipe_task_name, resolve_task
from ajpq_env.fileio import atomic_write, loads_json
from ajpq_env.tasks import Task

__all__ = ["ARTEFACT_FILE", "EVALUATION_FILE", "MANIFEST_FILE", "ONNX_FILE", "ExportArgs", "compress_as_searched", "export_model", "main", "read_manifest"]

ARTEFACT_FILE = "model.ajpq"
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "export.json"
EVALUATION_FILE = "evaluate.json"  # written by `ajpq evaluate` beside the artefact


def export_model(
    deployable: Deployable,
    architecture: Architecture,
    out_dir: str | os.PathLike[str],
    *,
    onnx_format: str | None = "qdq",
    graph: CompressionGraph | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.ajpq``, ``model.onnx`` (unless ``onnx_format`` is ``None``) and ``export.json``.

    :param deployable: the compressed model (physically pruned, weights on the recipe's grid, as
        :func:`compress_as_searched` or `ajpq finetune` give) with its activation calibration; refused when its
        shapes or weights are not the recipe's
    :param architecture: the uncompressed architecture (builder, kwargs, input shape) the loader rebuilds
    :param out_dir: output folder (created)
    :param onnx_format: ``"qdq"`` (the deployed network: integer kernels with 8-bit activations), ``"fp32"``
        (the same folded weights, float activations) or ``None`` for no ONNX file
    :param graph: compression graph of the uncompressed architecture (built when not given)
    :param extra: more JSON-serialisable entries for the manifest (e.g. ``source``, ``metrics``)
    :return: the manifest (also written to ``export.json``)
    """
    if onnx_format is not None and onnx_format not in ONNX_FORMATS:
        raise ValueError(f"onnx_format must be one of {ONNX_FORMATS} or None, got {onnx_format!r}")
    policy, a_bits = deployable.policy, deployable.a_bits
    graph = graph or architecture.graph()
    fit_recipe(policy, graph, task=architecture.task, model=architecture.builder)
    problems = grid_errors(deployable.model, graph, policy, rtol=1e-6)
    if problems:
        raise ValueError("the model is not the recipe's compressed model (expected 0-bit channels removed and "
                         "weights on the recipe's grid, as compress() or `ajpq finetune` give): " + "; ".join(problems))
    if onnx_format == "qdq" and a_bits not in (8, 32):
        raise ValueError(f"the qdq ONNX file needs 8-bit activations (QuantizeLinear is uint8), the recipe has "
                         f"a_bits={a_bits}; use --onnx fp32 or --onnx none")
    deployed = deployable.deployed(graph)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = packed.export(deployed, graph, policy, out / ARTEFACT_FILE, builder=architecture.builder,
                         builder_kwargs=architecture.builder_kwargs, a_bits=a_bits)
    costs = CostModel(graph, a_bits)
    cost = costs(policy)
    if info.payload_bytes != cost.size_bytes:  # the engine's contract; never ship an artefact that breaks it
        raise RuntimeError(f"packed payload is {info.payload_bytes} B but the cost model says {cost.size_bytes} B")
    manifest: dict[str, Any] = {
        "task": architecture.task,
        "architecture": architecture.to_dict(),
        "recipe_digest": policy.digest(),
        "a_bits": a_bits,
        "artefact": {"file": ARTEFACT_FILE, "file_bytes": info.file_bytes, "header_bytes": info.header_bytes,
                     "payload_bytes": info.payload_bytes},
        "cost": {**cost.to_dict(), "fp32_size_bytes": costs.fp32.size_bytes,
                 **{f"{k}_ratio": v for k, v in cost.ratios(costs.fp32).items()}},
        "onnx": None,
    }
    if onnx_format is not None:
        network = deployed if onnx_format == "qdq" else deployable.deployed(graph, a_bits=32)
        path = export_onnx(network, out / ONNX_FILE, architecture.example_input())
        manifest["onnx"] = {"file": ONNX_FILE, "format": onnx_format, "file_bytes": path.stat().st_size}
    manifest.update(extra or {})
    atomic_write(out / MANIFEST_FILE, json.dumps(manifest, indent=1))
    return manifest


def compress_as_searched(task: Task, policy: Policy, graph: CompressionGraph) -> Deployable:
    """The compressed model the search measured for ``policy``: the engine's :class:`Compressor` with the
    recipe's deployment settings (its ``meta``, bounded: :class:`DeploySettings`), as the env's evaluator builds it."""
    from ajpq_env.envs.evaluator import Evaluator

    settings = DeploySettings.from_meta(policy.meta)
    return Evaluator(task, graph, settings, cache_size=0).compressor.deployable(policy)


# --------------------------------------------------------------------------------------------- command line
@dataclass
class ExportArgs:
    """``ajpq export`` options."""

    source: Path = option(help="fine-tuning output (folder or model.pt), or a recipe JSON / run folder to export "
                               "without fine-tuning", positional=True, metavar="SOURCE")
    out: Path | None = option(None, "output folder; default: 'export' next to the fine-tuning folder or recipe")
    onnx: str = option("qdq", "ONNX file: the deployed network for onnxruntime's integer kernels (qdq), the same "
                              "weights with float activations (fp32), or none",
                       choices=(*ONNX_FORMATS, "none"))
    task: str | None = option(None, "recipe source only: task name; default: the recipe's meta['task']")
    data: str | None = option(None, "recipe source only: data set root (BatchNorm calibration); default $AJPQ_DATA")
    weights: str | None = option(None, "recipe source only: FP32 weights; default: packaged, then $AJPQ_WEIGHTS")
    threads: int = option(0, "torch CPU threads (0 = torch's default)", low=0, high=1024)
    overwrite: bool = option(False, "replace an export of another source already in the output folder")


def read_manifest(path: Path) -> dict[str, Any]:
    """``export.json`` at ``path`` when it is a readable JSON object, else ``{}`` (a tolerant read: the manifest only
    adds lines to a printout and names the export's source); its ``metrics`` keep the numbers, ``source`` is a dict."""
    try:
        data = loads_json(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("metrics", {}), dict):
        return {}
    metrics = {k: v for k, v in data.get("metrics", {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    return {**data, "metrics": metrics, "source": source}


def _check_out(out: Path, source: Path, overwrite: bool) -> None:
    """Refuse an output folder whose files cannot be written, or that holds the export of another source (a
    recipe and its fine-tuned model both export to ``RUN/export`` by default): ``ValueError`` saying what to do.
    Exporting the same source again replaces its files."""
    check_output_folder(out, "--out")
    for name in (ARTEFACT_FILE, ONNX_FILE, MANIFEST_FILE, EVALUATION_FILE):
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ValueError(f"--out {str(out)!r}: {name} there is not a regular file; remove it or choose another "
                             "--out")
    manifest = out / MANIFEST_FILE
    if overwrite or not manifest.exists():
        return
    named = read_manifest(manifest).get("source", {}).get("path")
    previous = Path(named) if isinstance(named, str) and named else None
    if previous is None or _source_key(previous) != _source_key(source):
        what = f"the export of {str(previous)!r}" if previous else f"an {MANIFEST_FILE} that names no source"
        raise ValueError(f"--out {str(out)!r} already holds {what}; exporting {str(source)!r} there would replace "
                         "it: pass another --out, or --overwrite")


def _source_key(path: Path) -> Path:
    """One name per source: a fine-tuning folder and its model.pt are the same."""
    path = path.resolve()
    return path.parent if path.name == MODEL_FILE else path


def _is_checkpoint(source: Path) -> bool:
    return source.suffix == ".pt" or (source.is_dir() and (source / MODEL_FILE).is_file())


def main(argv: list[str] | None = None) -> int:
    """``ajpq export``: write the packed artefact, the ONNX file and the manifest."""
    args = parse_config(ExportArgs, argv, prog="ajpq export",
                        description="Export a fine-tuned model (or a recipe as searched) to the packed .ajpq "
                                    "artefact and an ONNX file.")
    onnx_format = None if args.onnx == "none" else args.onnx
    try:
        set_threads(args.threads)
        source = args.source
        if not source.exists():
            raise FileNotFoundError(f"SOURCE {str(source)!r} does not exist; expected a fine-tuning folder (or its "
                                    "model.pt), a recipe JSON or a run folder holding best_recipe.json")
        folder = source if source.is_dir() else source.parent
        out = args.out or (folder.parent / "export" if _is_checkpoint(source) else folder / "export")
        recipe_path = source / "best_recipe.json" if source.is_dir() and not _is_checkpoint(source) else source
        _check_out(out, recipe_path, args.overwrite)
        if _is_checkpoint(source):
            tuned = Finetuned.load(source)
            deployable, policy, architecture = tuned.deployable(), tuned.policy, tuned.architecture
            if args.task is not None:
                recipe_task_name(policy, args.task, source=f"checkpoint {str(source)!r}")
            folder = source if source.is_dir() else source.parent
            extra = {"source": {"kind": "finetuned", "path": str(source)}, "metrics": tuned.metrics}
        else:
            policy = load_recipe(recipe_path)
            name = recipe_task_name(policy, args.task, source=f"recipe {str(recipe_path)!r}")
            task = resolve_task(name, data_root=args.data, weights=args.weights)
            architecture = Architecture.from_task(task, str(policy.meta.get("importance", "l1")))
            graph = architecture.graph(task.model)
            fit_recipe(policy, graph, task=task.name, model=task.spec.model, source=f"recipe {str(recipe_path)!r}")
            deployable = compress_as_searched(task, policy, graph)
            folder = recipe_path.parent
            # what the search reported for this recipe
            metrics = {"search": task.evaluate(deployable.deployed(graph), "search")}
            extra = {"source": {"kind": "recipe", "path": str(recipe_path)}, "metrics": metrics}
        manifest = export_model(deployable, architecture, out, onnx_format=onnx_format, extra=extra)
        (out / EVALUATION_FILE).unlink(missing_ok=True)  # it evaluated the artefact just replaced
    except (ValueError, OSError, ModuleNotFoundError) as err:  # OSError: e.g. a name too long for the file system
        print(f"ajpq export: error: {err}", file=sys.stderr)
        return 2
    art, cost = manifest["artefact"], manifest["cost"]
    print(f"{out / ARTEFACT_FILE}: {art['file_bytes']:,} B = header {art['header_bytes']:,} B + payload "
          f"{art['payload_bytes']:,} B (cost model: {cost['size_bytes']:,} B, {cost['size_ratio']:.4f} of FP32 "
          f"{cost['fp32_size_bytes']:,} B)")
    if manifest["onnx"]:
        print(f"{out / ONNX_FILE}: {manifest['onnx']['file_bytes']:,} B ({manifest['onnx']['format']})")
    print(f"next: ajpq evaluate {out / ARTEFACT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

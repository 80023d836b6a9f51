"""From a search result to a smaller network that runs: fine-tune, export, evaluate, report.

* :mod:`.finetune` — quantization-aware fine-tuning of a recipe (``ajpq finetune``)
* :mod:`ajpq_env.compression.qat` — straight-through fake quantization of the physically pruned network
* :mod:`.checkpoint` — the fine-tuned model on disk (:class:`Finetuned`)
* :mod:`.export` — packed ``.ajpq`` artefact + ONNX + manifest (``ajpq export``)
* :mod:`.onnx_export` — ONNX with int8 weights and DequantizeLinear (QDQ) or float32 weights
* :mod:`.evaluate` — run the artefact through the package's loader and onnxruntime (``ajpq evaluate``)
* :mod:`.profile` — the per-layer latency lookup table of a task on this machine (``ajpq profile``)
* :mod:`.timing` — onnxruntime sessions, median timings and per-operator profiles (shared by the benchmarks)
* :mod:`.report` — Markdown summary and plots of a search run (``ajpq report``)
* :mod:`.resolve` — tasks, architectures and the check that a recipe belongs to them

>>> from ajpq_env.deploy import FinetuneConfig, finetune, export_model
>>> from ajpq_env.tasks import synthetic_task
>>> from ajpq_env.compression import CompressionGraph, Policy
>>> task = synthetic_task()
>>> policy = Policy.uniform(CompressionGraph(task.model, task.example_input()), 4, meta={"task": task.name})
>>> tuned = finetune(task, policy, FinetuneConfig(epochs=1, progress=False))
>>> manifest = export_model(tuned.model, policy, tuned.architecture, "/tmp/ajpq-doctest")  # doctest: +SKIP
"""

from ajpq_env.compression.qat import FakeQuantize, freeze, grid_errors, prepare_qat
from ajpq_env.deploy.checkpoint import Finetuned
from ajpq_env.deploy.evaluate import ArtefactEvaluation, evaluate_artefact
from ajpq_env.deploy.export import compress_as_searched, export_model
from ajpq_env.deploy.finetune import FinetuneConfig, finetune
from ajpq_env.deploy.onnx_export import ONNX_FORMATS, export_onnx, onnx_session
from ajpq_env.deploy.report import pareto_front, write_report
from ajpq_env.deploy.resolve import Architecture, check_recipe, load_splits, resolve_task

__all__ = [
    "ONNX_FORMATS",
    "Architecture",
    "ArtefactEvaluation",
    "FakeQuantize",
    "FinetuneConfig",
    "Finetuned",
    "check_recipe",
    "compress_as_searched",
    "evaluate_artefact",
    "export_model",
    "export_onnx",
    "finetune",
    "freeze",
    "grid_errors",
    "load_splits",
    "onnx_session",
    "pareto_front",
    "prepare_qat",
    "resolve_task",
    "write_report",
]

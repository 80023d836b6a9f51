"""ONNX export of a physically pruned, quantized network, for onnxruntime and other tools.

Two formats (opset 17, TorchScript exporter, dynamic batch axis, input ``"input"``, output ``"logits"``):

* ``"qdq"`` (default) — every compressible layer's weight is stored as its int8 integer codes with one float32
  scale per output channel and decoded by a per-axis ``DequantizeLinear`` (axis 0, zero point 0), exactly
  ``codes x scale`` as the packed file's loader computes it. BatchNorm stays a separate node so that the
  weights keep their grid. int8 is the narrowest element type opset 17 offers for per-channel mixed
  bit-widths (2..8 bits); the bit-level packing is the ``.ajpq`` file's job.
* ``"fp32"`` — dequantized float32 weights, BatchNorm folded into the convolutions by the exporter.

Activations stay float32 in both: the recipe quantizes weights only.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ajpq_env.compression import CompressionGraph, Policy, quantize_codes
from ajpq_env.compression.qat import kept_bits

__all__ = ["ONNX_FORMATS", "ONNX_OPSET", "export_onnx", "onnx_session"]

ONNX_FORMATS = ("qdq", "fp32")
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _torch_export(model: nn.Module, example_input: torch.Tensor, *, fold_batchnorm: bool) -> bytes:
    buffer = io.BytesIO()
    mode = torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which is not yet reliable for these CNNs.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*constant folding.*")
            torch.onnx.export(
                model, (example_input,), buffer, dynamo=False, opset_version=ONNX_OPSET, training=mode,
                do_constant_folding=fold_batchnorm, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        model.train(was_training)
    return buffer.getvalue()


def _to_qdq(proto: object, model: nn.Module, graph: CompressionGraph, policy: Policy) -> None:
    """Replace each compressible weight initializer by int8 codes + scales + a per-axis DequantizeLinear."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in proto.graph.initializer}
    nodes = []
    for layer in graph.layers:
        name = f"{layer.name}.weight"
        if name not in initializers:
            raise RuntimeError(f"ONNX export: no initializer named {name!r} for layer {layer.name!r}; the exporter "
                               "renamed or folded it (use onnx_format='fp32')")
        weight = model.get_submodule(layer.name).weight.detach()
        codes, scales = quantize_codes(weight, kept_bits(policy, layer.name))
        proto.graph.initializer.remove(initializers[name])
        proto.graph.initializer.extend([
            numpy_helper.from_array(codes.numpy().astype(np.int8), f"{name}_quantized"),
            numpy_helper.from_array(scales.numpy().astype(np.float32), f"{name}_scale"),
            numpy_helper.from_array(np.zeros(scales.numel(), dtype=np.int8), f"{name}_zero_point"),
        ])
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
                                      [name], name=f"{name}_dequantize", axis=0))
    for position, node in enumerate(nodes):
        proto.graph.node.insert(position, node)


def export_onnx(
    model: nn.Module,
    graph: CompressionGraph,
    policy: Policy,
    path: str | os.PathLike[str],
    example_input: torch.Tensor,
    *,
    onnx_format: str = "qdq",
) -> Path:
    """Write ``model`` (physically pruned, weights on the policy's grid) to ``path`` as ONNX; return the path.

    :param model: the compressed model (``compress(...)`` or a fine-tuned one); not modified
    :param graph: compression graph of the *uncompressed* architecture (layer names, bit-widths)
    :param policy: the recipe
    :param example_input: one input batch for tracing, e.g. ``torch.zeros(1, C, H, W)``
    :param onnx_format: ``"qdq"`` (int8 codes + DequantizeLinear) or ``"fp32"`` (dequantized weights)
    """
    if onnx_format not in ONNX_FORMATS:
        raise ValueError(f"onnx_format must be one of {ONNX_FORMATS}, got {onnx_format!r}")
    try:
        import onnx
    except ModuleNotFoundError:
        raise ModuleNotFoundError("ONNX export needs the onnx package: pip install 'ajpq-env[onnx]'") from None
    data = _torch_export(model, example_input, fold_batchnorm=onnx_format == "fp32")
    proto = onnx.load_from_string(data)
    if onnx_format == "qdq":
        _to_qdq(proto, model, graph, policy)
    proto.producer_name = "ajpq_env"
    onnx.checker.check_model(proto)
    path = Path(path)
    onnx.save(proto, path)
    return path


def onnx_session(path: str | os.PathLike[str], threads: int | None = None):
    """An onnxruntime CPU ``InferenceSession`` for ``path`` (``threads`` intra-op threads; default torch's)."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise ModuleNotFoundError("running ONNX files needs onnxruntime: pip install 'ajpq-env[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

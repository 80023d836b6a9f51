"""ONNX export of the deployed network (:func:`ajpq_env.compression.integer.to_deployed`) for onnxruntime.

The file is a QDQ graph (opset 17, TorchScript exporter, dynamic batch axis, input ``"input"``, output
``"logits"``) that onnxruntime's graph optimiser turns into integer kernels (``QLinearConv``, ``QGemm``):

* every activation quantizer is a ``QuantizeLinear`` -> ``DequantizeLinear`` pair (uint8, per tensor);
* every layer is ``DequantizeLinear(codes)`` (per output channel) -> ``Conv``/``Gemm`` with an int32 bias
  ``DequantizeLinear(round(b / (s_x s_w)), s_x s_w)``, then the ReLU/ReLU6 it had (``Relu``/``Clip``, which the
  optimiser drops because the output quantizer's range makes them redundant), then the output quantizer;
* weights are int8 codes with zero point 0, except in layers holding an 8-bit channel, whose codes are stored as
  uint8 with zero point 128: on CPUs without AVX-VNNI, onnxruntime's u8s8 kernels add pairs of ``u8 x s8``
  products in 16 bits and saturate when both weights reach +-127 (measured here); its u8u8 kernels do not.

The weights stay int8 in the file because onnxruntime has no integer ``Conv`` kernel for int4 weights (an int4
``DequantizeLinear`` before a ``Conv`` runs as a float convolution); the bit-packed ``.ajpq`` file stores the
true bit-widths. A deployed network with float activations (``a_bits=32``, or the ``"fp32"`` format of
``ajpq export``) exports as ``DequantizeLinear`` weights feeding float operators.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ajpq_env.compression.actquant import qdq_symbolic, quantizers_of, untraced

__all__ = ["INPUT_NAME", "ONNX_FORMATS", "ONNX_OPSET", "OUTPUT_NAME", "export_onnx", "onnx_session"]

#: ``qdq``: the deployed network as searched (integer activations when ``a_bits`` is 8);
#: ``fp32``: the same folded weights with float activations.
ONNX_FORMATS = ("qdq", "fp32")
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _const(g, value: np.ndarray | float | int, dtype: torch.dtype):  # noqa: ANN001, ANN202
    return g.op("Constant", value_t=torch.as_tensor(np.asarray(value)).to(dtype))


def _layer_symbolic(g, x, layer):  # noqa: ANN001, ANN202 (torch.onnx's graph context)
    """ONNX nodes of one :class:`~ajpq_env.compression.integer.QuantLayer` (see the module docstring)."""
    codes = layer.codes.to(torch.int64)
    channels = codes.shape[0]
    if int(layer.bits.max()) >= 8:  # u8u8 kernels: no 16-bit saturation (see the module docstring)
        w = _const(g, (codes + 128).numpy(), torch.uint8)
        w_zero = _const(g, np.full(channels, 128), torch.uint8)
    else:
        w = _const(g, codes.numpy(), torch.int8)
        w_zero = _const(g, np.zeros(channels), torch.int8)
    weight = g.op("DequantizeLinear", w, _const(g, layer.scale.numpy(), torch.float32), w_zero, axis_i=0)
    inputs = [x, weight]
    if layer.bias is not None:
        if layer.input is None:  # float activations: a float bias
            inputs.append(_const(g, layer.bias.numpy(), torch.float32))
        else:
            inputs.append(g.op("DequantizeLinear", _const(g, layer.bias_int.numpy(), torch.int32),
                               _const(g, layer.out_scale.numpy(), torch.float32), axis_i=0))  # zero point 0
    if layer.conv:
        kernel = list(codes.shape[2:])
        pads = [*layer.padding, *layer.padding]
        y = g.op("Conv", *inputs, kernel_shape_i=kernel, strides_i=list(layer.stride), pads_i=pads,
                 dilations_i=list(layer.dilation), group_i=layer.groups)
    else:
        y = g.op("Gemm", *inputs, transB_i=1)
    if layer.activation == "relu":
        y = g.op("Relu", y)
    elif layer.activation == "relu6":
        y = g.op("Clip", y, _const(g, 0.0, torch.float32), _const(g, 6.0, torch.float32))
    if layer.output is not None:
        y = qdq_symbolic(g, y, layer.output[0], layer.output[1])
    return y


#: Layers being exported, by ``id``: the TorchScript tracer passes only plain values to a symbolic function.
_EXPORTING: dict[int, nn.Module] = {}


class _LayerExport(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, key: int) -> torch.Tensor:  # noqa: ANN001
        with untraced():  # the symbolic below writes the layer's tensors as constants
            return _EXPORTING[key].emulate(x)

    @staticmethod
    def symbolic(g, x, key: int):  # noqa: ANN001, ANN205
        return _layer_symbolic(g, x, _EXPORTING[key])


def quant_layer_symbolic_apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Called by :meth:`QuantLayer.forward` during ONNX export."""
    if layer.output is not None and layer.output[2] != 8:
        raise ValueError(f"ONNX export needs 8-bit activations (QuantizeLinear is uint8); this network has "
                         f"a_bits={layer.output[2]}. Export the packed artefact only (--onnx none)")
    key = len(_EXPORTING)
    _EXPORTING[key] = layer
    return _LayerExport.apply(x, key)


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor) -> Path:
    """Write the deployed network ``model`` (``to_deployed(...)``) to ``path`` as ONNX; return the path."""
    try:
        import onnx
    except ModuleNotFoundError:
        raise ModuleNotFoundError("ONNX export needs the onnx package: pip install 'ajpq-env[onnx]'") from None
    for quantizer in quantizers_of(model):
        if quantizer.a_bits != 8:
            raise ValueError(f"ONNX export needs 8-bit activations (QuantizeLinear is uint8); this network has "
                             f"a_bits={quantizer.a_bits}. Export the packed artefact only (--onnx none)")
    buffer = io.BytesIO()
    model.eval()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which does not take custom symbolics.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*constant folding.*")
            torch.onnx.export(
                model, (example_input,), buffer, dynamo=False, opset_version=ONNX_OPSET, do_constant_folding=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        _EXPORTING.clear()
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "ajpq_env"
    onnx.checker.check_model(proto)
    path = Path(path)
    onnx.save(proto, path)
    return path


def onnx_session(path: str | os.PathLike[str], threads: int | None = None, optimized_path: str | None = None):
    """An onnxruntime CPU ``InferenceSession`` for ``path`` (``threads`` intra-op threads; default torch's).

    :param optimized_path: also write the graph onnxruntime optimised (to see which kernels run)
    """
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise ModuleNotFoundError("running ONNX files needs onnxruntime: pip install 'ajpq-env[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable / invalid files
        raise ValueError(f"onnxruntime cannot load {str(path)!r}: {err}") from None

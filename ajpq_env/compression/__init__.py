"""The compression engine, layered like Torch-Pruning: graph -> policy -> per-layer functions.

* :mod:`.graph` — compressible layers in forward order and their channel coupling (torch-pruning)
* :mod:`.importance` — importance criteria (L1 default, L2)
* :mod:`.policy` — :class:`Policy`: a bit-width per output channel, 0 = pruned; the JSON recipe
* :mod:`.quantize` — per-channel symmetric quantization with mixed bit-widths
* :mod:`.simulate` — apply a policy: simulated in place, or physically pruned
* :mod:`.qat` — straight-through fake quantization of the physically pruned network (fine-tuning)
* :mod:`.cost` — storage, MACs and BitOPs of the physically pruned network (and latency, given a table)
* :mod:`.latency` — the per-layer onnxruntime latency lookup table (``ajpq profile``), keyed by machine
* :mod:`.actquant` — activation quantizers (where they go, calibration)
* :mod:`.integer` — the deployed network: BatchNorm folded, integer arithmetic as onnxruntime computes it
* :mod:`.pipeline` — :class:`Compressor`: compress, recalibrate, fold, calibrate: the one way a policy is built
* :mod:`.packed` — export: pack the deployed network to one file and load it back
"""

from ajpq_env.compression.cost import RESOURCES, Cost, CostModel, LayerCost
from ajpq_env.compression.graph import CompressionGraph, CouplingGroup, LayerInfo
from ajpq_env.compression.importance import IMPORTANCES, L1Importance, L2Importance, get_importance
from ajpq_env.compression.integer import to_deployed
from ajpq_env.compression.latency import LatencyTable, LatencyTableError
from ajpq_env.compression.packed import ExportInfo, export, load, read_header
from ajpq_env.compression.pipeline import Compressor, Deployable, DeploySettings, recalibrate_batchnorm
from ajpq_env.compression.policy import B_MAX, B_MIN, RECIPE_FORMAT, Policy
from ajpq_env.compression.quantize import channel_scales, quantize_codes, quantize_weight
from ajpq_env.compression.simulate import compress, physically_prune, pruned_indices, simulate

__all__ = [
    "B_MAX",
    "B_MIN",
    "IMPORTANCES",
    "RECIPE_FORMAT",
    "RESOURCES",
    "CompressionGraph",
    "Compressor",
    "Deployable",
    "DeploySettings",
    "Cost",
    "CostModel",
    "CouplingGroup",
    "ExportInfo",
    "L1Importance",
    "L2Importance",
    "LatencyTable",
    "LatencyTableError",
    "LayerCost",
    "LayerInfo",
    "Policy",
    "channel_scales",
    "compress",
    "export",
    "get_importance",
    "load",
    "physically_prune",
    "pruned_indices",
    "quantize_codes",
    "quantize_weight",
    "read_header",
    "recalibrate_batchnorm",
    "simulate",
    "to_deployed",
]

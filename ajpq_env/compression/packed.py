"""Export the deployed network to one packed file, and load it back into a runnable model.

File layout (all little-endian)::

    b"AJPQPK02"            8 bytes   magic
    header_length          4 bytes   uint32 (at most MAX_HEADER_BYTES)
    header                 JSON      builder name and kwargs, input shape, recipe, a_bits, payload length and
                                     SHA-256, number of activation quantizers
    payload                          exactly CostModel(graph, a_bits)(policy).size_bytes bytes:
      for each compressible layer in forward order:
        codes              ceil(sum_c b_c x kernel_size / 8) bytes: the surviving channels' integer codes, each
                           stored as the unsigned b_c-bit value q + 2**(b_c-1) - 1, channel after channel, packed
                           LSB-first into a bit stream
        scales             1 byte exponent e (int8) + 2 bytes per surviving channel (float16 of scale / 2**e):
                           the per-channel scale with the BatchNorm folded in (integer.encode_f16e)
        biases             the same form, when the layer has a bias or a folded BatchNorm
      for each activation quantizer (a_bits <= 8), in graph order:
        scale, zero point  float32 + uint8

Nothing is unpickled and nothing in the header is trusted: the header is JSON of bounded size whose every field
is checked against what the builder and the recipe's task allow before anything is built (no builder argument
can make the loader download weights or allocate more than the named task's model), the payload must have the
length and SHA-256 the header states, and every scale, bias and quantizer must be finite. The loader rebuilds
the architecture with the named builder, removes the pruned channels with the same torch-pruning plan, and
builds the deployed network (:func:`~ajpq_env.compression.integer.to_deployed`) from the stored values.
Bit packing is written by hand because no maintained library packs mixed per-channel bit-widths.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ajpq_env.compression.actquant import ACT_BITS
from ajpq_env.compression.cost import QUANTIZER_BYTES, CostModel
from ajpq_env.compression.graph import CompressionGraph
from ajpq_env.compression.integer import (
    FoldedLayer,
    QuantLayer,
    activation_qparams,
    decode_f16e,
    encode_f16e,
    to_deployed,
)
from ajpq_env.compression.policy import Policy
from ajpq_env.compression.simulate import physically_prune, pruned_indices
from ajpq_env.fileio import check_int, loads_json

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "ExportInfo",
    "export",
    "load",
    "pack_codes",
    "read_header",
    "unpack_codes",
]

MAGIC = b"AJPQPK02"
FORMAT_VERSION = 2
_PREFIX = len(MAGIC) + 4
#: The largest header read (a MobileNetV2 recipe is about 20 kB of JSON).
MAX_HEADER_BYTES = 16 * 2**20


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export` wrote: the file, its header size and its payload size (bytes)."""

    path: Path
    header_bytes: int
    payload_bytes: int

    @property
    def file_bytes(self) -> int:
        return self.header_bytes + self.payload_bytes


def pack_codes(codes: np.ndarray, bits: np.ndarray) -> bytes:
    """Pack signed codes of shape ``(C, K)`` at ``bits[c]`` bits per value into a LSB-first bit stream."""
    codes = np.asarray(codes, dtype=np.int64).reshape(len(bits), -1)
    bits = np.asarray(bits, dtype=np.int64)
    unsigned = codes + (2 ** (bits - 1) - 1)[:, None]
    if (unsigned < 0).any() or (unsigned >= (2**bits)[:, None]).any():
        raise ValueError("codes out of range for their bit-widths")
    planes = (unsigned[:, :, None] >> np.arange(8)) & 1  # (C, K, 8)
    mask = np.broadcast_to((np.arange(8) < bits[:, None])[:, None, :], planes.shape)
    return np.packbits(planes[mask].astype(np.uint8), bitorder="little").tobytes()


def unpack_codes(data: bytes, bits: np.ndarray, per_channel: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: signed codes of shape ``(len(bits), per_channel)``."""
    bits = np.asarray(bits, dtype=np.int64)
    total = int(bits.sum()) * per_channel
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=total, bitorder="little")
    mask = np.broadcast_to((np.arange(8) < bits[:, None])[:, None, :], (len(bits), per_channel, 8))
    planes = np.zeros(mask.shape, dtype=np.int64)
    planes[mask] = stream
    unsigned = (planes << np.arange(8)).sum(axis=2)
    return unsigned - (2 ** (bits - 1) - 1)[:, None]


def _packed_length(bits: np.ndarray, per_channel: int) -> int:
    return (int(np.asarray(bits, dtype=np.int64).sum()) * per_channel + 7) // 8


def _vector(values: torch.Tensor) -> bytes:
    exponent, halves = encode_f16e(values.detach().numpy())
    return struct.pack("<b", exponent) + halves.astype("<f2").tobytes()


def _deployed_layer(model: nn.Module, name: str) -> QuantLayer:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        layer = None
    if not isinstance(layer, QuantLayer):
        raise ValueError(f"export takes the deployed network (Compressor.deploy / to_deployed): layer {name!r} is "
                         f"a {type(layer).__name__}, not a QuantLayer")
    return layer


def export(
    deployed: fx.GraphModule,
    graph: CompressionGraph,
    policy: Policy,
    path: str | Path,
    *,
    builder: str,
    builder_kwargs: Mapping[str, Any] | None = None,
    a_bits: int,
) -> ExportInfo:
    """Write the deployed network (``to_deployed(...)``) of ``policy`` to ``path``.

    :param deployed: the deployed network (BatchNorm folded, activation quantizers calibrated)
    :param graph: the graph of the *uncompressed* model
    :param policy: the policy that produced ``deployed``
    :param builder: name of the architecture in :data:`ajpq_env.models.MODELS`, used by :func:`load`
    :param builder_kwargs: keyword arguments of the builder (JSON-serialisable)
    :param a_bits: the activation bit-width ``deployed`` was built with
    """
    path = Path(path)
    payload = bytearray()
    for layer in graph.layers:
        module = _deployed_layer(deployed, layer.name)
        bits = policy[layer.name][policy[layer.name] > 0]
        if module.codes.shape[0] != bits.size or not np.array_equal(module.bits, bits):
            raise ValueError(f"layer {layer.name!r} has {module.codes.shape[0]} output channels at bits "
                             f"{sorted(set(module.bits.tolist()))}, the policy keeps {bits.size}; export expects "
                             "the deployed network of this policy")
        payload += pack_codes(module.codes.flatten(1).numpy(), bits)
        payload += _vector(module.scale)
        if layer.stored_bias != (module.bias is not None):
            raise ValueError(f"layer {layer.name!r}: bias present {module.bias is not None}, the compression graph "
                             f"expects {layer.stored_bias}")
        if module.bias is not None:
            payload += _vector(module.bias)
    qparams = activation_qparams(deployed) if a_bits <= 8 else []
    for scale, zero_point in qparams:
        payload += struct.pack("<fB", scale, zero_point)
    header = {
        "format": FORMAT_VERSION,
        "builder": builder,
        "builder_kwargs": dict(builder_kwargs or {}),
        "input_shape": list(graph.example_input_shape),
        "importance": graph.importance.name,
        "a_bits": a_bits,
        "activation_quantizers": len(qparams),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "recipe": policy.to_dict(),
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(header_bytes)))
        f.write(header_bytes)
        f.write(payload)
    return ExportInfo(path, _PREFIX + len(header_bytes), len(payload))


# ---------------------------------------------------------------------- reading: trust nothing
def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """The JSON header of an exported file (its fields checked, see :func:`check_header`) and the offset at which
    its payload starts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist (or is not a file)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX)
        if len(prefix) < _PREFIX or prefix[: len(MAGIC)] != MAGIC:
            if prefix[:6] == MAGIC[:6]:
                raise ValueError(f"{str(path)!r} is an AJPQ packed model of another format version "
                                 f"({prefix[:8]!r}); this version reads {MAGIC!r}: export it again")
            raise ValueError(f"{str(path)!r} is not an AJPQ packed model (expected magic {MAGIC!r})")
        (length,) = struct.unpack("<I", prefix[len(MAGIC) :])
        if length > min(MAX_HEADER_BYTES, size - _PREFIX):
            raise ValueError(f"{str(path)!r}: header length {length} exceeds the file or the limit "
                             f"{MAX_HEADER_BYTES}: the file is truncated or corrupt")
        try:
            header = loads_json(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{str(path)!r}: corrupt header ({err})") from None
    check_header(header, source=repr(str(path)))
    return header, _PREFIX + length


def check_header(header: object, source: str = "the header") -> None:
    """Check every field of a packed file's header; ``ValueError`` says which one is wrong and what is expected."""
    from ajpq_env.models.registry import check_architecture  # the limits of every architecture read from a file
    from ajpq_env.tasks import TASKS

    if not isinstance(header, dict):
        raise ValueError(f"{source}: header must be a JSON object, got {type(header).__name__}")
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"{source}: format {header.get('format')!r}, this version reads {FORMAT_VERSION}")
    builder, kwargs, shape = header.get("builder"), header.get("builder_kwargs"), header.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[0] == 1):
        raise ValueError(f"{source}: input_shape must be [1, C, H, W], got {shape!r}")
    check_architecture(builder, kwargs, shape[1:], source)
    recipe = header.get("recipe")
    task = recipe.get("meta", {}).get("task") if isinstance(recipe, dict) and isinstance(recipe.get("meta"), dict) else None
    if task in TASKS:  # a known task fixes the architecture: the header may not enlarge it
        spec = TASKS[task]
        if builder != spec.model or list(shape[1:]) != list(spec.input_shape):
            raise ValueError(f"{source}: task {task!r} uses builder {spec.model!r} with input {list(spec.input_shape)}, "
                             f"the header names {builder!r} with {shape[1:]}")
        for key, value in kwargs.items():
            if key in spec.model_kwargs and spec.model_kwargs[key] != value:
                raise ValueError(f"{source}: task {task!r} builds {builder!r} with {key}={spec.model_kwargs[key]!r}, "
                                 f"the header says {value!r}")
    if header.get("a_bits") not in ACT_BITS:
        raise ValueError(f"{source}: a_bits must be one of {list(ACT_BITS)}, got {header.get('a_bits')!r}")
    check_int(header.get("activation_quantizers"), 0, 100_000, "activation_quantizers", source)
    check_int(header.get("payload_bytes"), 0, 2**40, "payload_bytes", source)
    digest = header.get("payload_sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise ValueError(f"{source}: payload_sha256 must be 64 lowercase hex digits")
    if not isinstance(header.get("importance"), str):
        raise ValueError(f"{source}: importance must be a string")


def _read_payload(path: Path, header: dict[str, Any], offset: int) -> bytes:
    data = path.read_bytes()[offset:]
    if len(data) != header["payload_bytes"]:
        raise ValueError(f"{str(path)!r}: payload is {len(data)} bytes, the header says {header['payload_bytes']}: "
                         "the file is truncated or has trailing bytes")
    if hashlib.sha256(data).hexdigest() != header["payload_sha256"]:
        raise ValueError(f"{str(path)!r}: payload SHA-256 does not match the header: the file is corrupt")
    return data


def load(path: str | Path, builder: Callable[..., nn.Module] | None = None) -> fx.GraphModule:
    """Rebuild the deployed network stored at ``path`` (in eval mode).

    :param builder: the architecture's builder; default: look up the header's builder name in
        :data:`ajpq_env.models.MODELS`
    """
    path = Path(path)
    header, offset = read_header(path)
    data = _read_payload(path, header, offset)
    if builder is None:
        from ajpq_env.models import build_model

        model = build_model(header["builder"], **header["builder_kwargs"])
    else:
        model = builder(**header["builder_kwargs"])
    model.eval()
    graph = CompressionGraph(model, torch.zeros(header["input_shape"]), header["importance"])
    policy = Policy.from_dict(header["recipe"])
    policy.validate(graph)
    a_bits = header["a_bits"]
    expected = CostModel(graph, a_bits)(policy).size_bytes
    if expected != len(data):
        raise ValueError(f"{str(path)!r}: payload is {len(data)} bytes, the recipe's network needs {expected}")
    physically_prune(model, graph, pruned_indices(graph, policy))
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    def vector(k: int, what: str) -> torch.Tensor:
        (exponent,) = struct.unpack("<b", take(1))
        values = decode_f16e(exponent, np.frombuffer(take(2 * k), dtype="<f2"))
        if not torch.isfinite(values).all():
            raise ValueError(f"{str(path)!r}: non-finite {what}: the file is corrupt")
        return values

    folded: dict[str, FoldedLayer] = {}
    for layer in graph.layers:
        weight = model.get_submodule(layer.name).weight
        bits = policy[layer.name][policy[layer.name] > 0].astype(np.int64)
        per_channel = weight[0].numel()
        codes = unpack_codes(take(_packed_length(bits, per_channel)), bits, per_channel)
        scale = vector(bits.size, f"scale in layer {layer.name!r}")
        if (scale <= 0).any():
            raise ValueError(f"{str(path)!r}: non-positive scale in layer {layer.name!r}: the file is corrupt")
        bias = vector(bits.size, f"bias in layer {layer.name!r}") if layer.stored_bias else None
        folded[layer.name] = FoldedLayer(torch.from_numpy(codes.astype(np.float32)).view_as(weight), bits, scale,
                                         bias, graph.deploy.batchnorm[layer.name])
    qparams: list[tuple[float, int]] | None = None
    if a_bits <= 8:
        qparams = []
        for _ in range(graph.deploy.quantizers):
            scale, zero_point = struct.unpack("<fB", take(QUANTIZER_BYTES))
            if not (math.isfinite(scale) and scale > 0) or zero_point > 2**a_bits - 1:
                raise ValueError(f"{str(path)!r}: activation quantizer with scale {scale!r} and zero point "
                                 f"{zero_point} at {a_bits} bits: the file is corrupt")
            qparams.append((scale, zero_point))
    return to_deployed(model, graph, policy, [], a_bits, qparams=qparams, folded=folded)

"""Export a compressed model to one packed file, and load it back into a runnable model.

File layout (all little-endian)::

    b"AJPQPK01"            8 bytes   magic
    header_length          4 bytes   uint32
    header                 JSON      builder name and kwargs, input shape, recipe, tensor table
    payload                          exactly CostModel(graph)(policy).size_bytes bytes:
      for each compressible layer in forward order:
        codes              ceil(sum_c b_c x kernel_size / 8) bytes: the surviving channels' integer codes,
                           each stored as the unsigned b_c-bit value q + 2**(b_c-1) - 1, channel after channel,
                           packed LSB-first into a bit stream
        scales             4 bytes per surviving channel (float32)
      every other floating-point tensor of the pruned state_dict, in state_dict order, as float32

Nothing is unpickled: the header is JSON and the payload is raw arrays. The loader rebuilds the architecture
with the named builder, removes the pruned channels with the same torch-pruning plan, and fills in the tensors.
Bit packing is written by hand because no maintained library packs mixed per-channel bit-widths.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ajpq_env.compression.graph import CompressionGraph
from ajpq_env.compression.policy import Policy
from ajpq_env.compression.quantize import quantize_codes
from ajpq_env.compression.simulate import physically_prune, pruned_indices

__all__ = ["FORMAT_VERSION", "MAGIC", "ExportInfo", "export", "load", "pack_codes", "read_header", "unpack_codes"]

MAGIC = b"AJPQPK01"
FORMAT_VERSION = 1
_PREFIX = len(MAGIC) + 4


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


def _other_tensors(model: nn.Module, graph: CompressionGraph) -> list[tuple[str, torch.Tensor]]:
    weights = {f"{layer.name}.weight" for layer in graph.layers}
    return [
        (name, t) for name, t in model.state_dict().items() if name not in weights and torch.is_floating_point(t)
    ]


def export(
    compressed: nn.Module,
    graph: CompressionGraph,
    policy: Policy,
    path: str | Path,
    *,
    builder: str,
    builder_kwargs: Mapping[str, Any] | None = None,
) -> ExportInfo:
    """Write the physically pruned, quantized model ``compressed`` (from :func:`compress`) to ``path``.

    :param compressed: ``compress(model, graph, policy)`` — its weights already lie on the quantization grid
    :param graph: the graph of the *uncompressed* model
    :param policy: the policy that produced ``compressed``
    :param builder: name of the architecture in :data:`ajpq_env.models.MODELS`, used by :func:`load`
    :param builder_kwargs: keyword arguments of the builder (JSON-serialisable)
    """
    path = Path(path)
    payload = bytearray()
    for layer in graph.layers:
        weight = compressed.get_submodule(layer.name).weight.detach()
        bits = policy[layer.name][policy[layer.name] > 0]
        if weight.shape[0] != bits.size:
            raise ValueError(
                f"layer {layer.name!r} has {weight.shape[0]} output channels but the policy keeps {bits.size}; "
                "export expects the model returned by compress(model, graph, policy)"
            )
        codes, scales = quantize_codes(weight, bits)
        payload += pack_codes(codes.flatten(1).numpy(), bits)
        payload += scales.numpy().astype("<f4").tobytes()
    for _, tensor in _other_tensors(compressed, graph):
        payload += tensor.detach().to(torch.float32).numpy().astype("<f4").tobytes()
    header = {
        "format": FORMAT_VERSION,
        "builder": builder,
        "builder_kwargs": dict(builder_kwargs or {}),
        "input_shape": list(graph.example_input_shape),
        "importance": graph.importance.name,
        "recipe": policy.to_dict(),
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(header_bytes)))
        f.write(header_bytes)
        f.write(payload)
    return ExportInfo(path, _PREFIX + len(header_bytes), len(payload))


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """The JSON header of an exported file and the offset at which its payload starts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist")
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX)
        if len(prefix) < _PREFIX or prefix[: len(MAGIC)] != MAGIC:
            raise ValueError(f"{str(path)!r} is not an AJPQ packed model (expected magic {MAGIC!r})")
        (length,) = struct.unpack("<I", prefix[len(MAGIC) :])
        try:
            header = json.loads(f.read(length))
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(path)!r}: corrupt header ({err})") from None
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r}: format {header.get('format')!r}, this version reads {FORMAT_VERSION}")
    return header, _PREFIX + length


def load(path: str | Path, builder: Callable[..., nn.Module] | None = None) -> nn.Module:
    """Rebuild the compressed model stored at ``path`` (in eval mode).

    :param builder: the architecture's builder; default: look up the header's builder name in
        :data:`ajpq_env.models.MODELS`
    """
    header, offset = read_header(path)
    if builder is None:
        from ajpq_env.models import build_model

        model = build_model(header["builder"], **header["builder_kwargs"])
    else:
        model = builder(**header["builder_kwargs"])
    model.eval()
    graph = CompressionGraph(model, torch.zeros(header["input_shape"]), header["importance"])
    policy = Policy.from_dict(header["recipe"])
    policy.validate(graph)
    physically_prune(model, graph, pruned_indices(graph, policy))
    data = Path(path).read_bytes()[offset:]
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise ValueError(f"{str(path)!r}: payload truncated at byte {pos} (needs {n} more)")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    state = model.state_dict()
    with torch.no_grad():
        for layer in graph.layers:
            weight = state[f"{layer.name}.weight"]
            bits = policy[layer.name][policy[layer.name] > 0]
            per_channel = weight[0].numel()
            codes = unpack_codes(take(_packed_length(bits, per_channel)), bits, per_channel)
            scales = np.frombuffer(take(4 * bits.size), dtype="<f4")
            values = torch.from_numpy(codes.astype(np.float32)) * torch.from_numpy(scales.copy())[:, None]
            weight.copy_(values.view_as(weight))
        for _, tensor in _other_tensors(model, graph):
            raw = np.frombuffer(take(4 * tensor.numel()), dtype="<f4").copy()
            tensor.copy_(torch.from_numpy(raw).view_as(tensor))
    if pos != len(data):
        raise ValueError(f"{str(path)!r}: {len(data) - pos} unexpected trailing bytes after the payload")
    return model

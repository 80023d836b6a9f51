"""The packed artefact trusts nothing in its file: bounded header fields, checksummed payload, finite values."""

from __future__ import annotations

import hashlib
import json
import struct
import time

import numpy as np
import pytest
import torch

from ajpq_env.compression import CompressionGraph, Policy, compress, export, load, read_header, to_deployed
from ajpq_env.compression.packed import MAGIC
from ajpq_env.tasks import synthetic_task

KWARGS = {"num_classes": 10, "width_mult": 0.25, "in_channels": 3}


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    task = synthetic_task("mobilenet_v2")
    graph = CompressionGraph(task.model, task.example_input())
    policy = Policy.random(graph, np.random.default_rng(0), max_sparsity=0.5)
    calibration = [task.splits["train"].batch(np.arange(32))[0]]
    deployed = to_deployed(compress(task.model, graph, policy), graph, policy, calibration, 8)
    path = tmp_path_factory.mktemp("packed") / "model.ajpq"
    export(deployed, graph, policy, path, builder="mobilenet_v2", builder_kwargs=KWARGS, a_bits=8)
    return path, deployed, task


def _split(path):
    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[8:12])
    return json.loads(data[12 : 12 + length]), data[12 + length :]


def _write(path, header, payload, fix_checksum=True):
    if fix_checksum:
        header = {**header, "payload_sha256": hashlib.sha256(payload).hexdigest(), "payload_bytes": len(payload)}
    raw = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack("<I", len(raw)) + raw + payload)
    return path


def test_roundtrip_is_bit_exact(artefact):
    path, deployed, task = artefact
    x = task.splits["search"].tensor()
    with torch.no_grad():
        assert torch.equal(load(path)(x), deployed(x))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input_shape", [1, 1, 3000, 3000], "input_shape"),
        ("input_shape", [1, 3, 16], "input_shape"),
        ("builder", "os.system", "unknown builder"),
        ("a_bits", 12, "a_bits"),
        ("format", 1, "format"),
        ("activation_quantizers", -1, "activation_quantizers"),
    ],
)
def test_bad_header_fields_are_refused_before_building(artefact, tmp_path, field, value, message):
    header, payload = _split(artefact[0])
    path = _write(tmp_path / "bad.ajpq", {**header, field: value}, payload)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        load(path)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({**KWARGS, "width_mult": 1e4}, "width_mult"),
        ({**KWARGS, "num_classes": 10**9}, "num_classes"),
        ({**KWARGS, "in_channels": 4096}, "in_channels"),
        ({"weights": "IMAGENET1K_V1"}, "fetch weights"),
        ({**KWARGS, "bogus": 1}, "takes no argument bogus"),
        ({**KWARGS, "in_channels": 1}, "input_shape has 3 channels, but 'mobilenet_v2' with these arguments takes 1"),
    ],
)
def test_builder_arguments_are_bounded_and_never_download(artefact, tmp_path, kwargs, message):
    header, payload = _split(artefact[0])
    builder = "mobilenet_v2_imagenet" if "weights" in kwargs else header["builder"]
    path = _write(tmp_path / "bad.ajpq", {**header, "builder": builder, "builder_kwargs": kwargs}, payload)
    with pytest.raises(ValueError, match=message):
        load(path)


def test_known_task_fixes_the_architecture(artefact, tmp_path):
    header, payload = _split(artefact[0])
    recipe = {**header["recipe"], "meta": {"task": "mnist5k-mobilenet_v2"}}
    path = _write(tmp_path / "bad.ajpq", {**header, "recipe": recipe}, payload)
    with pytest.raises(ValueError, match="mnist5k-mobilenet_v2"):
        load(path)


def test_corrupt_payload_fails_its_checksum(artefact, tmp_path):
    header, payload = _split(artefact[0])
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x10
    path = _write(tmp_path / "flip.ajpq", header, bytes(flipped), fix_checksum=False)
    with pytest.raises(ValueError, match="SHA-256"):
        load(path)
    truncated = _write(tmp_path / "short.ajpq", header, payload[:-7], fix_checksum=False)
    with pytest.raises(ValueError, match="truncated"):
        load(truncated)


def test_non_finite_values_are_refused_even_with_a_valid_checksum(artefact, tmp_path):
    header, payload = _split(artefact[0])
    graph = CompressionGraph(synthetic_task("mobilenet_v2").model, torch.zeros(1, 3, 16, 16))
    first = graph.layers[0]
    policy = Policy.from_dict(header["recipe"])
    codes_bytes = (int(policy[first.name].astype(int).sum()) * first.kernel_size + 7) // 8  # then exponent, scales
    bad = bytearray(payload)
    bad[codes_bytes + 1 : codes_bytes + 3] = np.float16(np.nan).tobytes()  # first scale of the first layer
    path = _write(tmp_path / "nan.ajpq", header, bytes(bad))
    with pytest.raises(ValueError, match="non-finite"):
        load(path)
    quantizer = bytearray(payload)
    quantizer[-5:-1] = struct.pack("<f", float("inf"))  # the last activation quantizer's scale
    with pytest.raises(ValueError, match="activation quantizer"):
        load(_write(tmp_path / "inf.ajpq", header, bytes(quantizer)))


def test_header_length_and_garbage_are_refused(artefact, tmp_path):
    path = tmp_path / "huge.ajpq"
    path.write_bytes(MAGIC + struct.pack("<I", 2**31) + b"{}")
    with pytest.raises(ValueError, match="header length"):
        read_header(path)
    path.write_bytes(MAGIC + struct.pack("<I", 4) + b"\xff\xfe{]")
    with pytest.raises(ValueError, match="corrupt header"):
        read_header(path)
    path.write_bytes(b"AJPQPK01" + b"\0" * 20)
    with pytest.raises(ValueError, match="another format version"):
        read_header(path)
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path)

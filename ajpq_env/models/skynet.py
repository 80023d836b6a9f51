"""SkyNet (Zhang et al., MLSys 2020), the DAC-SDC 2019 winning single-object drone detector, as published.

Five bundles ``DW3x3 -> BN -> ReLU6 -> PW1x1 -> BN -> ReLU6`` (3->48->96->192->384->512) with a 2x2 max-pool after
bundles 1-3; the bundle-3 output (192 channels) is reorganised space-to-depth (:class:`Reorg`) to 768 channels at
a quarter of the resolution and concatenated *before* the bundle-5 output (1280 channels); a 1280->96 bundle and
a bias-free 1x1 conv 96->10 give, per cell of an (H/8, W/8) grid, 2 anchors x (tx, ty, tw, th, conf). At the
published 160x320 input the grid is 20x40 and the 13 convolutions cost 463,718,400 MACs.

Module names are those of the reference implementation (TomG008/SkyNet, ``GPU/models.py``: ``model_p1``,
``model_p2``, ``model_p3``), so its ``state_dict`` keys load unchanged. The published weights come in two files
(``$AJPQ_WEIGHTS``; see ``SOURCES.md`` of the benchmark data):

* ``skynet-dac-sdc.weights`` — HDF5, one float32 dataset per ``state_dict`` key (:func:`load_skynet_hdf5`, needs
  ``h5py``);
* ``skynet-dac-sdc-bnfolded.f32`` — flat float32, every BatchNorm folded into its convolution
  (:func:`load_skynet_bnfolded`, numpy only): loaded into the BatchNorm layers as ``weight=1, bias=b,
  mean=0, var=1-eps``, which reproduces the folded network exactly.

Both loaders check the file's sha256 (when it is the published file) and every tensor's shape before anything
is copied. The reference box decoder is :func:`ajpq_env.tasks.boxes.decode_boxes`.

>>> import torch
>>> skynet()(torch.zeros(1, 3, 160, 320)).shape
torch.Size([1, 10, 20, 40])
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SKYNET_ANCHORS",
    "SKYNET_BNFOLDED_SHA256",
    "SKYNET_HDF5_SHA256",
    "Reorg",
    "SkyNet",
    "load_skynet_bnfolded",
    "load_skynet_hdf5",
    "load_skynet_weights",
    "skynet",
]

#: Anchor (width, height) in grid cells, from the reference's ``RegionLoss`` (2 anchors).
SKYNET_ANCHORS: tuple[tuple[float, float], ...] = (
    (1.4940052559648322, 2.3598481287086823),
    (4.0113013115312155, 5.760873975661669),
)
#: sha256 of the published HDF5 weights (TomG008/SkyNet ``GPU/dac.weights``).
SKYNET_HDF5_SHA256 = "5a06b7c8da4e89c82c33667d9d090d3588685b2b1362c384569ca4cbd7aab43c"
#: sha256 of the published BN-folded weights (TomG008/SkyNet ``FPGA/HLS/weights_floating.bin``).
SKYNET_BNFOLDED_SHA256 = "d1a98c44957dc3c8ab20f1835ec2897c38f2307ae79b117ed6902f68170c9a82"
_BN_EPS = 1e-5
_CHANNELS = (3, 48, 96, 192, 384, 512)


class Reorg(nn.Module):
    """Space-to-depth by 2, channels grouped offset-major, as the reference's ``ReorgLayer``.

    Output channel ``k * C + c`` at ``(i, j)`` is input channel ``c`` at ``(2i + k // 2, 2j + k % 2)``: the
    channels of :func:`torch.nn.functional.pixel_unshuffle` (``c * 4 + k``) regrouped by offset ``k``. Plain
    tensor ops without shape arithmetic in Python, so ``torch.fx.symbolic_trace`` and ONNX export see through it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 2).unflatten(1, (-1, 4)).transpose(1, 2).flatten(1, 2)


def _bundle(inp: int, oup: int) -> nn.Sequential:
    """``DW3x3 -> BN -> ReLU6 -> PW1x1 -> BN -> ReLU6``, indices 0..5 as in the reference (no conv biases)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, 1, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU6(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class SkyNet(nn.Module):
    """SkyNet as published; input ``(N, 3, H, W)`` with H and W multiples of 16, output ``(N, 10, H/8, W/8)``.

    Channel ``a * 5 + k`` of the output is, for anchor ``a`` of :data:`SKYNET_ANCHORS`, ``k = 0..4``:
    tx, ty, tw, th, conf (decode with :func:`ajpq_env.tasks.boxes.decode_boxes`). Randomly initialised as the
    reference initialises it (Kaiming normal, fan_out; BatchNorm weight 1, bias 0).
    """

    anchors = SKYNET_ANCHORS
    #: Layers whose output channels may not be pruned, and why (read by
    #: :class:`~ajpq_env.compression.CompressionGraph`). Channel ``c`` of bundle 3 becomes channels
    #: ``k * 192 + c`` (k = 0..3) of the 1280-channel concatenation and channel ``c`` of bundle 5 becomes channel
    #: ``768 + c``; torch-pruning takes the reorg for an element-wise op and would map bundle 3's channels onto the
    #: first 192 concatenated channels. The engine prunes with one identity index list per coupling group, so
    #: these channel sets (and the depthwise conv of the 1280->96 bundle that follows them) are locked instead of
    #: being pruned wrongly. Every other bundle (and the 96-channel bundle before the head) prunes normally.
    compression_locks = {
        "model_p1.4.3": "bundle 3 feeds the reorg + concat bypass (each channel is 4 of the 1280 concatenated "
                        "channels), which the engine's identity channel maps cannot express",
        "model_p2.2.3": "bundle 5 feeds the 1280-channel concatenation at offset 768, which the engine's identity "
                        "channel maps cannot express",
        "model_p3.0.0": "depthwise conv over the reorg + concat of bundles 3 and 5 (locked with them)",
    }

    def __init__(self) -> None:
        super().__init__()
        c = _CHANNELS
        self.model_p1 = nn.Sequential(
            _bundle(c[0], c[1]), nn.MaxPool2d(2, 2), _bundle(c[1], c[2]), nn.MaxPool2d(2, 2), _bundle(c[2], c[3])
        )
        self.reorg = Reorg()
        self.model_p2 = nn.Sequential(nn.MaxPool2d(2, 2), _bundle(c[3], c[4]), _bundle(c[4], c[5]))
        self.model_p3 = nn.Sequential(
            _bundle(4 * c[3] + c[5], 96), nn.Conv2d(96, 5 * len(SKYNET_ANCHORS), 1, bias=False)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = self.model_p1(x)
        return self.model_p3(torch.cat([self.reorg(p1), self.model_p2(p1)], 1))


def skynet() -> SkyNet:
    """SkyNet as published (442,049 trainable parameters, 463,718,400 MACs at 160x320); random weights."""
    return SkyNet()


# ------------------------------------------------------------------------------------------------ weights
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _signature(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(8)


def _check_file(path: str | os.PathLike[str], expected_sha256: str | None, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"SkyNet {what} not found at {str(path)!r}; pass the path of the published file (TomG008/SkyNet, "
            "commit 007e445; the benchmark data's weights/ folder, $AJPQ_WEIGHTS)"
        )
    if expected_sha256 is not None:
        digest = _sha256(path)
        if digest != expected_sha256:
            raise ValueError(
                f"{str(path)!r} has sha256 {digest}, expected {expected_sha256} (the published SkyNet {what}); "
                "pass check_sha256=False to load another file of the same layout"
            )
    return path


def _copy_checked(model: nn.Module, tensors: dict[str, np.ndarray], source: Path) -> nn.Module:
    """Copy ``tensors`` into ``model`` after checking that every key exists and every shape matches."""
    state = model.state_dict()
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{str(source)!r} does not hold SkyNet's tensors: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(state[k].shape)}"
             for k, v in tensors.items() if tuple(v.shape) != tuple(state[k].shape)]
    if wrong:
        raise ValueError(f"{str(source)!r}: tensor shapes do not match SkyNet: {'; '.join(wrong[:5])}")
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    return model


def load_skynet_hdf5(model: SkyNet, path: str | os.PathLike[str], *, check_sha256: bool = True) -> SkyNet:
    """Load the published HDF5 weights (``skynet-dac-sdc.weights``: 61 float32 datasets named after the
    ``state_dict`` keys, no ``num_batches_tracked``) into ``model`` in place; return it.

    :param check_sha256: refuse a file whose sha256 is not the published one (:data:`SKYNET_HDF5_SHA256`)
    """
    try:
        import h5py
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading SkyNet's HDF5 weights needs h5py (pip install h5py); or use "
                                  "load_skynet_bnfolded with skynet-dac-sdc-bnfolded.f32 (numpy only)") from None
    path = _check_file(path, SKYNET_HDF5_SHA256 if check_sha256 else None, "HDF5 weights")
    try:
        with h5py.File(path, "r") as f:
            shapes = {key: f[key].shape for key in f.keys()}
            state = model.state_dict()
            bad = [k for k, s in shapes.items() if k not in state or tuple(s) != tuple(state[k].shape)]
            if bad:  # checked before anything is read into memory
                raise ValueError(f"{str(path)!r}: datasets {bad[:5]} are not SkyNet tensors of the model's shapes")
            tensors = {key: f[key][()] for key in f.keys()}
    except OSError as err:
        raise ValueError(f"{str(path)!r} is not a readable HDF5 file ({err})") from None
    return _copy_checked(model, tensors, path)


def _conv_bn_pairs(model: SkyNet) -> list[tuple[str, str | None]]:
    """``(conv name, BatchNorm name or None)`` of every convolution, in forward order."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    modules = dict(model.named_modules())
    pairs = []
    for name in names:
        parent, _, index = name.rpartition(".")
        bn = f"{parent}.{int(index) + 1}"
        pairs.append((name, bn if isinstance(modules.get(bn), nn.BatchNorm2d) else None))
    return pairs


def load_skynet_bnfolded(model: SkyNet, path: str | os.PathLike[str], *, check_sha256: bool = True) -> SkyNet:
    """Load the published BN-folded float32 file (``skynet-dac-sdc-bnfolded.f32``) into ``model``; return it.

    The file holds, for each convolution in forward order, its folded weight then its bias (the last conv has
    a weight only): 438,718 little-endian float32 values, no header. Each bias goes into the conv's BatchNorm
    as ``weight=1, bias=b, running_mean=0, running_var=1-eps``, so the model computes the folded network.
    The BatchNorm statistics of training are not in this file: prefer :func:`load_skynet_hdf5` for fine-tuning.

    :param check_sha256: refuse a file whose sha256 is not the published one (:data:`SKYNET_BNFOLDED_SHA256`)
    """
    path = _check_file(path, SKYNET_BNFOLDED_SHA256 if check_sha256 else None, "BN-folded weights")
    state = model.state_dict()
    layout: list[tuple[str, tuple[int, ...]]] = []
    for conv, bn in _conv_bn_pairs(model):
        layout.append((f"{conv}.weight", tuple(state[f"{conv}.weight"].shape)))
        if bn is not None:
            layout.append((f"{bn}.bias", tuple(state[f"{bn}.bias"].shape)))
    expected = sum(int(np.prod(shape)) for _, shape in layout)
    if path.stat().st_size != 4 * expected:  # checked before the file is read
        raise ValueError(f"{str(path)!r} has {path.stat().st_size} bytes; SkyNet's BN-folded layout needs "
                         f"{4 * expected} ({expected} float32 values)")
    flat = np.fromfile(path, dtype="<f4")
    tensors: dict[str, np.ndarray] = OrderedDict()
    offset = 0
    for key, shape in layout:
        size = int(np.prod(shape))
        tensors[key] = flat[offset : offset + size].reshape(shape)
        offset += size
    for _, bn in _conv_bn_pairs(model):
        if bn is not None:
            n = state[f"{bn}.bias"].numel()
            tensors[f"{bn}.weight"] = np.ones(n, np.float32)
            tensors[f"{bn}.running_mean"] = np.zeros(n, np.float32)
            tensors[f"{bn}.running_var"] = np.full(n, 1.0 - _BN_EPS, np.float32)
    return _copy_checked(model, tensors, path)


def load_skynet_weights(model: SkyNet, path: str | os.PathLike[str], *, check_sha256: bool = True) -> SkyNet:
    """Load SkyNet weights by file kind: ``.f32`` (BN-folded), HDF5 (by its signature) or a ``torch.save``
    state dict (``weights_only``, e.g. written by ``benchmarks/pretrain.py``)."""
    path = Path(path).expanduser()
    if path.suffix == ".f32":
        return load_skynet_bnfolded(model, path, check_sha256=check_sha256)
    if path.is_file() and _signature(path) == b"\x89HDF\r\n\x1a\n":
        return load_skynet_hdf5(model, path, check_sha256=check_sha256)
    path = _check_file(path, None, "weights")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model.load_state_dict(state, strict=True)
    return model

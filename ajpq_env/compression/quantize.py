"""Per-channel symmetric linear quantization with a bit-width per output channel.

For channel ``c`` at ``b_c`` bits, ``q_max = 2**(b_c - 1) - 1``, ``scale_c = max|w_c| / q_max`` and the integer
code is ``q = clamp(round(w * (1 / scale_c)), -q_max, q_max)`` (round half to even, multiplication by the
float32 reciprocal, as torch's fake-quantize kernels do); the dequantized weight is ``q * scale_c`` in float32.
Because ``|w / scale_c| <= q_max`` by construction, the clamp of the widest bit-width (8) never binds for
narrower channels, so mixed bit-widths take one call of ``torch.fake_quantize_per_channel_affine``.
A channel at 0 bits is pruned: its weights are exactly zero.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["QMAX_BITS", "channel_scales", "quantize_codes", "quantize_weight"]

QMAX_BITS = 8  # widest supported bit-width: the int8 code range every channel's codes fit in


def _bits_tensor(bits: np.ndarray | torch.Tensor, channels: int) -> torch.Tensor:
    bits = torch.tensor(np.asarray(bits), dtype=torch.int64)
    if bits.shape != (channels,):
        raise ValueError(f"expected one bit-width per output channel ({channels}), got shape {tuple(bits.shape)}")
    if bits.numel() and (bits.min() < 0 or bits.max() > QMAX_BITS or ((bits > 0) & (bits < 2)).any()):
        raise ValueError(f"bit-widths must be 0 or in 2..{QMAX_BITS}, got {sorted(set(bits.tolist()))}")
    return bits


def channel_scales(weight: torch.Tensor, bits: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 scale per output channel, ``max|w_c| / (2**(b_c-1) - 1)``; 1.0 for pruned or all-zero channels."""
    bits = _bits_tensor(bits, weight.shape[0])
    qmax = (2 ** (bits.clamp(min=2) - 1) - 1).to(torch.float32)
    maxabs = weight.detach().abs().flatten(1).amax(dim=1).to(torch.float32)
    scales = maxabs / qmax
    return torch.where((bits == 0) | (maxabs == 0), torch.ones_like(scales), scales)


def quantize_weight(weight: torch.Tensor, bits: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The dequantized weight (same shape and dtype float32); 0-bit channels are zero."""
    bits = _bits_tensor(bits, weight.shape[0])
    scales = channel_scales(weight, bits)
    w = weight.detach().to(torch.float32)
    zero_points = torch.zeros(w.shape[0], dtype=torch.int32)
    qmax = 2 ** (QMAX_BITS - 1) - 1
    out = torch.fake_quantize_per_channel_affine(w, scales, zero_points, 0, -qmax, qmax)
    keep = (bits > 0).view(-1, *([1] * (w.dim() - 1)))
    return torch.where(keep, out, torch.zeros_like(out))


def quantize_codes(weight: torch.Tensor, bits: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8, same shape as ``weight``) and float32 scales with ``codes * scale == quantize_weight``."""
    scales = channel_scales(weight, bits)
    deq = quantize_weight(weight, bits)
    codes = torch.round(deq / scales.view(-1, *([1] * (deq.dim() - 1)))).to(torch.int8)
    return codes, scales

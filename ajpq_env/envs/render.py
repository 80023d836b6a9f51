"""Rendering of an episode: a per-layer text table (``"ansi"``) and per-layer bars (``"rgb_array"``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["render_ansi", "render_rgb"]


def render_ansi(rows: list[dict[str, Any]], final: dict[str, Any]) -> str:
    """Per-layer table: name, type, kept/out channels, sparsity, mean bits, lock; then the episode's result."""
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'layer':<{width}}  {'type':<9}  {'kept/out':>9}  {'sparsity':>8}  {'bits':>5}  lock"]
    for r in rows:
        if r["kept"] is None:
            lines.append(f"{r['name']:<{width}}  {r['kind']:<9}  {'-/' + str(r['out']):>9}  {'-':>8}  {'-':>5}  {r['locked']}")
        else:
            lines.append(
                f"{r['name']:<{width}}  {r['kind']:<9}  {str(r['kept']) + '/' + str(r['out']):>9}  "
                f"{r['sparsity']:>8.1%}  {r['mean_bits']:>5.2f}  {r['locked']}"
            )
    if final:
        lines.append(
            f"metric {final['metric']:.4f} (FP32 {final['fp32_metric']:.4f})  size x{final['size_ratio']:.4f}  "
            f"MACs x{final['macs_ratio']:.4f}  BitOPs x{final['bitops_ratio']:.4f}"
        )
    return "\n".join(lines) + "\n"


def render_rgb(rows: list[dict[str, Any]], b_max: int) -> np.ndarray:
    """An RGB image (H, W, 3) uint8 of per-layer sparsity and mean-bit bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax_s, ax_b = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(rows))
    sparsity = [r["sparsity"] or 0.0 for r in rows]
    bits = [r["mean_bits"] or 0.0 for r in rows]
    colours = {"conv": "tab:blue", "depthwise": "tab:orange", "linear": "tab:green"}
    ax_s.bar(x, sparsity, color=[colours[r["kind"]] for r in rows])
    ax_s.set_ylim(0, 1)
    ax_s.set_ylabel("sparsity")
    ax_b.bar(x, bits, color=[colours[r["kind"]] for r in rows])
    ax_b.set_ylim(0, b_max)
    ax_b.set_ylabel("mean bits")
    ax_b.set_xlabel("layer (forward order)")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

"""A Markdown summary and PNG plots of a search run: ``ajpq report RUN_DIR``.

``RUN_DIR`` holds ``episodes.csv`` (one :class:`~ajpq_env.records.EpisodeRecord` per episode, written by
:class:`~ajpq_env.records.RecordWriter`) and ``best_recipe.json``; when ``finetune/``, ``export/`` or their
``evaluate.json`` exist (the default outputs of the next commands) their numbers are summarised too. Written into
``RUN_DIR/report/`` (or ``--out``):

* ``search.png`` — metric vs size ratio of every episode, coloured by episode, with the Pareto front (no other
  episode is both smaller and better) and the best recipe marked; and the metric per episode with its running best;
* ``layers.png`` — per layer of the best recipe: sparsity (fraction of output channels pruned), the bit-width
  mix of the kept channels, and the weight storage before and after;
* ``report.md`` — the numbers, the Pareto front as a table, and the per-layer table.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ajpq_env.compression import CostModel, Policy
from ajpq_env.deploy._cli import check_output_folder, option, parse_config
from ajpq_env.deploy.resolve import check_recipe_data, fit_recipe, load_recipe, task_architecture
from ajpq_env.fileio import atomic_write, loads_json
from ajpq_env.records import EpisodeRecord, read_records

__all__ = ["ReportArgs", "layer_rows", "main", "pareto_front", "plot_layers", "plot_search", "write_report"]

KIND_COLOURS = {"conv": "tab:blue", "depthwise": "tab:orange", "linear": "tab:green", "?": "tab:gray"}


def pareto_front(sizes: np.ndarray, metrics: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (size no larger and metric no lower, one strictly), by size."""
    sizes, metrics = np.asarray(sizes, dtype=float), np.asarray(metrics, dtype=float)
    order = np.lexsort((-metrics, sizes))  # size ascending, then metric descending
    front, best = [], -math.inf
    for i in order:
        if metrics[i] > best:
            front.append(int(i))
            best = metrics[i]
    return np.asarray(front, dtype=int)


def layer_rows(policy: Policy, architecture: Any | None = None) -> list[dict[str, Any]]:
    """One row per layer of ``policy``: name, kind, kept/out channels, sparsity, bit-width counts, mean bits and,
    when the architecture is known, FP32 and compressed weight bytes (packed codes + scales)."""
    layers, cost = {}, None
    if architecture is not None:
        graph = architecture.graph()
        layers = {layer.name: layer for layer in graph.layers}
        cost = CostModel(graph)
        pruned = {g.id: g.channels - policy.kept(g.leader) for g in graph.groups}
    rows = []
    for name in policy:
        bits = policy[name]
        kept = bits[bits > 0]
        row = {"name": name, "kind": layers[name].kind if name in layers else "?", "out": int(bits.size),
               "kept": int(kept.size), "sparsity": 1.0 - kept.size / bits.size,
               "mean_bits": float(kept.mean()) if kept.size else 0.0,
               "bits": {int(b): int((kept == b).sum()) for b in np.unique(kept)}}
        if cost is not None and name in layers:
            layer = layers[name]
            lc = cost.layer_cost(layer, kept.astype(np.int64), cost.in_kept(layer, pruned))
            row["fp32_bytes"], row["bytes"] = 4 * layer.params, lc.weight_bytes + lc.scale_bytes
        rows.append(row)
    return rows


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_layers(rows: list[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Per-layer sparsity, bit-width mix and (when known) weight bytes of a recipe, as a PNG."""
    from matplotlib.patches import Patch

    with_bytes = all("bytes" in r for r in rows)
    fig = _figure(max(8.0, 0.2 * len(rows) + 2.5), 8.5 if with_bytes else 6.0)
    axes = fig.subplots(3 if with_bytes else 2, 1, sharex=True)
    x = np.arange(len(rows))
    kinds = [r["kind"] for r in rows]
    ax = axes[0]
    ax.bar(x, [r["sparsity"] for r in rows], color=[KIND_COLOURS.get(k, "tab:gray") for k in kinds])
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity\n(channels pruned)")
    ax.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in KIND_COLOURS if k in kinds],
              loc="upper left", fontsize=8, ncols=3)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)

    ax = axes[1]
    widths = sorted({b for r in rows for b in r["bits"]})
    cmap = _colormap("viridis", len(widths))
    bottom = np.zeros(len(rows))
    for i, b in enumerate(widths):
        share = np.array([r["bits"].get(b, 0) / max(r["kept"], 1) for r in rows])
        ax.bar(x, share, bottom=bottom, color=cmap[i], label=f"{b} bits")
        bottom += share
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of kept channels\nby bit-width")
    ax.legend(loc="upper left", bbox_to_anchor=(1.06, 1.0), fontsize=8)
    twin = ax.twinx()
    twin.plot(x, [r["mean_bits"] for r in rows], "o", color="black", markersize=3.5, label="mean bits")
    twin.set_ylim(0, 8.5)
    twin.set_ylabel("mean bits (black dots)")

    if with_bytes:
        ax = axes[2]
        ax.bar(x - 0.2, [r["fp32_bytes"] / 1024 for r in rows], width=0.4, color="lightgray", label="FP32")
        ax.bar(x + 0.2, [r["bytes"] / 1024 for r in rows], width=0.4, color="tab:red", label="compressed")
        ax.set_yscale("log")
        ax.set_ylabel("weights (KiB)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.06, 1.0), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, [r["name"] for r in rows], rotation=90, fontsize=6 if len(rows) > 30 else 8)
    axes[-1].set_xlabel("layer (forward order)")
    path = Path(path)
    fig.savefig(path)
    return path


def _colormap(name: str, n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps[name]
    return [cmap(v) for v in (np.linspace(0.15, 0.95, n) if n > 1 else [0.6])]


def plot_search(records: list[EpisodeRecord], path: str | os.PathLike[str], best: int | None = None,
                title: str = "") -> Path:
    """Metric vs size ratio of every episode (Pareto front marked), and metric per episode, as a PNG.

    :param best: position in ``records`` of the best recipe's episode (starred), if known
    """
    sizes = np.array([r.size_ratio for r in records])
    metrics = np.array([r.metric for r in records])
    ok = np.isfinite(sizes) & np.isfinite(metrics)
    index = np.arange(len(records))[ok]
    fig = _figure(12.0, 4.8)
    ax, ax_t = fig.subplots(1, 2, width_ratios=[3, 2])
    points = ax.scatter(sizes[ok], metrics[ok], c=index, cmap="viridis", s=16, alpha=0.8, label="episode")
    fig.colorbar(points, ax=ax, label="episode")
    front = index[pareto_front(sizes[ok], metrics[ok])] if ok.any() else np.zeros(0, dtype=int)
    ax.step(sizes[front], metrics[front], where="post", color="tab:red", linewidth=1.2)
    ax.scatter(sizes[front], metrics[front], facecolors="none", edgecolors="tab:red", s=70, linewidths=1.4,
               label=f"Pareto front ({len(front)})")
    fp32 = np.array([r.fp32_metric for r in records])
    if np.isfinite(fp32).any():
        ax.axhline(float(np.nanmax(fp32)), color="gray", linestyle="--", linewidth=1, label="FP32")
    targets = {(r.resource, r.target) for r in records}
    if len(targets) == 1 and next(iter(targets))[0] == "size":
        ax.axvline(next(iter(targets))[1], color="black", linestyle=":", linewidth=1, label="size target")
    if best is not None and ok[best]:
        ax.scatter([sizes[best]], [metrics[best]], marker="*", s=260, color="gold", edgecolors="black",
                   zorder=5, label="best recipe")
    ax.set_xlabel("size / FP32 size")
    ax.set_ylabel(f"metric ({records[0].task if records else ''}, search split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title)

    ax_t.plot(index, metrics[ok], ".", color="tab:blue", alpha=0.6, label="episode")
    ax_t.plot(index, np.maximum.accumulate(metrics[ok]) if ok.any() else [], color="tab:red", label="best so far")
    ax_t.set_xlabel("episode")
    ax_t.set_ylabel("metric")
    ax_t.grid(alpha=0.3)
    ax_t.legend(fontsize=8, loc="lower right")
    path = Path(path)
    fig.savefig(path)
    return path


class _BadFile(ValueError):
    """A summary file that is not a JSON object (the message names it)."""


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (``{}`` when absent); ``ValueError`` naming the file when it is not one."""
    if not path.is_file():
        return {}
    try:
        data = loads_json(path.read_text())
    except (OSError, ValueError) as err:
        raise _BadFile(f"{str(path)!r} is not readable JSON ({err}); remove it or write it again") from None
    if not isinstance(data, dict):
        raise _BadFile(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def write_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``report.md``, ``search.png`` and ``layers.png`` for ``run_dir``; return the Markdown file's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist or is not a folder")
    episodes = run / "episodes.csv"
    if not episodes.is_file():
        raise FileNotFoundError(f"no episodes.csv in run folder {str(run)!r}; expected the CSV that a search "
                                "writes with ajpq_env.records.RecordWriter")
    records = list(read_records(episodes))
    if not records:
        raise ValueError(f"{str(episodes)!r} holds no episodes yet")
    tasks = sorted({r.task for r in records})
    if len(tasks) != 1:
        raise ValueError(f"{str(episodes)!r} mixes the episodes of tasks {tasks}; a run folder holds one search")
    for r in records:
        if r.recipe:
            check_recipe_data(r.recipe, f"{str(episodes)!r} episode {r.episode}")
    recipe_path = run / "best_recipe.json"
    note = ""
    if recipe_path.is_file():
        policy = load_recipe(recipe_path)
        if policy.meta.get("task") not in (None, tasks[0]):
            raise ValueError(f"{str(recipe_path)!r} is a recipe of task {policy.meta.get('task')!r}, but the episodes "
                             f"in {str(episodes)!r} are of task {tasks[0]!r}; a report needs both from one search")
    else:  # say so in the report rather than guess silently
        top = max(range(len(records)), key=lambda i: records[i].reward if math.isfinite(records[i].reward) else -1e300)
        if not records[top].recipe:
            raise ValueError(f"{str(episodes)!r} holds no recipe and the run folder no best_recipe.json")
        policy = Policy.from_dict(records[top].recipe)
        note = (f"> `best_recipe.json` is missing; the per-layer plot shows episode {records[top].episode} "
                "(best reward).\n")
    digest = policy.digest()
    best = next((i for i, r in enumerate(records) if r.recipe and Policy.from_dict(r.recipe).digest() == digest), None)
    task = str(policy.meta.get("task") or records[0].task)
    try:
        architecture = task_architecture(task, str(policy.meta.get("importance", "l1")))
    except ValueError:
        architecture = None
    if architecture is not None:
        fit_recipe(policy, architecture.graph(), task=task, model=architecture.builder,
                   source=f"the best recipe of {str(run)!r}")
    rows = layer_rows(policy, architecture)

    out = Path(out_dir) if out_dir is not None else run / "report"
    check_output_folder(out, "--out")
    sections = _deploy_sections(run)
    out.mkdir(parents=True, exist_ok=True)
    plot_search(records, out / "search.png", best, title=f"{task}: {len(records)} episodes")
    plot_layers(rows, out / "layers.png", title=f"best recipe: {policy!r}")
    md = _markdown(run, records, policy, rows, best, task, note, out, sections)
    atomic_write(out / "report.md", md)
    return out / "report.md"


def _markdown(run: Path, records: list[EpisodeRecord], policy: Policy, rows: list[dict[str, Any]],
              best: int | None, task: str, note: str, out: Path, sections: list[str]) -> str:
    first = records[0]
    agents = sorted({r.agent for r in records if r.agent})
    seeds = sorted({r.seed for r in records if r.seed is not None})
    walltime = sum(r.walltime for r in records if math.isfinite(r.walltime))
    lines = [f"# AJPQ run `{run.name}`", "", note,
             "| | |", "|---|---|",
             f"| task | `{task}` |", f"| env | `{first.env_id or '-'}`, mode `{first.mode}` |",
             f"| budget | {first.resource} <= {first.target:g} x FP32 |",
             f"| agent, seeds | {', '.join(agents) or '-'}; {', '.join(map(str, seeds)) or '-'} |",
             f"| episodes | {len(records)} ({walltime:.0f} s of episode time) |", ""]
    lines += ["## Best recipe", ""]
    if best is not None:
        r = records[best]
        lines += [f"Episode {r.episode}: metric **{_pct(r.metric)}** on the search split (FP32 {_pct(r.fp32_metric)}), "
                  f"size x{r.size_ratio:.4f}, BitOPs x{r.bitops_ratio:.4f}, MACs x{r.macs_ratio:.4f}.", ""]
    kept = sum(r["kept"] for r in rows)
    total = sum(r["out"] for r in rows)
    lines += [f"{kept}/{total} channels kept ({1 - kept / total:.1%} pruned), mean {policy.mean_bits():.2f} bits per "
              f"kept channel, recipe digest `{policy.digest()[:12]}`.", ""]
    lines += sections
    sizes = np.array([r.size_ratio for r in records])
    metrics = np.array([r.metric for r in records])
    ok = np.flatnonzero(np.isfinite(sizes) & np.isfinite(metrics))
    front = list(ok[pareto_front(sizes[ok], metrics[ok])]) if ok.size else []
    if best is not None and best not in front:
        # the best recipe ties a front member on metric at a larger size (the search keeps the first of equal
        # rewards): list it anyway, so the table always shows the recipe the run hands on
        front = sorted(front + [best], key=lambda i: (sizes[i], -metrics[i]))
    lines += ["## Search", "", f"![metric vs size]({_rel(out / 'search.png', out)})", "",
              f"Pareto front ({len(front)} of {len(records)} episodes: none smaller and better; the best recipe "
              "always listed):", "",
              "| episode | metric | size ratio | BitOPs ratio | MACs ratio |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {records[i].episode}{' (best)' if i == best else ''} | {_pct(records[i].metric)} | "
              f"{records[i].size_ratio:.4f} | {records[i].bitops_ratio:.4f} | {records[i].macs_ratio:.4f} |"
              for i in front]
    lines += ["", "## Layers of the best recipe", "",
              f"![per-layer sparsity and bits]({_rel(out / 'layers.png', out)})", "",
              "| # | layer | type | kept/out | sparsity | mean bits | bit-widths (channels) | KiB (FP32 -> packed) |",
              "|---:|---|---|---:|---:|---:|---|---:|"]
    for i, r in enumerate(rows):
        mix = " ".join(f"{b}:{n}" for b, n in sorted(r["bits"].items()))
        size = f"{r['fp32_bytes'] / 1024:.1f} -> {r['bytes'] / 1024:.2f}" if "bytes" in r else "-"
        lines.append(f"| {i} | `{r['name']}` | {r['kind']} | {r['kept']}/{r['out']} | {r['sparsity']:.1%} | "
                     f"{r['mean_bits']:.2f} | {mix} | {size} |")
    return "\n".join(lines) + "\n"


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def _deploy_sections(run: Path) -> list[str]:
    """Summaries of ``finetune/finetune.json``, ``export/export.json`` and ``export/evaluate.json`` if present;
    ``ValueError`` naming the file when one is not what those commands write."""
    files = {"finetune/finetune.json", "export/export.json", "export/evaluate.json"}
    try:
        return _deploy_lines(run)
    except _BadFile:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as err:  # a field missing or of another type
        raise ValueError(f"one of {sorted(files)} in {str(run)!r} is not what `ajpq finetune` / `export` / `evaluate` "
                         f"write ({type(err).__name__}: {err}); remove it or write it again") from None


def _deploy_lines(run: Path) -> list[str]:
    lines: list[str] = []
    tuned = _read_json(run / "finetune" / "finetune.json")
    if tuned:
        m, epochs = tuned.get("metrics", {}), len(tuned.get("history", []))
        lines += ["## Fine-tuning", "",
                  f"{epochs} epochs of quantization-aware fine-tuning in {tuned.get('seconds', 0):.0f} s: test metric "
                  f"**{_pct(m.get('test'))}** (before fine-tuning {_pct(m.get('before_test'))}, FP32 "
                  f"{_pct(m.get('fp32_test'))}).", ""]
    exported = _read_json(run / "export" / "export.json")
    if exported:
        art, cost, onnx = exported["artefact"], exported["cost"], exported.get("onnx")
        text = (f"`export/{art['file']}`: {art['file_bytes']:,} B on disk = {art['header_bytes']:,} B header + "
                f"{art['payload_bytes']:,} B payload (x{cost['size_ratio']:.4f} of the FP32 "
                f"{cost['fp32_size_bytes']:,} B)")
        if onnx:
            text += f"; `export/{onnx['file']}` ({onnx['format']}): {onnx['file_bytes']:,} B"
        lines += ["## Export", "", text + ".", ""]
    evaluated = _read_json(run / "export" / "evaluate.json")
    if evaluated:
        lines += [f"Evaluated on the {evaluated['split']} split ({evaluated['samples']} samples): package loader "
                  f"**{_pct(evaluated['metric'])}**"
                  + (f", onnxruntime {_pct(evaluated['onnx_metric'])} (max logit difference "
                     f"{evaluated['max_abs_diff']:.1e})" if evaluated.get("onnx") else "")
                  + f"; size on disk {'matches' if evaluated['size_matches'] else 'DOES NOT match'} the report.", ""]
    return lines


# --------------------------------------------------------------------------------------------- command line
@dataclass
class ReportArgs:
    """``ajpq report`` options."""

    run_dir: Path = option(help="run folder holding episodes.csv and best_recipe.json", positional=True,
                           metavar="RUN_DIR")
    out: Path | None = option(None, "output folder; default: RUN_DIR/report")


def main(argv: list[str] | None = None) -> int:
    """``ajpq report``: Markdown summary and PNG plots of a search run."""
    args = parse_config(ReportArgs, argv, prog="ajpq report",
                        description="Markdown summary and PNG plots of a search run: metric vs size of every "
                                    "episode with the Pareto front, per-layer sparsity and bit-widths of the best "
                                    "recipe.")
    try:
        path = write_report(args.run_dir, args.out)
    except (ValueError, OSError) as err:  # OSError: e.g. a name too long for the file system
        print(f"ajpq report: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} with {path.parent / 'search.png'} and {path.parent / 'layers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

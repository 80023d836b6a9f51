"""Latency of the exported compressed model against the FP32 model in onnxruntime, and its accuracy, in one run.

For a task and a recipe (a JSON file, or built here: the importance heuristic's candidates at a size target,
the best on the search split), at batch 1 and batch 64 with the same intra-op thread count (default 1):

* ``fp32``: the task's FP32 model exported by ``torch.onnx.export`` (eval mode, BatchNorm folded by the exporter);
* ``qdq``: the compressed model as ``ajpq export`` writes it (integer kernels: ``QLinearConv``, ``QGemm``);
* ``pruned-fp32``: the compressed model's channels in float (the physically pruned network with float
  weights, exported like FP32): what pruning alone buys, without the integer kernels;

median seconds of ``--repeats`` rounds after warm-up, the rounds interleaved (one sample of each model per
round) so that a change of machine load affects every model alike; the speed-up ratios over FP32; and the
test-split accuracy of the FP32 ONNX model, of the compressed ONNX model and of the package loader
(:func:`ajpq_env.compression.load` of the packed artefact). Options:

* ``--channel-round 1 8 16``: the whole comparison for each rounding of pruned channel counts (the env's
  ``channel_round``), to see what kernel-friendly channel counts buy;
* ``--profile``: onnxruntime's profiler, time per operator type of each model at each batch size;
* ``--predict``: the latency resource's prediction error: predicted (latency table, ``ajpq profile``) against
  measured latency of several recipes (unpruned 8/4-bit, heuristic recipes at size and latency budgets,
  random episodes under a latency budget).

Timing numbers need a quiet machine: the load average is printed before and after.

    python -m benchmarks.latency --task cifar10-mobilenet_v2            # AJPQ_DATA=/path/to/cifar10
    python -m benchmarks.latency --task mnist5k-mobilenet_v2 --channel-round 1 8 16 --profile
    ajpq profile --task mnist5k-mobilenet_v2 && python -m benchmarks.latency --task mnist5k-mobilenet_v2 --predict
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajpq_env.compression import CompressionGraph, CostModel, LatencyTable, Policy
from ajpq_env.compression.latency import default_table_path
from ajpq_env.deploy.evaluate import evaluate_artefact, run_onnx
from ajpq_env.deploy.export import compress_as_searched, export_model
from ajpq_env.deploy.onnx_export import export_onnx
from ajpq_env.deploy.resolve import Architecture, resolve_task
from ajpq_env.deploy.timing import call_samples, export_fp32_onnx, interleaved_medians, op_profile, ort_session
from ajpq_env.envs import AJPQEnv, random_recipe
from ajpq_env.tasks import Task

__all__ = ["Config", "heuristic_recipe", "main", "parse_args"]


@dataclass
class Config:
    """Command-line options.

    :param task: task name (``synthetic-<model>`` for a tiny random one)
    :param recipe: recipe JSON to measure; default: built here by the importance heuristic at ``target``
    :param target: budget of the built recipe, as a ratio of FP32 ``resource``
    :param resource: the budgeted resource of the built recipe: ``size``, or ``latency`` (predicted by the latency
        table, ``--latency-table`` or the cached one; its batch size is the regime the budget is for)
    :param channel_round: one comparison per value (pruned channel counts are multiples of it)
    :param b_max: largest bit-width of the built recipe (7 keeps every layer on the int8-weight kernels: the
        exporter stores a layer holding an 8-bit channel as uint8, which runs onnxruntime's slower u8u8 kernels)
    :param candidates: heuristic candidates measured on the search split (the best is kept); 0 = all
    :param threads: onnxruntime intra-op threads of every timed session (and torch's threads)
    :param batches: batch sizes timed
    :param repeats: timed rounds (median)
    :param warmup: untimed calls per model first
    :param min_sample_ms: each sample repeats the call until it lasts this long
    :param test_size: test samples for the accuracies (0 = the whole split)
    :param search_size: search-split samples for ranking the heuristic's candidates (default: the task's)
    :param profile: print onnxruntime's time per operator type
    :param predict: print predicted against measured latency of several recipes (needs a latency table)
    :param latency_table: the table for ``--predict`` (default: the one ``ajpq profile`` cached)
    :param data: data set root (default ``$AJPQ_DATA``)
    :param weights: FP32 weights (default: packaged, then ``$AJPQ_WEIGHTS``)
    :param out: folder for the ONNX files and ``latency.json`` (default: a temporary folder, removed)
    """

    task: str = "cifar10-mobilenet_v2"
    recipe: Path | None = None
    target: float = 0.125
    resource: str = "size"
    channel_round: list[int] = field(default_factory=lambda: [1])
    b_max: int = 8
    candidates: int = 0
    threads: int = 1
    batches: list[int] = field(default_factory=lambda: [1, 64])
    repeats: int = 20
    warmup: int = 3
    min_sample_ms: float = 20.0
    test_size: int = 0
    search_size: int | None = None
    profile: bool = False
    predict: bool = False
    latency_table: Path | None = None
    data: str | None = None
    weights: str | None = None
    out: Path | None = None


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    positive = _bounded(int, 1)
    parser.add_argument("--task", default=Config.task)
    parser.add_argument("--recipe", type=Path, default=None, help="recipe JSON (default: built by the heuristic)")
    parser.add_argument("--target", type=_bounded(float, 1e-6, 1.0), default=Config.target,
                        help="budget of the built recipe as a ratio of FP32 (default 0.125)")
    parser.add_argument("--resource", choices=("size", "latency"), default=Config.resource,
                        help="budgeted resource of the built recipe (latency: needs a latency table)")
    parser.add_argument("--channel-round", type=positive, nargs="+", default=[1], help="e.g. 1 8 16")
    parser.add_argument("--b-max", type=_bounded(int, 2, 8), default=Config.b_max,
                        help="largest bit-width of the built recipe (7: int8-weight kernels everywhere)")
    parser.add_argument("--candidates", type=_bounded(int, 0), default=0, help="heuristic candidates ranked (0 = all)")
    parser.add_argument("--threads", type=positive, default=Config.threads)
    parser.add_argument("--batches", type=positive, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=positive, default=Config.repeats)
    parser.add_argument("--warmup", type=_bounded(int, 0), default=Config.warmup)
    parser.add_argument("--min-sample-ms", type=_bounded(float, 0.0), default=Config.min_sample_ms)
    parser.add_argument("--test-size", type=_bounded(int, 0), default=0, help="0 = the whole test split")
    parser.add_argument("--search-size", type=positive, default=None)
    parser.add_argument("--profile", action="store_true", help="time per ONNX operator type (onnxruntime profiler)")
    parser.add_argument("--predict", action="store_true", help="latency table prediction error over several recipes")
    parser.add_argument("--latency-table", type=Path, default=None, help="default: the cached `ajpq profile` table")
    parser.add_argument("--data", default=None, help="data root (default $AJPQ_DATA)")
    parser.add_argument("--weights", default=None, help="FP32 weights (default: packaged, then $AJPQ_WEIGHTS)")
    parser.add_argument("--out", type=Path, default=None, help="keep the ONNX files and latency.json here")
    return Config(**vars(parser.parse_args(argv)))


def _bounded(kind: type, low: float, high: float | None = None):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not (value >= low and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"must lie in [{low}, {'inf' if high is None else high}], got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


# ---------------------------------------------------------------------- recipes
def _meta(env: AJPQEnv) -> dict[str, Any]:
    return {"task": env.task.name, "model": env.task.spec.model,
            **{k: v for k, v in env.spec_kwargs.items() if k not in ("fixed_pruning", "latency_table")}}


def heuristic_plans(env: AJPQEnv) -> list[Policy]:
    """The importance heuristic's candidate recipes in ``env`` (each meets its budget), with the env's meta."""
    from agents.baselines import ImportanceHeuristic

    agent = ImportanceHeuristic()
    agent.setup(env, episodes=1, seed=0)
    return [Policy({name: plan.recipe[name] for name in plan.recipe}, meta=_meta(env)) for plan in agent.candidates]


def heuristic_recipe(env: AJPQEnv, candidates: int = 0) -> tuple[Policy, float, int]:
    """The best of the heuristic's candidates on the search split: ``(recipe, search metric, candidates ranked)``."""
    plans = heuristic_plans(env)
    plans = plans[:candidates] if candidates else plans
    scored = [(env.apply(policy)["metric"], -i, policy) for i, policy in enumerate(plans)]
    metric, _, best = max(scored, key=lambda s: s[:2])
    return best, metric, len(plans)


# ---------------------------------------------------------------------- measurements
def _load() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


def _batch(task: Task, size: int) -> np.ndarray:
    test = task.splits["test"]
    idx = np.arange(size) % len(test)
    return test.batch(idx)[0].numpy()


def time_models(paths: dict[str, Path], task: Task, config: Config) -> dict[int, dict[str, float]]:
    """``{batch: {model: median seconds per call}}`` (interleaved rounds)."""
    out = {}
    for batch in config.batches:
        x = _batch(task, batch)
        runs = {}
        for name, path in paths.items():
            session = ort_session(path, config.threads)
            runs[name] = (session, {session.get_inputs()[0].name: x})
        out[batch] = interleaved_medians(runs, repeats=config.repeats, warmup=config.warmup,
                                         min_sample_seconds=config.min_sample_ms / 1000)
    return out


def _split(task: Task, name: str, size: int):
    split = task.splits[name]
    if not size or size >= len(split):
        return split
    from ajpq_env.tasks.registry import Split

    return Split(split.images[:size], split.labels[:size].numpy(), split.normalization)


def _with_search(task: Task, size: int | None) -> Task:
    """``task`` with its search split cut to the first ``size`` samples (``None``: unchanged)."""
    return task if size is None else Task(task.spec, task.model, {**task.splits, "search": _split(task, "search", size)})


def compare(task: Task, policy: Policy, graph: CompressionGraph, fp32_path: Path, folder: Path,
            config: Config) -> dict[str, Any]:
    """Export ``policy``, time it against FP32 and the float-activation twin, and measure the accuracies."""
    deployable = compress_as_searched(task, policy, graph)
    architecture = Architecture.from_task(task, str(policy.meta.get("importance", "l1")))
    manifest = export_model(deployable, architecture, folder, onnx_format="qdq", graph=graph)
    qdq = folder / "model.onnx"
    pruned = export_fp32_onnx(deployable.model, folder / "pruned_fp32.onnx", task.example_input())
    paths = {"fp32": fp32_path, "qdq": qdq, "pruned-fp32": pruned}
    seconds = time_models(paths, task, config)
    test = _split(task, "test", config.test_size)
    evaluation = evaluate_artefact(folder / "model.ajpq", test, onnx_path=qdq, metric=task.metric)
    fp32_logits, _ = run_onnx(ort_session(fp32_path, max(torch.get_num_threads(), 1)), test)
    fp32_acc = float(task.metric.scores(fp32_logits, test.labels.numpy()).mean())
    result = {
        "cost": manifest["cost"],
        "seconds": {str(b): s for b, s in seconds.items()},
        "speedup": {str(b): {name: s["fp32"] / s[name] for name in paths} for b, s in seconds.items()},
        "accuracy": {"fp32_onnx": fp32_acc, "qdq_onnx": evaluation.onnx_metric, "package_loader": evaluation.metric},
        "agreement_qdq_loader": evaluation.agreement,
        "test_samples": len(test),
    }
    if config.profile:
        result["profile"] = {str(b): {name: op_profile(path, {"input": _batch(task, b)}, config.threads,
                                                        runs=max(3, min(config.repeats, 20)))
                                      for name, path in paths.items()} for b in config.batches}
    return result


def print_comparison(result: dict[str, Any], label: str) -> None:
    cost = result["cost"]
    print(f"\n{label}: size {cost['size_ratio']:.4f} of FP32, MACs {cost['macs_ratio']:.3f}, "
          f"BitOPs {cost['bitops_ratio']:.4f}")
    names = {"fp32": "FP32 ONNX (torch.onnx.export)", "qdq": "compressed ONNX, integer kernels (qdq)",
             "pruned-fp32": "same channels pruned, float (no quantization)"}
    batches = list(result["seconds"])
    head = "".join(f"  b{b} ms/sample  speed-up" for b in batches)
    print(f"  {'model':46s}{head}  test acc")
    acc = {"fp32": result["accuracy"]["fp32_onnx"], "qdq": result["accuracy"]["qdq_onnx"], "pruned-fp32": None}
    for name, text in names.items():
        cells = "".join(f"  {1e3 * result['seconds'][b][name] / int(b):12.4f}  {result['speedup'][b][name]:7.2f}x"
                        for b in batches)
        score = "" if acc[name] is None else f"  {100 * acc[name]:.2f}%"
        print(f"  {text:46s}{cells}{score}")
    gap = 100 * (result["accuracy"]["qdq_onnx"] - result["accuracy"]["package_loader"])
    print(f"  package loader (ajpq_env.compression.load): {100 * result['accuracy']['package_loader']:.2f}%; "
          f"compressed ONNX - loader {gap:+.2f} pt (target within 0.5), predictions agree on "
          f"{100 * result['agreement_qdq_loader']:.2f}% of {result['test_samples']} test samples")
    for batch, models in result.get("profile", {}).items():
        print(f"  where the time goes, batch {batch} (onnxruntime profiler, us per run; share of the run):")
        for name, prof in models.items():
            total = prof["run_us"] or 1.0
            ops = ", ".join(f"{op} x{prof['nodes'][op]} {us:.0f} ({100 * us / total:.0f}%)"
                            for op, us in list(prof["ops"].items())[:6])
            print(f"    {name:11s} run {prof['run_us']:.0f} us: {ops}")


# ---------------------------------------------------------------------- prediction error
def predict(task: Task, graph: CompressionGraph, table: LatencyTable, config: Config, folder: Path,
            extra: list[tuple[str, Policy]] = ()) -> dict[str, Any]:
    """Predicted (latency table) against measured latency of several recipes at the table's batch size: the
    unpruned 8-bit and 4-bit networks (they set the table's constant: in sample), unpruned random bit-widths,
    random episodes under size and latency budgets, and ``extra`` (e.g. the recipes compared above)."""
    costs = CostModel(graph, 8, latency=table)
    rng = np.random.default_rng(0)
    recipes: list[tuple[str, Policy, bool]] = [
        ("unpruned 8-bit", Policy.uniform(graph, 8), True),
        ("unpruned 4-bit", Policy.uniform(graph, 4), True),
        ("unpruned, random 2..8 bits", Policy({layer.name: rng.integers(2, 9, layer.out_channels)
                                                for layer in graph.layers}), False),
        *((name, policy, False) for name, policy in extra),
    ]
    quick = _with_search(task, 8)  # the episodes' own evaluation is not needed here: 8 samples keep it cheap
    for seed, target in enumerate((0.25, 0.125)):
        env = AJPQEnv(quick, target=target, resource="size", latency_table=table, cache_size=0)
        recipes.append((f"random episode, size {target}", random_recipe(env, seed), False))
    try:
        probe = AJPQEnv(quick, target=1.0, resource="latency", latency_table=table, cache_size=0)
        floor = probe.budget.minimum / probe.budget.fp32_total
    except ValueError as err:  # even the most compressed network is predicted slower than FP32
        print(f"no latency-budgeted recipes: {err}")
        floor = None
    unpruned = costs(Policy.uniform(graph, 4)).latency_us / table.fp32_us
    for seed, share in enumerate((0.75, 0.5, 0.25) if floor is not None else ()):
        target = min(1.0, floor + share * (max(unpruned, floor) - floor))
        env = AJPQEnv(quick, target=target, resource="latency", latency_table=table, cache_size=0)
        recipes.append((f"random episode, latency {target:.3f}", random_recipe(env, 10 + seed), False))
    x = _batch(task, table.batch)
    rows = []
    for name, policy, in_sample in recipes:
        deployed = compress_as_searched(task, policy, graph).deployed(graph)
        onnx_path = export_onnx(deployed, folder / "predict.onnx", task.example_input())
        session = ort_session(onnx_path, table.threads)
        samples = call_samples(session, {"input": x}, repeats=config.repeats, warmup=config.warmup,
                               min_sample_seconds=config.min_sample_ms / 1000)
        measured, fastest = 1e6 * statistics.median(samples), 1e6 * min(samples)
        predicted = costs(policy).latency_us
        rows.append({"recipe": name, "predicted_us": predicted, "measured_us": measured, "fastest_us": fastest,
                     "error": predicted / measured - 1, "in_sample": in_sample})
    held_out = [abs(r["error"]) for r in rows if not r["in_sample"]]
    return {"table": str(table.path), "batch": table.batch, "threads": table.threads, "rows": rows,
            "mean_abs_error": float(np.mean(held_out)), "max_abs_error": float(np.max(held_out))}


def print_prediction(result: dict[str, Any]) -> None:
    print(f"\nlatency prediction ({result['table']}, batch {result['batch']}, {result['threads']} thread(s)):")
    print(f"  {'recipe':36s} {'predicted us':>13s} {'median us':>10s} {'fastest us':>11s} {'error':>8s}")
    for row in result["rows"]:
        mark = "  (in sample: sets the constant)" if row["in_sample"] else ""
        print(f"  {row['recipe']:36s} {row['predicted_us']:13.1f} {row['measured_us']:10.1f} {row['fastest_us']:11.1f} "
              f"{100 * row['error']:+7.1f}%{mark}")
    print(f"  held-out recipes: mean |error| {100 * result['mean_abs_error']:.1f}%, "
          f"max {100 * result['max_abs_error']:.1f}% (error = predicted / median - 1)")


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = parse_args(argv)
    torch.set_num_threads(config.threads)
    import onnxruntime

    task = resolve_task(config.task, data_root=config.data, weights=config.weights)
    graph = CompressionGraph(task.model, task.example_input())
    table = None
    if config.resource == "latency" or config.predict:  # read before any measurement: a bad table loses nothing
        try:
            table = LatencyTable.load(config.latency_table or default_table_path(task.name, config.threads, 1), graph)
        except (OSError, ValueError) as err:
            raise SystemExit(f"benchmarks.latency: {err}") from None
    print(f"task {task.name} | onnxruntime {onnxruntime.__version__}, {config.threads} intra-op thread(s), median "
          f"of {config.repeats} interleaved rounds after {config.warmup} warm-up calls | {_load()}")
    started = time.perf_counter()
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                               "load_before": _load(), "comparisons": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = config.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        fp32_path = export_fp32_onnx(task.model, folder / "fp32.onnx", task.example_input())
        for rounding in config.channel_round:
            if config.recipe is not None:
                policy = Policy.load(config.recipe)
                label = f"recipe {config.recipe}"
                if rounding != 1 or len(config.channel_round) > 1:
                    print("--channel-round applies to built recipes; a given recipe is measured as it is")
            else:
                try:
                    env = AJPQEnv(_with_search(task, config.search_size), target=config.target,
                                  resource=config.resource, channel_round=rounding, b_max=config.b_max,
                                  fixed_bits=config.b_max,
                                  latency_table=table if config.resource == "latency" else None)
                except ValueError as err:  # an unreachable --target
                    raise SystemExit(f"benchmarks.latency: {err}") from None
                policy, metric, ranked = heuristic_recipe(env, config.candidates)
                label = (f"heuristic recipe at {config.resource} {config.target}, channel_round {rounding}, "
                         f"b_max {config.b_max} (best of {ranked} candidates, search metric {metric:.4f}"
                         + ("" if env.latency_table is None else f", predicted latency {env.costs(policy).latency_us:.0f} us "
                            f"= {env.costs(policy).latency_us / env.costs.fp32.latency_us:.3f} of FP32 at batch "
                            f"{env.latency_table.batch}") + ")")
            result = compare(task, policy, graph, fp32_path, folder / f"round{rounding}", config)
            result["recipe"] = policy.to_dict()
            results["comparisons"][str(rounding)] = result
            print_comparison(result, label)
            if config.recipe is not None:
                break
        if config.predict:
            compared = [(f"compared recipe, channel_round {r}", Policy.from_dict(c["recipe"]))
                        for r, c in results["comparisons"].items()]
            results["prediction"] = predict(task, graph, table, config, folder, compared)
            print_prediction(results["prediction"])
        results["load_after"] = _load()
        results["seconds"] = time.perf_counter() - started
        if config.out is not None:
            (config.out / "latency.json").write_text(json.dumps(results, indent=1))
    print(f"\n{results['load_after']} ({results['seconds']:.0f} s); ratios need a quiet machine (load well below "
          "the core count) to be meaningful")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

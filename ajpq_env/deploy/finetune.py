"""Quantization-aware fine-tuning of a recipe: ``ajpq finetune --recipe best_recipe.json --epochs N``.

The network is physically pruned to the recipe (its 0-bit channels removed, so they stay pruned) and trained
with straight-through fake quantization at the recipe's per-channel bit-widths (:mod:`ajpq_env.compression.qat`):
SGD with Nesterov momentum, a per-step cosine learning-rate schedule from ``lr`` to 0, light augmentation
(random crop, and flips for natural images), a progress bar. At the end the weights are frozen on the grid,
BatchNorm is recalibrated on clean training batches, and the metric is measured on the task's **test** split,
which the search never sees. Per epoch only the search split is measured.

Library use::

    >>> from ajpq_env.deploy import FinetuneConfig, finetune
    >>> result = finetune(task, policy, FinetuneConfig(epochs=3))   # doctest: +SKIP
    >>> result.metrics["test"], result.save("runs/x/finetune")      # doctest: +SKIP

Command line (options below; ``ajpq finetune --help``)::

    ajpq finetune --recipe runs/x/best_recipe.json --epochs 5 [--task NAME] [--data ROOT] [--out DIR]
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ajpq_env.compression import CompressionGraph, Policy, compress
from ajpq_env.compression.actquant import calibrate, insert_quantizers
from ajpq_env.compression.integer import activation_qparams, trace
from ajpq_env.compression.pipeline import Deployable, DeploySettings, calibration_indices, recalibrate_batchnorm
from ajpq_env.compression.qat import freeze, grid_errors, prepare_qat
from ajpq_env.deploy._cli import check_output_folder, finite, option, parse_configs, set_threads
from ajpq_env.deploy.checkpoint import Finetuned
from ajpq_env.deploy.resolve import Architecture, fit_recipe, load_recipe, recipe_task_name, resolve_task
from ajpq_env.tasks import Task

__all__ = ["AUGMENTATION", "FinetuneArgs", "FinetuneConfig", "augment", "finetune", "main"]

#: Default augmentation per data set: (random-crop padding in pixels, horizontal flips).
AUGMENTATION: dict[str, tuple[int, bool]] = {"cifar10": (4, True), "mnist5k": (2, False), "imagenet": (0, True)}


@dataclass
class FinetuneConfig:
    """Settings of quantization-aware fine-tuning."""

    epochs: int = option(5, "passes over the training split (or over --samples-per-epoch samples), 1..10000",
                         low=1, high=10_000)
    batch_size: int = option(128, "training batch size (samples), 2..65536: BatchNorm needs 2", low=2, high=65_536)
    lr: float = option(0.01, "peak learning rate in (0, 10]; a per-step cosine schedule takes it to 0", low=0.0,
                       high=10.0)
    momentum: float = option(0.9, "SGD Nesterov momentum, in [0, 1)", low=0.0, high=0.999_999)
    weight_decay: float = option(5e-5, "L2 penalty on conv/linear weights (not on BatchNorm or biases), in [0, 1]",
                                 low=0.0, high=1.0)
    samples_per_epoch: int | None = option(None, "training samples drawn per epoch (>= 2); default: the whole train "
                                                 "split", low=2, high=10**9)
    crop_pad: int | None = option(None, "random-crop padding (pixels, 0..64); default per data set: CIFAR-10 4, MNIST 2",
                                  low=0, high=64)
    flip: bool | None = option(None, "random horizontal flips; default per data set: on for CIFAR-10")
    act_quant_fraction: float = option(0.3, "fraction of the training steps, at the end, that also fake-quantize "
                                            "activations (straight-through, ranges following the batches) with "
                                            "BatchNorm statistics frozen as the deployed network folds them; the "
                                            "steps before train the weights alone, so a damaged network can recover "
                                            "first (0 = weights only; ignored with float activations)",
                                       low=0.0, high=1.0)
    bn_recalibration_batches: int = option(8, "clean training batches to re-estimate BatchNorm statistics at the end "
                                              "(0..10000)", low=0, high=10_000)
    eval_batch_size: int = option(500, "batch size of evaluation passes (samples), 1..65536", low=1, high=65_536)
    evaluate_search: bool = option(True, "measure the search split after each epoch")
    evaluate_baselines: bool = option(True, "also measure the FP32 model and the un-fine-tuned recipe on test")
    seed: int = option(0, "seeds shuffling and augmentation", low=0, high=2**63 - 1)
    progress: bool = option(True, "show a progress bar")

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting that is not a finite number within the bounds of its
        field (the command line checks the same bounds while parsing): ``lr=nan`` would write NaN weights, and
        ``batch_size=1`` would skip every step (BatchNorm cannot normalise one sample)."""
        for f in dataclasses.fields(self):
            value, low, high = getattr(self, f.name), f.metadata.get("low"), f.metadata.get("high")
            if value is None or isinstance(value, bool) or (low is None and high is None):
                continue
            finite(value, f.name, low, high)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random ``pad``-pixel-shift crops (zero padding in normalised space) and horizontal flips of a batch."""
    n, c, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def _calibration_batches(task: Task, batches: int, batch_size: int) -> list[torch.Tensor]:
    train = task.splits["train"]
    return [train.batch(index)[0] for index in calibration_indices(len(train), batches, batch_size)]


def _optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def _train(
    model: nn.Module,
    task: Task,
    config: FinetuneConfig,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    per_epoch: int,
    total: int,
    pad: int,
    flip: bool,
    late_phase: tuple[int, Callable[[], None]] | None = None,
) -> list[dict[str, float]]:
    """The training epochs; one history row per epoch. ``late_phase = (step, start)``: ``start()`` is called
    before global step ``step``, and BatchNorm statistics stay frozen from then on."""
    train = task.splits["train"]
    frozen = False
    step = 0
    metric = task.metric
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, desc=f"fine-tune {task.name}", unit="step", disable=not config.progress, leave=False)
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        model.train()
        if frozen:
            _freeze_batchnorm(model)
        order = torch.randperm(len(train), generator=generator)[:per_epoch].numpy()
        seen = loss_sum = correct = 0
        for i in range(0, per_epoch, config.batch_size):
            index = np.sort(order[i : i + config.batch_size])
            if index.size < 2:  # BatchNorm cannot normalise a single sample
                schedule.step()
                bar.update(1)
                continue
            if late_phase is not None and not frozen and step >= late_phase[0]:
                late_phase[1]()
                model.train()
                _freeze_batchnorm(model)
                frozen = True
            step += 1
            x, y = train.batch(index)
            logits = model(augment(x, pad, flip, generator))
            loss = metric.loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += float(metric.scores(logits.detach(), y).sum())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2g}")
        row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_metric": correct / max(seen, 1),
               "lr": optimizer.param_groups[0]["lr"]}
        if config.evaluate_search:
            row["search"] = task.evaluate(model, "search", config.eval_batch_size)
        row["seconds"] = time.perf_counter() - epoch_start
        history.append(row)
        if config.progress:
            bar.write(f"epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.4f}, train {row['train_metric']:.4f}"
                      + (f", search {row['search']:.4f}" if "search" in row else ""))
    bar.close()
    return history


def _freeze_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def finetune(
    task: Task,
    policy: Policy,
    config: FinetuneConfig | None = None,
    *,
    graph: CompressionGraph | None = None,
) -> Finetuned:
    """Quantization-aware fine-tuning of ``task.model`` compressed by ``policy``.

    :param task: the loaded task (its FP32 model is copied, never modified)
    :param policy: the recipe; refused (``ValueError`` naming both) when its meta names another task or model
    :param config: settings (default :class:`FinetuneConfig`)
    :param graph: the compression graph of ``task.model`` (built when not given)
    :return: the physically pruned model on the recipe's grid, with ``metrics`` ``test`` and ``search`` (plus
        ``fp32_test`` and ``before_test`` when ``config.evaluate_baselines``) and the per-epoch ``history``
    """
    config = config or FinetuneConfig()
    config.check()
    start = time.perf_counter()
    importance = str(policy.meta.get("importance", "l1"))
    architecture = Architecture.from_task(task, importance)
    graph = graph or CompressionGraph(task.model, task.example_input(), importance)
    fit_recipe(policy, graph, task=task.name, model=task.spec.model)
    pad, flip = AUGMENTATION.get(task.spec.dataset, (0, False))
    pad = pad if config.crop_pad is None else config.crop_pad
    flip = flip if config.flip is None else config.flip
    calibration = _calibration_batches(task, config.bn_recalibration_batches, config.batch_size)
    a_bits = DeploySettings.from_meta(policy.meta).a_bits  # deploy as the search measured: same activation bits
    metrics: dict[str, float] = {}
    if config.evaluate_baselines:
        metrics["fp32_test"] = task.fp32_metric("test", config.eval_batch_size)
        before = compress(task.model, graph, policy, validate=False)  # as the search measured it, but on test
        recalibrate_batchnorm(before, calibration)
        before_deployed = Deployable(before, policy, a_bits, calibration).deployed(graph)
        metrics["before_test"] = task.evaluate(before_deployed, "test", config.eval_batch_size)

    model = prepare_qat(task.model, graph, policy)
    trainer, start_late_phase = _with_activation_quantizers(model, calibration, a_bits)
    train = task.splits["train"]
    per_epoch = len(train) if config.samples_per_epoch is None else min(len(train), config.samples_per_epoch)
    steps_per_epoch = math.ceil(per_epoch / config.batch_size)
    total = config.epochs * steps_per_epoch
    late_phase = None
    if start_late_phase is not None and config.act_quant_fraction > 0:
        late_phase = (round(total * (1.0 - config.act_quant_fraction)), start_late_phase)
    optimizer = _optimizer(trainer, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator: seed it, then restore it
        torch.manual_seed(config.seed)
        history = _train(trainer, task, config, optimizer, schedule, generator, per_epoch, total, pad, flip,
                         late_phase)

    freeze(model)
    recalibrate_batchnorm(model, calibration)
    model.eval()
    problems = grid_errors(model, graph, policy)
    if problems:  # an invariant of freeze(); report rather than export something that is not the recipe
        raise RuntimeError("fine-tuned weights left the recipe's grid: " + "; ".join(problems))
    for name, value in model.state_dict().items():
        if torch.is_floating_point(value) and not torch.isfinite(value).all():
            raise ValueError(f"fine-tuning diverged: {name} holds non-finite values; lower --lr")
    deployed = Deployable(model, policy, a_bits, calibration).deployed(graph)
    metrics["search"] = task.evaluate(deployed, "search", config.eval_batch_size)
    metrics["test"] = task.evaluate(deployed, "test", config.eval_batch_size)
    qparams = activation_qparams(deployed) if a_bits <= 8 else None
    return Finetuned(model, policy, architecture, metrics, history, dataclasses.asdict(config),
                     time.perf_counter() - start, a_bits, qparams)


def _with_activation_quantizers(
    model: nn.Module, calibration: list[torch.Tensor], a_bits: int
) -> tuple[nn.Module, Callable[[], None] | None]:
    """``model`` (unchanged) traced with activation quantizers at ``a_bits`` (passing values through until
    started), and the function that starts them: recalibrate BatchNorm, calibrate the ranges on ``calibration``
    and switch to straight-through fake quantization. The traced model shares ``model``'s parameters, so training
    it trains ``model``. Float activations: ``(model, None)``."""
    if a_bits > 8:
        return model, None
    trainer = trace(model)
    quantizers = insert_quantizers(trainer, a_bits)
    for quantizer in quantizers:
        quantizer.mode = "off"

    def start() -> None:
        recalibrate_batchnorm(model, calibration)
        calibrate(trainer, calibration, mode="fake")

    return trainer, start


# --------------------------------------------------------------------------------------------- command line
@dataclass
class FinetuneArgs:
    """``ajpq finetune`` options besides the :class:`FinetuneConfig` settings: the recipe, task, data and output."""

    recipe: Path = option(help="recipe JSON written by a search (or a run folder holding best_recipe.json)",
                          metavar="JSON")
    task: str | None = option(None, "task name; default: the recipe's meta['task'] (a different one is refused)")
    data: str | None = option(None, "data set root (CIFAR-10); default $AJPQ_DATA")
    weights: str | None = option(None, "FP32 weights file or folder; default: packaged, then $AJPQ_WEIGHTS")
    out: Path | None = option(None, "output folder; default: <recipe folder>/finetune")
    threads: int = option(0, "torch CPU threads (0 = torch's default)", low=0, high=1024)


def main(argv: list[str] | None = None) -> int:
    """``ajpq finetune``: fine-tune a recipe and save ``model.pt``, ``recipe.json`` and ``finetune.json``."""
    args, config = parse_configs(
        [(None, FinetuneArgs), ("fine-tuning settings", FinetuneConfig)], argv, prog="ajpq finetune",
        description="Quantization-aware fine-tuning of a recipe (straight-through fake quantization at its "
                    "per-channel bit-widths, pruned channels removed, cosine schedule); the final metric is "
                    "measured on the task's test split.",
    )
    try:
        config.check()
        set_threads(args.threads)
        recipe_path = args.recipe / "best_recipe.json" if args.recipe.is_dir() else args.recipe
        policy = load_recipe(recipe_path)
        name = recipe_task_name(policy, args.task, source=f"recipe {str(recipe_path)!r}")
        out = args.out or recipe_path.parent / "finetune"
        check_output_folder(out, "--out")
        task = resolve_task(name, data_root=args.data, weights=args.weights)
        graph = CompressionGraph(task.model, task.example_input(), str(policy.meta.get("importance", "l1")))
        fit_recipe(policy, graph, task=task.name, model=task.spec.model, source=f"recipe {str(recipe_path)!r}")
        result = finetune(task, policy, config, graph=graph)
        out = result.save(out)
    except (ValueError, OSError) as err:  # OSError: e.g. a name too long for the file system
        print(f"ajpq finetune: error: {err}", file=sys.stderr)
        return 2
    m, cost = result.metrics, result.cost()
    print(f"task {task.name}: {result.policy!r}")
    print(f"size {cost['size_bytes']:,} B ({cost['size_ratio']:.4f} of FP32 {cost['fp32_size_bytes']:,} B), "
          f"BitOPs x{cost['bitops_ratio']:.4f}, MACs x{cost['macs_ratio']:.4f}")
    baseline = (f" (FP32 {m['fp32_test']:.4f}, before fine-tuning {m['before_test']:.4f})"
                if "fp32_test" in m else "")
    print(f"test {task.spec.metric}: {m['test']:.4f}{baseline}; search split {m['search']:.4f}; "
          f"{result.seconds:.0f} s")
    print(f"saved {out}/model.pt; next: ajpq export {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

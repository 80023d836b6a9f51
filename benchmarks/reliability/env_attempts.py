"""Attempts on the env (arguments, actions, vector envs) and the data sets (CIFAR-10 files, splits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reliability.harness import (
    Attempt,
    Attempts,
    Outcome,
    judge_check,
    judge_library,
)

__all__ = ["attempts"]


def attempts() -> list[Attempt]:
    out = Attempts()
    add = out.add

    # -- the env (item 6) ---------------------------------------------------------------------------------
    def env_args(kwargs: dict, errors: tuple[type, ...], keywords: tuple[str, ...]) -> Callable[[Path], Outcome]:
        def attempt(box: Path) -> Outcome:
            import gymnasium as gym

            import ajpq_env  # noqa: F401

            return judge_library(lambda: gym.make("AJPQ-MobileNet-v0", **kwargs), errors, keywords, box)

        return attempt

    for kwargs, keywords in [
        ({"target": True}, ("target",)), ({"target": "0.5"}, ("target",)), ({"target": float("nan")}, ("target",)),
        ({"target": 0.0}, ("target",)), ({"search_size": -5}, ("search_size",)), ({"search_size": 0}, ("search_size",)),
        ({"search_size": True}, ("search_size",)), ({"num_buckets": 2.0}, ("num_buckets",)),
        ({"num_buckets": 0}, ("num_buckets",)), ({"finetune_lr": float("nan")}, ("finetune_lr",)),
        ({"finetune_steps": "3"}, ("finetune_steps",)), ({"mode": "bogus"}, ("mode",)), ({"resource": "x"}, ("resource",)),
        ({"reward": "x"}, ("reward",)), ({"b_min": 9}, ("b_min",)), ({"max_sparsity": 1.0}, ("max_sparsity",)),
        ({"targt": 0.1}, ("targt",)),
    ]:
        out.append(Attempt("env: arguments", json.dumps(kwargs, default=str), env_args(kwargs, (ValueError, TypeError),
                                                                                     keywords)))

    @add("env: arguments", "AJPQEnv(render_mode='human') (gym.make wraps it in HumanRendering, by design)")
    def _(box: Path) -> Outcome:
        from ajpq_env import AJPQEnv
        from ajpq_env.tasks import synthetic_task

        return judge_library(lambda: AJPQEnv(synthetic_task(), render_mode="human"), (ValueError,), ("render_mode",),
                             box)

    def env_action(action: Any, keywords: tuple[str, ...]) -> Callable[[Path], Outcome]:
        def attempt(box: Path) -> Outcome:
            from ajpq_env import AJPQEnv
            from ajpq_env.tasks import synthetic_task

            env = AJPQEnv(synthetic_task())
            env.reset(seed=0)
            return judge_library(lambda: env.step(action), (ValueError, RuntimeError), keywords, box)

        return attempt

    for name, action, keywords in [
        ("complex", np.full(5, 0.5 + 0.5j), ("real-valued",)), ("strings", np.array(["0.5"] * 5), ("real-valued",)),
        ("bools", np.ones(5, dtype=bool), ("real-valued",)), ("objects", np.array([None] * 5), ("real-valued",)),
        ("NaN", np.array([np.nan, 0, 0, 0, 0]), ("finite",)), ("inf", np.array([0, np.inf, 0, 0, 0]), ("finite",)),
        ("shape (3,)", np.zeros(3), ("shape",)), ("scalar", np.float32(0.5), ("shape",)),
    ]:
        out.append(Attempt("env: actions", name, env_action(action, keywords)))

    @add("env: actions", "step before reset")
    def _(box: Path) -> Outcome:
        from ajpq_env import AJPQEnv
        from ajpq_env.tasks import synthetic_task

        env = AJPQEnv(synthetic_task())
        return judge_library(lambda: env.step(np.zeros(5, np.float32)), (RuntimeError,), ("reset",), box)

    @add("env: vector", "gym.make_vec async, default threads, one episode per worker", timeout=300)
    def _(box: Path) -> Outcome:
        script = ("import gymnasium as gym, numpy as np, torch, ajpq_env\n"
                  "torch.set_num_threads(max(2, torch.get_num_threads()))\n"
                  "e = gym.make_vec('AJPQ-MobileNet-v0', num_envs=2, vectorization_mode='async', search_size=200)\n"
                  "e.reset(seed=0); d = np.zeros(2, bool)\n"
                  "while not d.all():\n    d |= e.step(e.action_space.sample())[2]\n"
                  "e.close(); print('OK')\n")
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            return Outcome("hang", "workers deadlocked", time.perf_counter() - start)
        ok = done.returncode == 0 and done.stdout.strip() == "OK"
        return Outcome("fine" if ok else "traceback", done.stderr[-200:], time.perf_counter() - start)

    # -- data sets (items 2, 5, 7) ------------------------------------------------------------------------
    def data_attempt(make: Callable[[Path], Path], split: str, keywords: tuple[str, ...],
                     loader: str = "load_cifar10") -> Callable[[Path], Outcome]:
        def attempt(box: Path) -> Outcome:
            from ajpq_env import tasks
            from ajpq_env.tasks.data import load_cifar10

            root = make(box)
            if loader == "load_cifar10":
                return judge_library(lambda: load_cifar10(root, split), (ValueError, FileNotFoundError), keywords, box)
            return judge_library(lambda: tasks.load_splits(loader, data_root=root), (ValueError, FileNotFoundError),
                                 keywords, box)

        return attempt

    def images(box: Path, per_class: int, truncate: bool = False, size: int = 32, extra_class: bool = False) -> Path:
        from PIL import Image

        from ajpq_env.tasks.data import CIFAR10_CLASSES

        rng = np.random.default_rng(0)
        for split, n in (("train", per_class), ("test", max(2, per_class // 5))):
            for name in (*CIFAR10_CLASSES, *(["unicorn"] if extra_class else [])):
                (box / split / name).mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(box / split / name / f"{i}.jpg")
        if truncate:
            victim = box / "train" / "cat" / "1.jpg"
            victim.write_bytes(victim.read_bytes()[:150])
        return box

    def npz(box: Path, per_train: int, per_test: int, shape=(32, 32, 3)) -> Path:
        for split, n in (("train", per_train), ("test", per_test)):
            y = np.repeat(np.arange(10), n)
            np.savez(box / f"{split}.npz", x=np.zeros((len(y), *shape), np.uint8), y=y)
        return box

    out += [
        Attempt("data", "truncated JPEG", data_attempt(lambda b: images(b, 2, truncate=True), "train",
                                                       ("1.jpg", "cannot decode"))),
        Attempt("data", "fewer than 10 images per class", data_attempt(lambda b: npz(b, 4, 2), "", ("split", "class"),
                                                                       loader="cifar10-mobilenet_v2")),
        Attempt("data", "one image per class in test (ResNet-20 split)", data_attempt(
            lambda b: npz(b, 20, 1), "", ("split", "class"), loader="cifar10-resnet20")),
        Attempt("data", "npz images of the wrong shape", data_attempt(lambda b: npz(b, 3, 2, (28, 28)), "train",
                                                                      ("train.npz", "32, 32, 3"))),
        Attempt("data", "image folder with a class that is not CIFAR-10", data_attempt(
            lambda b: images(b, 2, extra_class=True), "train", ("unicorn",))),
        Attempt("data", "64x64 images", data_attempt(lambda b: images(b, 1, size=64), "train", ("32x32",))),
        Attempt("data", "root that is a text file", data_attempt(lambda b: (b / "x.txt").write_text("x") and b / "x.txt",
                                                                 "train", ("x.txt",))),
        Attempt("data", "empty folder", data_attempt(lambda b: b, "train", ("no CIFAR-10",))),
    ]

    @add("data", "ResNet-20 search split disjoint from its weights' training images")
    def _(box: Path) -> Outcome:
        from ajpq_env.tasks import TASKS, load_splits

        rng = np.random.default_rng(0)
        data = {}
        for split, n, parity in (("train", 20, 0), ("test", 6, 1)):
            y = np.repeat(np.arange(10), n)
            data[split] = ((rng.integers(0, 128, (len(y), 32, 32, 3)) * 2 + parity).astype(np.uint8), y)
            np.savez(box / f"{split}.npz", x=data[split][0], y=y)

        def check() -> str | None:
            splits = load_splits("cifar10-resnet20", data_root=box)
            train = {img.tobytes() for img in data["train"][0]}
            if {img.tobytes() for img in splits["search"].images} & train:
                return "the search split holds training images"
            if not TASKS["cifar10-resnet20"].meta.get("search_disjoint_from_weights"):
                return "the provenance is not recorded"
            return None

        return judge_check(check)

    return out

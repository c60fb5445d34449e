"""``python -m motionqc.training.launch``: train a task with the trainer, alone or under ``torchrun``.

A task factory (``module:function``) returns a :class:`TrainTask` (model, loss, data, metrics);
:func:`toy_task` is a seconds-long one for tests and smoke runs::

    python -m motionqc.training.launch --epochs 3            # toy task -> checkpoints/toy_task/
    torchrun --nproc_per_node=2 -m motionqc.training.launch --run-dir /tmp/toy --epochs 3
    python -m motionqc.training.launch --task mypkg.tasks:pretrain --task-arg n_train=64
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from motionqc import paths
from motionqc.training.config import LossFn, MetricsFn, TrainConfig
from motionqc.training.reproducibility import kaiming_init, seed_everything
from motionqc.training.trainer import Trainer

__all__ = ["TrainTask", "main", "toy_task"]


@dataclass
class TrainTask:
    """What a task factory returns for :func:`main`: model, loss, data and metrics."""

    model: nn.Module
    loss_fn: LossFn
    train_data: Dataset
    val_data: Dataset | None = None
    metrics_fn: MetricsFn | None = None


class ToyVolumes(Dataset):
    """Tiny seeded 3-D regression set: the target is a fixed linear function of the volume."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, size, size, size, generator=g)
        w = torch.linspace(-1, 1, size**3)
        self.y = (self.x.flatten(1) @ w / size).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def toy_task(seed: int = 0, n_train: int = 32, n_val: int = 8, size: int = 8) -> TrainTask:
    """A seconds-long task for tests and smoke runs of the entry point.

    A small 3-D CNN without BatchNorm or dropout (so that DDP and single-process training agree,
    see the module docstring) regresses a linear function of random volumes with MSE.

    Args:
        seed: Seed of the data and of the model's Kaiming initialisation.
        n_train: Training samples.
        n_val: Validation samples.
        size: Side of the cubic volumes.

    Returns:
        The task.
    """
    seed_everything(seed)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(2),
        nn.Flatten(),
        nn.Linear(32, 1),
    )
    kaiming_init(model)

    def mae(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {"mae": (out - y).abs().mean().item()}

    return TrainTask(
        model=model,
        loss_fn=nn.functional.mse_loss,
        train_data=ToyVolumes(int(n_train), int(size), seed + 1),
        val_data=ToyVolumes(int(n_val), int(size), seed + 2),
        metrics_fn=mae,
    )


def load_task(spec: str) -> Callable[..., TrainTask]:
    if ":" not in spec:
        raise ValueError(f"--task must look like 'package.module:function', got {spec!r}")
    module, name = spec.split(":", 1)
    return getattr(importlib.import_module(module), name)


def parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command line: train a task with :class:`Trainer`, alone or under ``torchrun``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``); see ``python -m motionqc.training.launch --help``.

    Returns:
        The history of the run.
    """
    parser = argparse.ArgumentParser(
        prog="python -m motionqc.training.launch",
        description="Train a task (model + loss + data from a factory) with checkpoints and resume; "
        "run it under `torchrun --nproc_per_node=N` to train data-parallel.",
    )
    parser.add_argument(
        "--task",
        default="motionqc.training.launch:toy_task",
        help="factory 'module:function' returning a TrainTask (default: the toy task)",
    )
    parser.add_argument(
        "--task-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the factory (repeatable)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="folder for checkpoints and metrics.csv (default: checkpoints/<task function>)",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start afresh even if last.pt exists"
    )
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in (
        "max_epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "seed",
        "num_workers",
        "plateau_patience",
        "early_stopping_patience",
        "precision",
        "device",
        "monitor",
    ):
        default = fields[name].default
        kind = type(default) if default is not None and not isinstance(default, str) else str
        flag = "--epochs" if name == "max_epochs" else "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=name, type=kind if kind in (int, float) else str, default=None
        )
    args = parser.parse_args(argv)
    overrides = {k: v for k in fields if (v := getattr(args, k, None)) is not None}
    config = TrainConfig(**overrides)
    kwargs = {}
    for item in args.task_arg:
        if "=" not in item:
            raise ValueError(f"--task-arg must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        kwargs[key] = parse_value(value)
    task = load_task(args.task)(seed=config.seed, **kwargs)
    trainer = Trainer(
        task.model,
        task.loss_fn,
        task.train_data,
        task.val_data,
        config=config,
        run_dir=args.run_dir or paths.checkpoints_dir() / args.task.rsplit(":", 1)[-1],
        metrics_fn=task.metrics_fn,
        resume=not args.no_resume,
    )
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    return history


if __name__ == "__main__":
    main()

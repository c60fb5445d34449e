"""The trainer's knobs: :class:`TrainConfig`, and the loss and metric signatures it plugs in."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["LossFn", "MetricsFn", "PRECISIONS", "TrainConfig", "make_scheduler"]


LossFn = Callable[[torch.Tensor, Any], torch.Tensor]


MetricsFn = Callable[[torch.Tensor, Any], dict[str, float]]


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Knobs of a training run (defaults: the authors' SFCN recipe where they give one).

    Attributes:
        max_epochs: Upper bound on epochs.
        batch_size: Global batch size (split evenly across DDP ranks).
        eval_batch_size: Global batch size for validation/prediction (default ``batch_size``).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (authors: 0.05 pretraining, 0.04 transfer).
        betas: AdamW betas.
        schedule: ``"plateau"`` (the authors: ``ReduceLROnPlateau`` on the monitored value,
            stepped per epoch) or ``"onecycle"`` (``OneCycleLR`` over ``max_epochs``, stepped
            per batch, peaking at ``lr``: for short budgets such as CPU pretraining).
        warmup_fraction: Share of the one-cycle schedule spent warming up.
        plateau_factor: ``ReduceLROnPlateau`` factor (authors: 0.6).
        plateau_patience: ``ReduceLROnPlateau`` patience in epochs (authors: 5).
        plateau_threshold: Relative improvement the scheduler requires (torch's default 1e-4).
        min_lr: Floor of the learning rate.
        early_stopping_patience: Epochs without improvement before stopping (authors: 15);
            ``None`` disables early stopping.
        min_delta: Smallest change of the monitored value that counts as an improvement.
        monitor: Value that drives the scheduler, early stopping and ``best.pt``:
            ``"val_loss"``, ``"train_loss"`` or ``"val_<metric>"`` from the metrics function.
        mode: ``"min"`` or ``"max"`` for the monitored value.
        seed: Base seed of every random draw.
        num_workers: DataLoader worker processes per rank.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` picks CUDA when available
            (under DDP each rank uses ``cuda:LOCAL_RANK``).
        precision: ``"auto"`` (bf16 autocast on CUDA where supported else fp16 with a grad
            scaler; fp32 on CPU), ``"fp32"``, ``"bf16"`` (autocast, also on CPU) or ``"fp16"``
            (CUDA only).
        channels_last: Use ``channels_last_3d`` for 5-D weights and inputs; ``None`` means on
            CUDA only.
        grad_clip_norm: Clip the gradient norm to this value; ``None`` disables clipping.
        drop_last: Drop the last incomplete training batch.
        progress: Show tqdm bars; ``None`` shows them unless the ``CI`` variable is set.
        label: Name recorded in the resource JSON.
    """

    max_epochs: int = 100
    batch_size: int = 8
    eval_batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "plateau"
    warmup_fraction: float = 0.2
    plateau_factor: float = 0.6
    plateau_patience: int = 5
    plateau_threshold: float = 1e-4
    min_lr: float = 0.0
    early_stopping_patience: int | None = 15
    min_delta: float = 0.0
    monitor: str = "val_loss"
    mode: str = "min"
    seed: int = 0
    num_workers: int = 0
    device: str | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    grad_clip_norm: float | None = None
    drop_last: bool = False
    progress: bool | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        """Check every knob and raise ``ValueError`` with a readable sentence."""
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {self.max_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a non-negative number, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if self.plateau_patience < 0:
            raise ValueError(f"plateau_patience must be non-negative, got {self.plateau_patience}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(
                f"early_stopping_patience must be at least 1 or None, got {self.early_stopping_patience}"
            )
        if self.schedule not in ("plateau", "onecycle"):
            raise ValueError(f"schedule must be 'plateau' or 'onecycle', got {self.schedule!r}")
        if not 0 < self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in (0, 1), got {self.warmup_fraction}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be non-negative, got {self.num_workers}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be positive or None, got {self.grad_clip_norm}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, n_train: int, world: int, local_batch: int
) -> Any:
    """The learning-rate schedule of a config: one-cycle over every step, or reduce-on-plateau.

    Args:
        optimizer: The optimiser it drives.
        cfg: The config (``schedule``, ``lr``, ``max_epochs``, ``warmup_fraction``, plateau knobs).
        n_train: Training samples.
        world: DDP processes.
        local_batch: Samples per step and process.

    Returns:
        A torch scheduler.
    """
    if cfg.schedule == "onecycle":
        per_rank = math.ceil(n_train / world)
        steps = per_rank // local_batch if cfg.drop_last else -(-per_rank // local_batch)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=max(1, steps) * cfg.max_epochs,
            pct_start=cfg.warmup_fraction,
        )
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=cfg.mode,
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience,
        threshold=cfg.plateau_threshold,
        min_lr=cfg.min_lr,
    )

"""The trainer's checkpoints: ``last.pt`` to resume, ``best.pt``, and the ``metrics.csv`` history.

A checkpoint is written after every epoch (model, optimiser, scheduler, grad scaler, the RNG
states of every rank, epoch, best metric, early-stopping counter, history) by rank 0, atomically;
it holds tensors and plain types only and is read back with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from motionqc.training.reproducibility import rng_state, seed_everything

if TYPE_CHECKING:
    from motionqc.training.trainer import Trainer

__all__ = ["atomic_save", "load_checkpoint", "save_checkpoint", "write_history"]


def save_checkpoint(trainer: Trainer, improved: bool) -> None:
    """Write ``last.pt`` (with every rank's RNG states), ``best.pt`` when improved, and the CSV."""
    rng = rng_state()
    if trainer.distributed:
        all_rng: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(all_rng, rng)
    else:
        all_rng = [rng]
    if trainer.is_main and trainer.run_dir is not None:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        state = trainer.state_dict()
        state["rng"] = all_rng
        atomic_save(state, trainer.last_path)
        if improved:
            atomic_save(
                {
                    "epoch": trainer.epoch,
                    "model": state["model"],
                    "metric": trainer.best_metric,
                    "monitor": trainer.config.monitor,
                },
                trainer.best_path,
            )
        write_history(trainer)
    if trainer.distributed:
        torch.distributed.barrier()


def write_history(trainer: Trainer) -> None:
    """Write the per-epoch history to ``metrics.csv`` (atomically)."""
    keys: list[str] = []
    for row in trainer.history:
        keys += [k for k in row if k not in keys]
    tmp = trainer.csv_path.with_name(trainer.csv_path.name + ".tmp")  # type: ignore[union-attr]
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(trainer.history)
    os.replace(tmp, trainer.csv_path)  # type: ignore[arg-type]


def load_checkpoint(trainer: Trainer, path: Path) -> None:
    """Resume a trainer from ``last.pt`` (read with ``weights_only=True``; a bad file is refused)."""
    try:  # weights_only: a checkpoint left in a run folder can hold no code to run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(
            f"{path}: not a checkpoint this trainer can resume from, not loaded "
            f"({type(exc).__name__}); remove it to start the run again"
        ) from exc
    trainer.module.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = int(state["epoch"])
    trainer.best_metric = float(state["best_metric"])
    trainer.best_epoch = int(state["best_epoch"])
    trainer.bad_epochs = int(state["bad_epochs"])
    trainer.stopped_early = bool(state["stopped_early"])
    # A finished run stays finished unless max_epochs was raised (early stopping is final).
    trainer.finished = trainer.stopped_early or trainer.epoch >= trainer.config.max_epochs
    trainer.history = list(state["history"])
    trainer.resumed_from = trainer.epoch
    rngs = state.get("rng") or []
    if len(rngs) == trainer.world_size:
        trainer.pending_rng = rngs[trainer.rank]
    else:  # different number of ranks: reproducible, but not identical to the first run
        trainer.pending_rng = None
        seed_everything(trainer.config.seed + trainer.rank + 7919 * trainer.epoch)


def atomic_save(obj: Any, path: Path | None) -> None:
    """``torch.save`` to a temporary file, then rename it: a killed run leaves no half file."""
    assert path is not None
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

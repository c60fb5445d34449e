"""What :class:`motionqc.training.trainer.Trainer` does around its loop, one callback each.

The loop itself trains an epoch, validates it and steps the scheduler; around it,
:class:`EarlyStopping` tracks the monitored value (best value and epoch, epochs without
improvement, the best weights in memory without a run folder) and stops after the patience,
:class:`Checkpointing` writes ``last.pt``, ``best.pt`` and ``metrics.csv`` after every epoch
(:mod:`motionqc.training.checkpoint`; a new trainer on the same folder resumes from it), and
:class:`ResourceMonitoring` records wall time, peak memory and GPU power of :meth:`Trainer.fit`
(:class:`motionqc.runtime.resources.ResourceMonitor`). The trainer builds these three from its
arguments; more can be given (``Trainer(callbacks=...)``), called after them in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from motionqc.training.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from motionqc.runtime.resources import ResourceMonitor
    from motionqc.training.trainer import Trainer

__all__ = ["Callback", "Checkpointing", "EarlyStopping", "ResourceMonitoring"]


class Callback:
    """The hooks of :meth:`Trainer.fit`; each does nothing unless overridden."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this :meth:`Trainer.fit` call."""

    def on_validation(self, trainer: Trainer, row: dict[str, Any], value: float) -> None:
        """After an epoch's validation and scheduler step: ``row`` is still being filled."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After the epoch is counted and its row is in ``trainer.history``."""

    def on_fit_end(self, trainer: Trainer, error: BaseException | None) -> None:
        """When :meth:`Trainer.fit` ends, normally (``error`` is ``None``) or by an exception."""


class EarlyStopping(Callback):
    """Track the monitored value (``TrainConfig.monitor``, ``mode``, ``min_delta``) and stop.

    Sets ``row["best"]``, the trainer's ``best_metric``, ``best_epoch``, ``bad_epochs`` (all
    checkpointed) and ``best_state`` (without a run folder), and ``stopped_early`` once
    ``early_stopping_patience`` epochs in a row brought no improvement.
    """

    def on_validation(self, trainer: Trainer, row: dict[str, Any], value: float) -> None:
        """Record whether this epoch improved on the best value so far."""
        cfg = trainer.config
        if cfg.mode == "min":
            improved = value < trainer.best_metric - cfg.min_delta
        else:
            improved = value > trainer.best_metric + cfg.min_delta
        if improved:
            trainer.best_metric, trainer.best_epoch = value, int(row["epoch"])
            trainer.bad_epochs = 0
            if trainer.run_dir is None:  # no best.pt: keep the best weights in memory
                trainer.best_state = {
                    k: v.detach().clone() for k, v in trainer.module.state_dict().items()
                }
        else:
            trainer.bad_epochs += 1
        row["best"] = improved
        patience = cfg.early_stopping_patience
        trainer.stopped_early = patience is not None and trainer.bad_epochs >= patience


class Checkpointing(Callback):
    """Write ``last.pt`` (and ``best.pt`` when the epoch improved) and ``metrics.csv``."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """Save the epoch (rank 0 writes; without a run folder nothing is written)."""
        save_checkpoint(trainer, bool(row.get("best", False)))


class ResourceMonitoring(Callback):
    """Record :meth:`Trainer.fit` into ``resources.json`` (``resources_resume_<epoch>.json``).

    On rank 0 with a run folder only; the record holds the world size and the epochs covered.
    """

    def __init__(self) -> None:
        self.monitor: ResourceMonitor | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        """Start the monitor."""
        if not trainer.is_main or trainer.run_dir is None:
            return
        from motionqc.runtime.resources import ResourceMonitor

        name = (
            "resources.json"
            if trainer.resumed_from is None
            else f"resources_resume_{trainer.epoch}.json"
        )
        self.monitor = ResourceMonitor(
            trainer.run_dir / name,
            device=trainer.device,
            label=trainer.config.label,
            extra={"world_size": trainer.world_size, "start_epoch": trainer.epoch},
        )
        self.monitor.__enter__()

    def on_fit_end(self, trainer: Trainer, error: BaseException | None) -> None:
        """Stop the monitor and write its record (with ``end_epoch`` after a normal end)."""
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        if error is None:
            monitor.extra["end_epoch"] = trainer.epoch
            monitor.__exit__(None, None, None)
        else:
            monitor.__exit__(type(error), error, error.__traceback__)

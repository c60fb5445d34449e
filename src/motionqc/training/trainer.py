"""One generic trainer for pretraining, transfer and scratch training, single process or DDP.

The recipe follows the SFCN/motion-score authors: AdamW, ``ReduceLROnPlateau`` (factor 0.6),
early stopping, Kaiming initialisation, mixed precision and data-parallel training. The loss and
the validation metrics are plugged in (:class:`motionqc.models.soft_labels.SoftLabelKL` for pretraining,
weighted cross-entropy for QC).

**Reproducibility and resume.** Every random draw is seeded from ``TrainConfig.seed``: the global
torch/numpy/python generators at the start of a fresh run (``seed + rank``), the sample order
(``DistributedSampler`` with ``seed``, re-shuffled per epoch via ``set_epoch``) and the DataLoader
worker seeds (a ``torch.Generator`` re-seeded per epoch; each worker seeds numpy and ``random``
from its torch seed). A checkpoint is written after every epoch (``last.pt``: model, optimiser,
scheduler, grad scaler, RNG states of every rank, epoch, best metric, early-stopping counter,
history), and the best weights go to ``best.pt``. A new :class:`Trainer` on the same ``run_dir``
resumes from ``last.pt`` and, on CPU, ends with bit-identical weights and metrics to an
uninterrupted run (tested). On GPUs cuDNN's non-deterministic kernels may break bit-equality.

**Scale-out.** The same code runs under ``torchrun --nproc_per_node=N`` (or several nodes): when
``WORLD_SIZE > 1`` the process group is initialised (NCCL on CUDA, gloo on CPU), the model is
wrapped in ``DistributedDataParallel``, ``batch_size`` is the *global* batch split evenly across
ranks, validation is sharded and gathered, and rank 0 alone writes checkpoints and CSVs. Because
``DistributedSampler`` deals rank ``r`` the positions ``r, r+N, …`` of one shuffled order, the
union of the N local batches at each step is exactly the single-process batch at that step, and
DDP averages the per-rank mean gradients: for losses that are per-sample means, N processes
compute the same update as one (up to floating-point summation order). BatchNorm breaks this
(each rank normalises with its local batch statistics; use ``SyncBatchNorm`` to restore it) and
so does dropout (each rank draws its own mask); the equality test uses a model with neither.
``drop_last=False`` lets ``DistributedSampler`` pad the epoch with repeated samples when the
dataset size is not a multiple of N. Class-weighted cross-entropy is a weighted mean whose
denominator depends on the batch, so its DDP update differs slightly from one process's.

**Precision and layout.** ``precision="auto"`` autocasts to bf16 on CUDA (fp16 with a grad
scaler where bf16 is unsupported) and stays fp32 on CPU; ``"bf16"`` also autocasts on CPU.
``channels_last`` (default: on CUDA) stores 5-D weights and inputs as ``channels_last_3d``.
Losses are computed in fp32 on the model output cast back to float.

**Around the loop** (:mod:`motionqc.training.callbacks`): early stopping, the checkpoint after
every epoch and the resource record are callbacks. :meth:`Trainer.fit` runs inside
:class:`motionqc.runtime.resources.ResourceMonitor` and writes ``resources.json``
(``resources_resume_<epoch>.json`` for a resumed segment) into the run folder; under DDP it is
rank 0's process (its GPU, its RSS and its DataLoader workers).

The knobs are :class:`motionqc.training.config.TrainConfig`; checkpoints are written and read by
:mod:`motionqc.training.checkpoint`; :mod:`motionqc.training.launch` is the command line (a task
factory builds model, loss and data; ``torchrun`` runs it data-parallel).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from motionqc.runtime.devices import distributed_info, training_autocast, training_device
from motionqc.training.batches import (
    IndexedDataset,
    cat_batches,
    default_unpack,
    index_batch,
    to_device,
)
from motionqc.training.callbacks import Callback, Checkpointing, EarlyStopping, ResourceMonitoring
from motionqc.training.checkpoint import load_checkpoint
from motionqc.training.config import LossFn, MetricsFn, TrainConfig, make_scheduler
from motionqc.training.reproducibility import (
    loader_worker_seed,
    seed_everything,
    set_rng_state,
)

__all__ = ["Trainer"]


# --------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Train a model with a pluggable loss and metrics; checkpoint, resume, scale out with DDP.

    Args:
        model: The network. Build it after :func:`seed_everything` for a reproducible init; under
            DDP rank 0's weights are broadcast to every rank.
        loss_fn: ``loss_fn(output, target) -> scalar`` (a per-sample mean for DDP equivalence).
        train_data: Map-style dataset yielding ``(input, target)`` (or see ``unpack``).
        val_data: Optional validation dataset, evaluated after every epoch.
        config: The :class:`TrainConfig`.
        run_dir: Folder for ``last.pt``, ``best.pt``, ``metrics.csv`` and ``resources*.json``;
            ``None`` keeps everything in memory (no resume).
        metrics_fn: ``metrics_fn(outputs, targets) -> {name: value}`` on the whole validation set
            (outputs in dataset order, on CPU, float32); logged as ``val_<name>``.
        resume: Continue from ``run_dir/last.pt`` when it exists (else start afresh and
            overwrite).
        unpack: ``unpack(batch) -> (input, target)`` for other batch layouts.
        monitor_resources: Record wall time, peak memory and GPU power of :meth:`fit` into
            ``run_dir/resources.json`` (``resources_resume_<epoch>.json`` for a resumed run).
        batch_transform: ``batch_transform(input) -> tensor``, applied to every training and
            evaluation input once it is on the device, without gradients and outside autocast:
            data generation on the accelerator (e.g. :class:`motionqc.synthetic.heads.DeviceMotion`
            simulating k-space motion on the GPU inside the training loop). Not checkpointed.
        callbacks: More :class:`motionqc.training.callbacks.Callback` hooks, called after the
            trainer's own: :class:`~motionqc.training.callbacks.EarlyStopping`,
            :class:`~motionqc.training.callbacks.Checkpointing` and (with
            ``monitor_resources``) :class:`~motionqc.training.callbacks.ResourceMonitoring`.

    Attributes:
        history: One dict per finished epoch (also written to ``metrics.csv``).
        epoch: Number of finished epochs.
        best_metric, best_epoch: The best monitored value so far and its epoch.
        best_state: Without ``run_dir``, a copy of the best epoch's weights (else ``best.pt``).
        stopped_early: Whether early stopping ended the run.

    Raises:
        ValueError: For a monitor that needs validation data when there is none, a global batch
            not divisible by the number of DDP ranks, or fp16 on CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_data: Dataset,
        val_data: Dataset | None = None,
        config: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        metrics_fn: MetricsFn | None = None,
        resume: bool = True,
        unpack: Callable[[Any], tuple[Any, Any]] = default_unpack,
        monitor_resources: bool = True,
        batch_transform: Callable[[Any], Any] | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = cfg = config or TrainConfig()
        if val_data is None and cfg.monitor != "train_loss":
            raise ValueError(
                f"monitor {cfg.monitor!r} needs validation data: pass val_data or set "
                "monitor='train_loss'"
            )
        self.loss_fn = loss_fn
        self.metrics_fn = metrics_fn
        self.unpack = unpack
        self.batch_transform = batch_transform
        self.train_data = train_data
        self.val_data = val_data
        self.run_dir = Path(run_dir) if run_dir is not None else None
        own: list[Callback] = [EarlyStopping(), Checkpointing()]
        if monitor_resources:
            own.append(ResourceMonitoring())
        self.callbacks: list[Callback] = [*own, *callbacks]

        self._join_group()
        self._place(model)
        self._reset_state()
        if resume and self.last_path is not None and self.last_path.exists():
            load_checkpoint(self, self.last_path)

        # -- data ---------------------------------------------------------------------------
        self.train_sampler = DistributedSampler(
            train_data,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=cfg.drop_last,
        )
        self._loader_gen = torch.Generator()

    def _join_group(self) -> None:
        """Rank, world size and local batch sizes; the process group under ``torchrun``."""
        cfg = self.config
        rank, world, local_rank = distributed_info()
        self._owns_group = False
        if world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend=backend)
            self._owns_group = True
        self.rank, self.world_size, self.local_rank = rank, world, local_rank
        self.distributed = world > 1
        if cfg.batch_size % world:
            raise ValueError(
                f"batch_size {cfg.batch_size} is the global batch and must be divisible by the "
                f"{world} DDP processes"
            )
        eval_bs = cfg.eval_batch_size or cfg.batch_size
        self.local_batch = cfg.batch_size // world
        self.local_eval_batch = max(1, eval_bs // world)

    def _place(self, model: nn.Module) -> None:
        """Device, precision and memory layout; the model (DDP-wrapped), optimiser, scheduler."""
        cfg = self.config
        local_rank, world = self.local_rank, self.world_size
        dev = training_device(cfg.device, local_rank, self.distributed)
        self.device = dev
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self.amp_dtype: torch.dtype | None = training_autocast(cfg.precision, dev)
        self.channels_last = (
            cfg.channels_last if cfg.channels_last is not None else dev.type == "cuda"
        )
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and dev.type == "cuda"
        )

        # -- model, optimiser, scheduler ----------------------------------------------------
        model = model.to(dev)
        if self.channels_last:
            for p in list(model.parameters()) + list(model.buffers()):
                if p.dim() == 5:
                    p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        self.module = model
        if self.distributed:
            self.model: nn.Module = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        else:
            self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas
        )
        self.scheduler: Any = make_scheduler(
            self.optimizer,
            cfg,
            len(self.train_data),
            world,
            self.local_batch,  # type: ignore[arg-type]
        )

    def _reset_state(self) -> None:
        """The state of a run that has not started (a checkpoint may replace it)."""
        cfg = self.config
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch = 0
        self.best_metric = math.inf if cfg.mode == "min" else -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped_early = False
        self.finished = False
        self.resumed_from: int | None = None
        self.pending_rng: dict[str, Any] | None = None

    # ---------------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path | None:
        """``run_dir/last.pt`` (the resume checkpoint), or ``None`` without a run folder."""
        return self.run_dir / "last.pt" if self.run_dir is not None else None

    @property
    def best_path(self) -> Path | None:
        """``run_dir/best.pt`` (weights of the best epoch), or ``None`` without a run folder."""
        return self.run_dir / "best.pt" if self.run_dir is not None else None

    @property
    def csv_path(self) -> Path | None:
        """``run_dir/metrics.csv`` (one row per epoch), or ``None`` without a run folder."""
        return self.run_dir / "metrics.csv" if self.run_dir is not None else None

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    def _progress(self) -> bool:
        show = self.config.progress
        if show is None:
            show = not os.environ.get("CI")
        return bool(show) and self.is_main

    def _autocast(self) -> Any:
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )

    def _prepare_input(self, x: Any) -> Any:
        x = to_device(x, self.device)
        if self.batch_transform is not None:
            with torch.no_grad():
                x = self.batch_transform(x)
        if self.channels_last and torch.is_tensor(x) and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def _loader(self, dataset: Dataset, sampler: Any, batch_size: int, epoch: int) -> DataLoader:
        # Re-seeded per epoch (and rank): worker seeds do not depend on where a run resumed.
        self._loader_gen.manual_seed(self.config.seed * 1_000_003 + epoch * 1_009 + self.rank)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.config.num_workers,
            worker_init_fn=loader_worker_seed,
            generator=self._loader_gen,
            pin_memory=self.device.type == "cuda",
            drop_last=self.config.drop_last if sampler is self.train_sampler else False,
        )

    def _all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64)
        if self.distributed:
            if torch.distributed.get_backend() == "nccl":
                t = t.to(self.device)
            torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    # ---------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        """Run one training epoch (0-based ``epoch``) and return the sample-mean training loss."""
        from tqdm.auto import tqdm

        self.model.train()
        self.train_sampler.set_epoch(epoch)
        loader = self._loader(self.train_data, self.train_sampler, self.local_batch, epoch)
        total, count = 0.0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.config.max_epochs}",
            leave=False,
            disable=not self._progress(),
        )
        for batch in bar:
            x, y = self.unpack(batch)
            x, y = self._prepare_input(x), to_device(y, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                out = self.model(x)
            loss = self.loss_fn(out.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss.item()} at epoch {epoch + 1}; lower the learning "
                    "rate or use precision='fp32'"
                )
            self.scaler.scale(loss).backward()
            if self.config.grad_clip_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.config.schedule == "onecycle":
                self.scheduler.step()
            n = len(x) if torch.is_tensor(x) else self.local_batch
            total += loss.item() * n
            count += n
            bar.set_postfix(loss=f"{loss.item():.4g}")
        total, count = self._all_reduce_sum([total, count])
        return total / max(count, 1)

    @torch.no_grad()
    def predict(self, dataset: Dataset) -> tuple[torch.Tensor, Any, float]:
        """Evaluate the model on a dataset (sharded over DDP ranks, gathered in dataset order).

        Args:
            dataset: Map-style dataset of ``(input, target)``.

        Returns:
            ``(outputs, targets, mean_loss)``: outputs as float32 on CPU in dataset order, the
            targets collated the same way, and the sample-mean of the per-batch losses.
        """
        self.module.eval()
        n = len(dataset)  # type: ignore[arg-type]
        shard = list(range(self.rank, n, self.world_size))  # no padding: every sample once
        loader = self._loader(
            IndexedDataset(Subset(dataset, shard)), None, self.local_eval_batch, epoch=-1
        )
        outs, tgts, idx = [], [], []
        total = 0.0
        for i, batch in loader:
            x, y = self.unpack(batch)
            x, y_dev = self._prepare_input(x), to_device(y, self.device)
            with self._autocast():
                out = self.module(x)
            out = out.float()
            total += self.loss_fn(out, y_dev).item() * len(i)
            outs.append(out.cpu())
            tgts.append(y)
            idx.append(torch.as_tensor([shard[j] for j in i.tolist()]))
        local = (
            torch.cat(outs) if outs else torch.empty(0),
            cat_batches(tgts) if tgts else None,
            torch.cat(idx) if idx else torch.empty(0, dtype=torch.long),
        )
        (total,) = self._all_reduce_sum([total])
        if self.distributed:
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, local)
            parts = [g for g in gathered if g[1] is not None]
            outputs = torch.cat([p[0] for p in parts])
            targets = cat_batches([p[1] for p in parts])
            order = torch.argsort(torch.cat([p[2] for p in parts]))
        else:
            outputs, targets, order = local[0], local[1], torch.argsort(local[2])
        return outputs[order], index_batch(targets, order), total / max(n, 1)

    def fit(self, until_epoch: int | None = None) -> list[dict[str, Any]]:
        """Train until ``max_epochs``, early stopping, or ``until_epoch``.

        Args:
            until_epoch: Stop after this many finished epochs as if the process were killed
                there (the checkpoint stays, a new Trainer resumes); ``None`` runs to the end.

        Returns:
            The per-epoch history (also in ``metrics.csv``).
        """
        if self.finished:
            return self.history
        try:
            for callback in self.callbacks:
                callback.on_fit_start(self)
            self._fit(until_epoch)
        except BaseException as exc:
            for callback in self.callbacks:
                callback.on_fit_end(self, exc)
            raise
        for callback in self.callbacks:
            callback.on_fit_end(self, None)
        return self.history

    def _fit(self, until_epoch: int | None) -> None:
        cfg = self.config
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)
            self.pending_rng = None
        elif self.epoch == 0:
            seed_everything(cfg.seed + self.rank)
        stop_at = cfg.max_epochs if until_epoch is None else min(until_epoch, cfg.max_epochs)
        while self.epoch < stop_at:
            epoch = self.epoch
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
            row["train_loss"] = self.train_epoch(epoch)
            if self.val_data is not None:
                outputs, targets, val_loss = self.predict(self.val_data)
                row["val_loss"] = val_loss
                if self.metrics_fn is not None:
                    for k, v in self.metrics_fn(outputs, targets).items():
                        row[f"val_{k}"] = float(v)
            if cfg.monitor not in row:
                raise ValueError(
                    f"monitor {cfg.monitor!r} is not among the logged values {sorted(row)}"
                )
            value = float(row[cfg.monitor])
            if cfg.schedule == "plateau":
                self.scheduler.step(value)
            for callback in self.callbacks:
                callback.on_validation(self, row, value)
            row["time_s"] = time.perf_counter() - t0
            self.history.append(row)
            self.epoch = epoch + 1
            self.finished = self.stopped_early or self.epoch >= cfg.max_epochs
            for callback in self.callbacks:
                callback.on_epoch_end(self, row)
            if self.stopped_early:
                break

    # ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (what ``last.pt`` holds), except the RNG states."""
        return {
            "format": 1,
            "epoch": self.epoch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "finished": self.finished,
            "history": self.history,
            "config": dataclasses.asdict(self.config),
            "world_size": self.world_size,
        }

    def close(self) -> None:
        """Destroy the process group if this trainer created it."""
        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_group = False

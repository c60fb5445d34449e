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

**Resources.** :meth:`Trainer.fit` runs inside :class:`motionqc.runtime.resources.ResourceMonitor` and
writes ``resources.json`` (``resources_resume_<epoch>.json`` for a resumed segment) into the run
folder; under DDP it is rank 0's process (its GPU, its RSS and its DataLoader workers).

Module entry point (a task factory builds model, loss and data)::

    python -m motionqc.training.trainer --epochs 3            # toy task -> checkpoints/toy_task/
    torchrun --nproc_per_node=2 -m motionqc.training.trainer --run-dir /tmp/toy --epochs 3
    python -m motionqc.training.trainer --task mypkg.tasks:pretrain --task-arg n_train=64
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from motionqc import paths

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainTask",
    "kaiming_init",
    "seed_everything",
    "distributed_info",
    "toy_task",
    "main",
]

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
MetricsFn = Callable[[torch.Tensor, Any], dict[str, float]]

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and all CUDA devices).

    Args:
        seed: Any integer; numpy receives it modulo 2**32.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def kaiming_init(model: nn.Module, mode: str = "fan_in", nonlinearity: str = "relu") -> nn.Module:
    """Kaiming-normal initialisation of every convolution and linear layer (He et al. 2015).

    Weights of ``Conv1d/2d/3d`` and ``Linear`` layers are drawn from
    ``N(0, gain² / fan)``; their biases are zeroed. Normalisation layers get weight 1, bias 0.
    Uses the global torch generator: call :func:`seed_everything` first for a reproducible draw.

    Args:
        model: The network (modified in place).
        mode: ``"fan_in"`` (preserves forward variance) or ``"fan_out"`` (backward variance).
        nonlinearity: The activation that follows the layers (``"relu"``, ``"leaky_relu"``...).

    Returns:
        The same model, for chaining.

    Raises:
        ValueError: If ``mode`` is not ``"fan_in"`` or ``"fan_out"``.
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return model


def distributed_info() -> tuple[int, int, int]:
    """Return ``(rank, world_size, local_rank)`` from an initialised group or torchrun's env."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return rank, world, int(os.environ.get("LOCAL_RANK", rank))
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id (base_seed from the loader's generator);
    # numpy and random follow from it so augmentations drawn with them are reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain types (a checkpoint is read with ``weights_only``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _default_unpack(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        return batch["input"], batch["target"]
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        "a batch must be (input, target) or a dict with 'input' and 'target'; pass unpack= to "
        "the Trainer for other layouts"
    )


def _to(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, list | tuple):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _cat(items: list[Any]) -> Any:
    first = items[0]
    if torch.is_tensor(first):
        return torch.cat(items)
    if isinstance(first, list | tuple):
        return type(first)(_cat([it[i] for it in items]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([it[k] for it in items]) for k in first}
    return [x for it in items for x in it]


def _index(obj: Any, order: torch.Tensor) -> Any:
    if torch.is_tensor(obj):
        return obj[order]
    if (
        isinstance(obj, tuple | list)
        and obj
        and (torch.is_tensor(obj[0]) or isinstance(obj[0], dict))
    ):
        return type(obj)(_index(o, order) for o in obj)
    if isinstance(obj, dict):
        return {k: _index(v, order) for k, v in obj.items()}
    return [obj[i] for i in order.tolist()]


class _Indexed(Dataset):
    """Wrap a dataset so each item also carries its index (for gathering in dataset order)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
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
        if self.precision not in _PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(_PRECISIONS)}, got {self.precision!r}"
            )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be non-negative, got {self.num_workers}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be positive or None, got {self.grad_clip_norm}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


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
        unpack: Callable[[Any], tuple[Any, Any]] = _default_unpack,
        monitor_resources: bool = True,
        batch_transform: Callable[[Any], Any] | None = None,
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
        self.monitor_resources = monitor_resources

        # -- distributed ------------------------------------------------------------------
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

        # -- device and precision -----------------------------------------------------------
        if cfg.device is None:
            dev = (
                torch.device("cuda", local_rank)
                if torch.cuda.is_available()
                else torch.device("cpu")
            )
        else:
            dev = torch.device(cfg.device)
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device(
                    "cuda", local_rank if self.distributed else torch.cuda.current_device()
                )
        self.device = dev
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self.amp_dtype: torch.dtype | None
        if cfg.precision == "fp32" or (cfg.precision == "auto" and dev.type != "cuda"):
            self.amp_dtype = None
        elif cfg.precision == "bf16" or (
            cfg.precision == "auto" and torch.cuda.is_bf16_supported()
        ):
            self.amp_dtype = torch.bfloat16
        else:
            if dev.type != "cuda":
                raise ValueError(
                    "precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU"
                )
            self.amp_dtype = torch.float16
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
        self.scheduler: Any
        if cfg.schedule == "onecycle":
            per_rank = math.ceil(len(train_data) / world)  # type: ignore[arg-type]
            steps = (
                per_rank // self.local_batch if cfg.drop_last else -(-per_rank // self.local_batch)
            )
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=cfg.lr,
                total_steps=max(1, steps) * cfg.max_epochs,
                pct_start=cfg.warmup_fraction,
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode=cfg.mode,
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                threshold=cfg.plateau_threshold,
                min_lr=cfg.min_lr,
            )

        # -- state ----------------------------------------------------------------------------
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch = 0
        self.best_metric = math.inf if cfg.mode == "min" else -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped_early = False
        self.finished = False
        self.resumed_from: int | None = None
        self._rng_loaded: dict[str, Any] | None = None
        if resume and self.last_path is not None and self.last_path.exists():
            self._load(self.last_path)

        # -- data ---------------------------------------------------------------------------
        self.train_sampler = DistributedSampler(
            train_data,
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=cfg.drop_last,
        )
        self._loader_gen = torch.Generator()

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
        x = _to(x, self.device)
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
            worker_init_fn=_worker_init,
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
            x, y = self._prepare_input(x), _to(y, self.device)
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
            _Indexed(Subset(dataset, shard)), None, self.local_eval_batch, epoch=-1
        )
        outs, tgts, idx = [], [], []
        total = 0.0
        for i, batch in loader:
            x, y = self.unpack(batch)
            x, y_dev = self._prepare_input(x), _to(y, self.device)
            with self._autocast():
                out = self.module(x)
            out = out.float()
            total += self.loss_fn(out, y_dev).item() * len(i)
            outs.append(out.cpu())
            tgts.append(y)
            idx.append(torch.as_tensor([shard[j] for j in i.tolist()]))
        local = (
            torch.cat(outs) if outs else torch.empty(0),
            _cat(tgts) if tgts else None,
            torch.cat(idx) if idx else torch.empty(0, dtype=torch.long),
        )
        (total,) = self._all_reduce_sum([total])
        if self.distributed:
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, local)
            parts = [g for g in gathered if g[1] is not None]
            outputs = torch.cat([p[0] for p in parts])
            targets = _cat([p[1] for p in parts])
            order = torch.argsort(torch.cat([p[2] for p in parts]))
        else:
            outputs, targets, order = local[0], local[1], torch.argsort(local[2])
        return outputs[order], _index(targets, order), total / max(n, 1)

    def _improved(self, value: float) -> bool:
        if self.config.mode == "min":
            return value < self.best_metric - self.config.min_delta
        return value > self.best_metric + self.config.min_delta

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
        monitor = None
        if self.monitor_resources and self.is_main and self.run_dir is not None:
            from motionqc.runtime.resources import ResourceMonitor

            name = (
                "resources.json"
                if self.resumed_from is None
                else f"resources_resume_{self.epoch}.json"
            )
            monitor = ResourceMonitor(
                self.run_dir / name,
                device=self.device,
                label=self.config.label,
                extra={"world_size": self.world_size, "start_epoch": self.epoch},
            )
            monitor.__enter__()
        try:
            self._fit(until_epoch)
        except BaseException as exc:
            if monitor is not None:
                monitor.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if monitor is not None:
            monitor.extra["end_epoch"] = self.epoch
            monitor.__exit__(None, None, None)
        return self.history

    def _fit(self, until_epoch: int | None) -> None:
        cfg = self.config
        if self._rng_loaded is not None:
            _set_rng_state(self._rng_loaded)
            self._rng_loaded = None
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
            improved = self._improved(value)
            if improved:
                self.best_metric, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
                if self.run_dir is None:  # no best.pt: keep the best weights in memory
                    self.best_state = {
                        k: v.detach().clone() for k, v in self.module.state_dict().items()
                    }
            else:
                self.bad_epochs += 1
            row["best"] = improved
            row["time_s"] = time.perf_counter() - t0
            self.history.append(row)
            self.epoch = epoch + 1
            patience = cfg.early_stopping_patience
            self.stopped_early = patience is not None and self.bad_epochs >= patience
            self.finished = self.stopped_early or self.epoch >= cfg.max_epochs
            self._save(improved)
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

    def _save(self, improved: bool) -> None:
        rng = _rng_state()
        if self.distributed:
            all_rng: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(all_rng, rng)
        else:
            all_rng = [rng]
        if self.is_main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            state = self.state_dict()
            state["rng"] = all_rng
            _atomic_save(state, self.last_path)
            if improved:
                _atomic_save(
                    {
                        "epoch": self.epoch,
                        "model": state["model"],
                        "metric": self.best_metric,
                        "monitor": self.config.monitor,
                    },
                    self.best_path,
                )
            self._write_csv()
        if self.distributed:
            torch.distributed.barrier()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")  # type: ignore[union-attr]
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.csv_path)  # type: ignore[arg-type]

    def _load(self, path: Path) -> None:
        try:  # weights_only: a checkpoint left in a run folder can hold no code to run
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise ValueError(
                f"{path}: not a checkpoint this trainer can resume from, not loaded "
                f"({type(exc).__name__}); remove it to start the run again"
            ) from exc
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state["stopped_early"])
        # A finished run stays finished unless max_epochs was raised (early stopping is final).
        self.finished = self.stopped_early or self.epoch >= self.config.max_epochs
        self.history = list(state["history"])
        self.resumed_from = self.epoch
        rngs = state.get("rng") or []
        if len(rngs) == self.world_size:
            self._rng_loaded = rngs[self.rank]
        else:  # different number of ranks: reproducible, but not identical to the first run
            self._rng_loaded = None
            seed_everything(self.config.seed + self.rank + 7919 * self.epoch)

    def close(self) -> None:
        """Destroy the process group if this trainer created it."""
        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_group = False


def _atomic_save(obj: Any, path: Path | None) -> None:
    assert path is not None
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# tasks and the module entry point
# --------------------------------------------------------------------------------------------
@dataclass
class TrainTask:
    """What a task factory returns for :func:`main`: model, loss, data and metrics."""

    model: nn.Module
    loss_fn: LossFn
    train_data: Dataset
    val_data: Dataset | None = None
    metrics_fn: MetricsFn | None = None


class _ToyVolumes(Dataset):
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
        train_data=_ToyVolumes(int(n_train), int(size), seed + 1),
        val_data=_ToyVolumes(int(n_val), int(size), seed + 2),
        metrics_fn=mae,
    )


def _load_task(spec: str) -> Callable[..., TrainTask]:
    if ":" not in spec:
        raise ValueError(f"--task must look like 'package.module:function', got {spec!r}")
    module, name = spec.split(":", 1)
    return getattr(importlib.import_module(module), name)


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command line: train a task with :class:`Trainer`, alone or under ``torchrun``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``); see ``python -m motionqc.training.trainer --help``.

    Returns:
        The history of the run.
    """
    parser = argparse.ArgumentParser(
        prog="python -m motionqc.training.trainer",
        description="Train a task (model + loss + data from a factory) with checkpoints and resume; "
        "run it under `torchrun --nproc_per_node=N` to train data-parallel.",
    )
    parser.add_argument(
        "--task",
        default="motionqc.training.trainer:toy_task",
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
        kwargs[key] = _parse_value(value)
    task = _load_task(args.task)(seed=config.seed, **kwargs)
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

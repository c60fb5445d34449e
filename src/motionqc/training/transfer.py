"""QC from motion pretraining: frozen embeddings + MLP head, and SFCN from scratch for comparison.

Both settings use the shared :class:`motionqc.training.trainer.Trainer`, class-weighted cross-entropy for
the imbalance, early stopping on validation balanced accuracy, and are evaluated with
:mod:`motionqc.evaluation.qc_metrics` (the code that also recomputes the poster's table).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from motionqc.models.encoder import INPUT_INTENSITY, scale_input
from motionqc.models.qc_head import Standardise
from motionqc.models.sfcn import SFCN, SFCN_CHANNELS, QCHead
from motionqc.qc_task import N_QC_CLASSES
from motionqc.training.config import TrainConfig
from motionqc.training.reproducibility import kaiming_init, seed_everything
from motionqc.training.trainer import Trainer

__all__ = [
    "EARLY_STOPPING_PATIENCE",
    "QC_SETTINGS",
    "QCRun",
    "QCSetting",
    "WeightedCE",
    "class_weights",
    "embed",
    "predict_classes",
    "qc_setting",
    "train_qc",
    "train_scratch",
    "train_transfer",
]


@torch.inference_mode()
def embed(
    model: SFCN,
    images: torch.Tensor,
    volume_ids: Sequence[str],
    *,
    cache: str | Path | None = None,
    batch_size: int = 8,
    pooled: bool = False,
    progress: bool = True,
    input_intensity: str = INPUT_INTENSITY,
) -> torch.Tensor:
    """Frozen-encoder embeddings of volumes, cached on disk per volume id.

    Args:
        model: The pretrained SFCN (eval mode is set here).
        images: ``(N, 1, X, Y, Z)`` preprocessed volumes.
        volume_ids: One id per volume (the cache key together with the cache file, which should
            be named after the checkpoint digest: :func:`motionqc.models.qc_head.file_digest`).
        cache: ``.pt`` file mapping volume id → embedding; ids already there are not
            recomputed, new ones are added.
        batch_size: Volumes per forward pass.
        pooled: The 64-d pooled vector instead of the flattened encoder output.
        progress: Show a progress bar.
        input_intensity: The encoder's input scaling (``meta["input_intensity"]``); part of the
            cache key.

    Returns:
        ``(N, D)`` float32 embeddings in the order of ``volume_ids``.
    """
    from tqdm.auto import tqdm

    ids = [str(v) for v in volume_ids]
    if len(ids) != len(images):
        raise ValueError(f"{len(images)} volumes but {len(ids)} ids")
    cache = Path(cache) if cache is not None else None
    key = f"pooled={pooled},input={input_intensity}"
    saved: dict[str, dict[str, torch.Tensor]] = {}
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
    store: dict[str, torch.Tensor] = dict(saved.get(key, {}))
    todo = [i for i, v in enumerate(ids) if v not in store]
    model.eval()
    for start in tqdm(
        range(0, len(todo), batch_size), desc="embed", disable=not progress, leave=False
    ):
        idx = todo[start : start + batch_size]
        feats = model.features(scale_input(images[idx], input_intensity), pooled=pooled).float()
        for i, f in zip(idx, feats, strict=True):
            store[ids[i]] = f.clone()
    if cache is not None and todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        saved[key] = store
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save(saved, tmp)
        os.replace(tmp, cache)
    return torch.stack([store[v] for v in ids]) if ids else torch.zeros(0)


def class_weights(y: Sequence[int] | np.ndarray, n_classes: int = N_QC_CLASSES) -> torch.Tensor:
    """Inverse-frequency class weights, normalised to mean 1 (absent classes get weight 0).

    Args:
        y: Integer class labels.
        n_classes: Number of classes.

    Returns:
        ``(n_classes,)`` float32 weights.
    """
    counts = np.bincount(np.asarray(y, dtype=int), minlength=n_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w / w[w > 0].mean(), dtype=torch.float32)


class WeightedCE:
    """Class-weighted cross-entropy on logits or log-probabilities (a weighted per-sample mean)."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights.float()

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the loss of a batch."""
        return nn.functional.cross_entropy(
            out.float(), y.long(), weight=self.weights.to(out.device)
        )


def _balanced_accuracy(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    from motionqc.evaluation.qc_metrics import qc_metrics

    return qc_metrics(y.numpy(), out.argmax(1).numpy())


@dataclass
class QCRun:
    """Result of one QC training run.

    Attributes:
        model: The trained model (best validation epoch).
        history: Per-epoch rows of the trainer.
        run_dir: Folder with ``metrics.csv``, checkpoints and ``resources.json``.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None


def _fit(
    model: nn.Module,
    train: TensorDataset,
    val: TensorDataset,
    weights: torch.Tensor,
    config: TrainConfig,
    run_dir: str | Path | None,
) -> QCRun:
    if len(train) % config.batch_size == 1:  # BatchNorm cannot train on a last batch of one
        config = dataclasses.replace(config, drop_last=True)
    trainer = Trainer(
        model,
        WeightedCE(weights),
        train,
        val,
        config=config,
        run_dir=run_dir,
        metrics_fn=_balanced_accuracy,
    )
    history = trainer.fit()
    if trainer.best_path is not None and trainer.best_path.is_file():
        best = torch.load(trainer.best_path, map_location="cpu", weights_only=True)
        trainer.module.load_state_dict(best["model"])
    elif trainer.best_state is not None:
        trainer.module.load_state_dict(trainer.best_state)
    trainer.module.eval()
    trainer.close()
    return QCRun(trainer.module, history, Path(run_dir) if run_dir is not None else None)


EARLY_STOPPING_PATIENCE = 10
"""Epochs without a better validation balanced accuracy before a QC run stops: one rule for the
transfer head and the scratch SFCN (the authors used 15; 10 keeps five scratch seeds trained to
convergence within the sample profile's budget on 2 CPU cores)."""


def _transfer_model(z_train: torch.Tensor, *, hidden: int = 10, dropout: float = 0.5) -> nn.Module:
    """The authors' MLP head on standardised embeddings (statistics of ``z_train``)."""
    mean, std = z_train.mean(0), z_train.std(0).clamp_min(1e-6)
    head = nn.Sequential(
        Standardise(mean, std), QCHead(z_train.shape[1], hidden=hidden, dropout=dropout)
    )
    return kaiming_init(head)


def _scratch_model(
    x_train: torch.Tensor, *, dropout: float = 0.5, channels: Sequence[int] = SFCN_CHANNELS
) -> nn.Module:
    """SFCN with a 3-class head (logits), Kaiming-initialised."""
    return kaiming_init(
        SFCN(n_outputs=N_QC_CLASSES, channels=channels, dropout=dropout, log_softmax=False)
    )


@dataclass(frozen=True)
class QCSetting:
    """What distinguishes the two settings the poster compares; the training is the same.

    Attributes:
        model: Builds the model from the training inputs and its keyword-only arguments.
        defaults: :class:`TrainConfig` values of the setting.
        one_thread: Train on one torch thread (a 10-unit MLP: thread start-up costs more than
            the maths).
    """

    model: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    one_thread: bool = False


QC_SETTINGS: dict[str, QCSetting] = {
    "transfer": QCSetting(
        _transfer_model,
        {"lr": 1e-3, "weight_decay": 0.04, "batch_size": 16, "max_epochs": 60},
        one_thread=True,
    ),
    "scratch": QCSetting(
        _scratch_model, {"lr": 1e-3, "weight_decay": 0.05, "batch_size": 8, "max_epochs": 40}
    ),
}
"""The QC settings by name: the transfer head on frozen embeddings, SFCN from scratch."""


def qc_setting(name: str) -> QCSetting:
    """The :class:`QCSetting` called ``name`` in :data:`QC_SETTINGS`.

    Raises:
        ValueError: For an unknown name.
    """
    if name not in QC_SETTINGS:
        raise ValueError(f"setting must be one of {sorted(QC_SETTINGS)}, not {name!r}")
    return QC_SETTINGS[name]


def train_qc(
    setting: str,
    x_train: torch.Tensor,
    y_train: Sequence[int],
    x_val: torch.Tensor,
    y_val: Sequence[int],
    seed: int,
    *,
    run_dir: str | Path | None = None,
    **kwargs: Any,
) -> QCRun:
    """Train one QC model of a setting (class-weighted cross-entropy, balanced-accuracy stopping).

    Args:
        setting: A key of :data:`QC_SETTINGS`: ``"transfer"`` (the MLP head on embeddings
            ``(N, D)``) or ``"scratch"`` (SFCN on volumes ``(N, 1, X, Y, Z)``).
        x_train: Training inputs.
        y_train: Their QC classes 0/1/2.
        x_val: Validation inputs.
        y_val: Their QC classes.
        seed: Seed of the initialisation, shuffling and dropout.
        run_dir: Trainer folder (metrics, checkpoints, resources).
        **kwargs: The model's arguments (transfer: ``hidden`` units, authors 10, and input
            ``dropout``, 0.5, authors' best 0.77; scratch: head ``dropout``, 0.5, and SFCN
            ``channels``, the paper's by default) and :class:`TrainConfig` overrides (transfer:
            lr 1e-3, wd 0.04, batch 16, 60 epochs; scratch: lr 1e-3, wd 0.05, batch 8,
            40 epochs; both stop after :data:`EARLY_STOPPING_PATIENCE` epochs without a better
            validation balanced accuracy).

    Returns:
        The :class:`QCRun`.

    Raises:
        ValueError: For an unknown setting.
    """
    spec = qc_setting(setting)
    params = inspect.signature(spec.model).parameters.values()
    model_args = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    model_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in model_args}
    seed_everything(seed)
    model = spec.model(x_train, **model_kwargs)
    config = TrainConfig(
        **{
            "monitor": "val_balanced_accuracy",
            "mode": "max",
            "precision": "fp32",
            "progress": False,
            "early_stopping_patience": EARLY_STOPPING_PATIENCE,
            **spec.defaults,
            "seed": seed,
            "label": setting,
            **kwargs,
        }
    )
    ytr = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    yva = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    threads = torch.get_num_threads()
    if spec.one_thread:
        torch.set_num_threads(1)
    try:
        return _fit(
            model,
            TensorDataset(x_train.float(), ytr),
            TensorDataset(x_val.float(), yva),
            class_weights(ytr.numpy()),
            config,
            run_dir,
        )
    finally:
        torch.set_num_threads(threads)


train_transfer = functools.partial(train_qc, "transfer")
train_transfer.__doc__ = """Train the authors' MLP head on frozen embeddings: :func:`train_qc`.

``train_transfer(z_train, y_train, z_val, y_val, seed, *, run_dir=None, hidden=10, dropout=0.5,
**config)`` is :func:`train_qc` with ``setting="transfer"``.
"""

train_scratch = functools.partial(train_qc, "scratch")
train_scratch.__doc__ = """Train SFCN with a 3-class head from Kaiming initialisation: :func:`train_qc`.

``train_scratch(x_train, y_train, x_val, y_val, seed, *, run_dir=None, dropout=0.5,
channels=SFCN_CHANNELS, **config)`` is :func:`train_qc` with ``setting="scratch"`` (pass the
pretrained encoder's ``channels`` to compare the same architecture).
"""


@torch.inference_mode()
def predict_classes(model: nn.Module, x: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Return class probabilities ``(N, N_QC_CLASSES)`` of a QC model (head on embeddings, or SFCN)."""
    model.eval()
    out = [
        torch.softmax(model(x[i : i + batch_size].float()).float(), 1)
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, N_QC_CLASSES), np.float32)

"""QC from motion pretraining: frozen embeddings + MLP head, and SFCN from scratch for comparison.

Both settings use the shared :class:`motionqc.training.trainer.Trainer`, class-weighted cross-entropy for
the imbalance, early stopping on validation balanced accuracy, and are evaluated with
:mod:`motionqc.evaluation.qc_metrics` (the code that also recomputes the poster's table).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from motionqc.data.qc_task import N_QC_CLASSES, task_record
from motionqc.models.encoder import INPUT_INTENSITY, scale_input
from motionqc.models.sfcn import SFCN, SFCN_CHANNELS, QCHead
from motionqc.training.trainer import TrainConfig, Trainer, kaiming_init, seed_everything

__all__ = [
    "EARLY_STOPPING_PATIENCE",
    "QC_HEAD_FORMAT",
    "QCRun",
    "WeightedCE",
    "class_weights",
    "embed",
    "file_digest",
    "best_run",
    "load_qc_head",
    "predict_classes",
    "run_scratch_seeds",
    "run_seeds",
    "run_transfer_seeds",
    "save_qc_head",
    "preprocess_rows",
    "stratified_split",
    "subject_split",
    "split_by_subject",
    "train_qc_cli",
    "train_scratch",
    "train_transfer",
]

QC_HEAD_FORMAT = "motionqc-qchead/1"


def file_digest(path: str | Path) -> str:
    """Return the first 16 hex digits of a file's SHA-256 (the embedding cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


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
            be named after the checkpoint digest: :func:`file_digest`).
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


def _qc_config(**overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "monitor": "val_balanced_accuracy",
        "mode": "max",
        "precision": "fp32",
        "progress": False,
    }
    base.update(overrides)
    return TrainConfig(**base)


def train_transfer(
    z_train: torch.Tensor,
    y_train: Sequence[int],
    z_val: torch.Tensor,
    y_val: Sequence[int],
    seed: int,
    *,
    run_dir: str | Path | None = None,
    hidden: int = 10,
    dropout: float = 0.5,
    **config: Any,
) -> QCRun:
    """Train the authors' MLP head on frozen embeddings (class-weighted cross-entropy).

    Args:
        z_train: Training embeddings ``(N, D)``.
        y_train: Their QC classes 0/1/2.
        z_val: Validation embeddings.
        y_val: Their QC classes.
        seed: Seed of the initialisation, shuffling and dropout.
        run_dir: Trainer folder (metrics, checkpoints, resources).
        hidden: Hidden units (authors: 10).
        dropout: Input dropout (authors' best: 0.77).
        **config: :class:`TrainConfig` overrides (defaults: lr 1e-3, wd 0.04, batch 16,
            60 epochs, early stopping after :data:`EARLY_STOPPING_PATIENCE` epochs without a
            better validation balanced accuracy).

    Returns:
        The :class:`QCRun`.
    """
    seed_everything(seed)
    mean, std = z_train.mean(0), z_train.std(0).clamp_min(1e-6)
    head = nn.Sequential(
        _Standardise(mean, std), QCHead(z_train.shape[1], hidden=hidden, dropout=dropout)
    )
    kaiming_init(head)
    cfg = _qc_config(
        **{
            "lr": 1e-3,
            "weight_decay": 0.04,
            "batch_size": 16,
            "max_epochs": 60,
            "early_stopping_patience": EARLY_STOPPING_PATIENCE,
            "seed": seed,
            "label": "transfer",
            **config,
        }
    )
    ytr = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    yva = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 10-unit MLP: thread start-up costs more than the maths
    try:
        return _fit(
            head,
            TensorDataset(z_train.float(), ytr),
            TensorDataset(z_val.float(), yva),
            class_weights(ytr.numpy()),
            cfg,
            run_dir,
        )
    finally:
        torch.set_num_threads(threads)


class _Standardise(nn.Module):
    """Fixed feature standardisation (train-set mean and std), saved with the head."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std


def train_scratch(
    x_train: torch.Tensor,
    y_train: Sequence[int],
    x_val: torch.Tensor,
    y_val: Sequence[int],
    seed: int,
    *,
    run_dir: str | Path | None = None,
    dropout: float = 0.5,
    channels: Sequence[int] = SFCN_CHANNELS,
    **config: Any,
) -> QCRun:
    """Train SFCN with a 3-class head from random (Kaiming) initialisation on the volumes.

    Args:
        x_train: Training volumes ``(N, 1, X, Y, Z)``.
        y_train: Their QC classes 0/1/2.
        x_val: Validation volumes.
        y_val: Their QC classes.
        seed: Seed of the initialisation, shuffling and dropout.
        run_dir: Trainer folder (metrics, checkpoints, resources).
        dropout: SFCN head dropout.
        channels: SFCN widths (default: the paper's; use the pretrained encoder's to compare
            the same architecture).
        **config: :class:`TrainConfig` overrides (defaults: lr 1e-3, wd 0.05, batch 8,
            40 epochs, early stopping as :func:`train_transfer`'s).

    Returns:
        The :class:`QCRun`.
    """
    seed_everything(seed)
    model = kaiming_init(
        SFCN(n_outputs=N_QC_CLASSES, channels=channels, dropout=dropout, log_softmax=False)
    )
    cfg = _qc_config(
        **{
            "lr": 1e-3,
            "weight_decay": 0.05,
            "batch_size": 8,
            "max_epochs": 40,
            "early_stopping_patience": EARLY_STOPPING_PATIENCE,
            "seed": seed,
            "label": "scratch",
            **config,
        }
    )
    ytr = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    yva = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    return _fit(
        model,
        TensorDataset(x_train.float(), ytr),
        TensorDataset(x_val.float(), yva),
        class_weights(ytr.numpy()),
        cfg,
        run_dir,
    )


@torch.inference_mode()
def predict_classes(model: nn.Module, x: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Return class probabilities ``(N, N_QC_CLASSES)`` of a QC model (head on embeddings, or SFCN)."""
    model.eval()
    out = [
        torch.softmax(model(x[i : i + batch_size].float()).float(), 1)
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, N_QC_CLASSES), np.float32)


def save_qc_head(path: str | Path, run: QCRun, encoder_path: str | Path, info: dict) -> Path:
    """Save a transfer head with the digest of the encoder it was trained on.

    Args:
        path: Output ``.pt`` file.
        run: A :func:`train_transfer` result.
        encoder_path: The encoder file whose embeddings the head reads.
        info: Anything else (seed, metrics, pooled flag).

    Returns:
        The path written.

    Raises:
        ValueError: If the head's outputs are not the QC task's classes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = run.model
    qc = head[1]  # type: ignore[index]
    if int(qc.net[-1].out_features) != N_QC_CLASSES:
        raise ValueError(
            f"a head of {qc.net[-1].out_features} classes; the QC task has {N_QC_CLASSES}"
        )
    state = {
        "format": QC_HEAD_FORMAT,
        "model": head.state_dict(),
        "in_features": int(qc.in_features),
        "hidden": int(qc.net[1].out_features),
        "dropout": float(qc.net[0].p),
        "encoder_digest": file_digest(encoder_path),
        "task": task_record(),
        "info": json.loads(json.dumps(dict(info))),  # plain types: read with weights_only
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_qc_head(
    path: str | Path, encoder_path: str | Path | None = None
) -> tuple[nn.Module, dict]:
    """Load a head written by :func:`save_qc_head` (checking it matches the encoder when given).

    Returns:
        ``(head, meta)``; ``head(z)`` gives class logits for embeddings ``z``; ``meta["task"]``
        is the QC task the head was trained for (:func:`motionqc.data.qc_task.task_record`).

    Raises:
        ValueError: If the file is not a QC head or was trained on another encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no QC head file")
    try:  # weights_only: a QC head from someone else can hold no code to run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(
            f"{path}: not a readable QC head file, not loaded ({type(exc).__name__})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != QC_HEAD_FORMAT:
        raise ValueError(f"{path}: not a motionqc QC head ({QC_HEAD_FORMAT})")
    if encoder_path is not None and file_digest(encoder_path) != state["encoder_digest"]:
        raise ValueError(f"{path}: trained on another encoder than {encoder_path}")
    d = state["in_features"]
    task = state.get("task") or task_record()  # files before the task was recorded: the poster's
    head = nn.Sequential(
        _Standardise(torch.zeros(d), torch.ones(d)),
        QCHead(d, hidden=state["hidden"], dropout=state["dropout"], n_classes=task["n_classes"]),
    )
    head.load_state_dict(state["model"])
    head.eval()
    meta = {k: state[k] for k in ("in_features", "hidden", "dropout", "encoder_digest", "info")}
    return head, meta | {"task": task}


def stratified_split(
    y: Sequence[int] | np.ndarray,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """Draw a seeded train/val/test split of volumes, stratified by QC class where possible.

    Args:
        y: QC classes per volume.
        fractions: Train, validation and test shares (summing to 1).
        seed: Seed of the draw.

    Returns:
        An object array of ``"train"``, ``"val"`` and ``"test"`` per volume. Stratification is
        dropped (plain random split) when a class has fewer than 3 volumes.

    Raises:
        ValueError: If the fractions do not sum to 1 or any is not positive.
    """
    from sklearn.model_selection import train_test_split

    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    y = np.asarray(y)
    idx = np.arange(len(y))
    present = np.unique(y, return_counts=True)[1]
    strat = y if len(present) > 1 and present.min() >= 3 else None
    tr, rest = train_test_split(idx, test_size=1 - fractions[0], random_state=seed, stratify=strat)
    va, te = train_test_split(
        rest,
        test_size=fractions[2] / (fractions[1] + fractions[2]),
        random_state=seed,
        stratify=y[rest] if strat is not None else None,
    )
    split = np.empty(len(idx), dtype=object)
    split[tr], split[va], split[te] = "train", "val", "test"
    return split


def subject_split(
    y: Sequence[int] | np.ndarray,
    groups: Sequence[object] | np.ndarray,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """Draw a seeded train/val/test split by subject: no subject's volumes in two splits.

    Test, then validation, are carved out with scikit-learn's ``StratifiedGroupKFold`` (one fold
    of ``round(1 / share)``), which keeps each subject whole and the QC classes as balanced across
    splits as whole subjects allow.

    Args:
        y: QC classes per volume.
        groups: Subject per volume.
        fractions: Train, validation and test shares (summing to 1).
        seed: Seed of the draw.

    Returns:
        An object array of ``"train"``, ``"val"`` and ``"test"`` per volume.

    Raises:
        ValueError: If the fractions are not three positive shares summing to 1, or there are
            fewer than three subjects.
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    y = np.asarray(y)
    groups = np.asarray([str(g) for g in groups])
    if len(groups) != len(y):
        raise ValueError(f"{len(groups)} subjects for {len(y)} volumes")
    if len(np.unique(groups)) < 3:
        raise ValueError(f"{len(np.unique(groups))} subject(s): a split by subject needs 3")

    def carve(idx: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
        k = min(max(2, int(round(1 / share))), len(np.unique(groups[idx])))
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # a class rarer than k is kept, only less balanced
            warnings.simplefilter("ignore", UserWarning)
            keep, held = next(folds.split(idx, y[idx], groups[idx]))
        return idx[keep], idx[held]

    rest, test = carve(np.arange(len(y)), fractions[2])
    train, val = carve(rest, fractions[1] / (fractions[0] + fractions[1]))
    split = np.empty(len(y), dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    return split


def check_subject_split(table: pd.DataFrame, split: np.ndarray, manifest: str | Path) -> None:
    """Refuse a given split in which one subject has volumes in two splits (one line)."""
    spans = pd.Series(split, index=table.index).groupby(table["subject"].astype(str)).nunique()
    if (spans > 1).any():
        subject = spans[spans > 1].index[0]
        raise ValueError(
            f"{manifest}: subject {subject} has volumes in more than one split "
            f"({(spans > 1).sum()} such subject(s)); a subject's scans must stay in one split"
        )


def split_by_subject(
    table: pd.DataFrame,
    y: Sequence[int] | np.ndarray,
    manifest: str | Path,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """A manifest's train/val/test split: its own ``split`` column, or one drawn by subject.

    A complete ``split`` column (every row train, val or test) is used as given and refused
    if a subject spans two splits (:func:`check_subject_split`); otherwise a seeded split by
    subject, stratified by ``y``, is drawn (:func:`subject_split`).

    Args:
        table: The manifest rows (``subject``, optionally ``split``).
        y: Class per row (the draw stratifies by it).
        manifest: The manifest's name, for messages.
        fractions: Train, validation and test shares of a drawn split.
        seed: Seed of a drawn split.

    Returns:
        An object array of ``"train"``, ``"val"`` and ``"test"`` per row.

    Raises:
        ValueError: If the given split mixes subjects, or the rows cannot be split (one line
            naming the manifest).
    """
    if "split" in table.columns and table["split"].isin(["train", "val", "test"]).all():
        split = table["split"].to_numpy(dtype=object)
        check_subject_split(table, split, manifest)
        return split
    try:
        return subject_split(y, table["subject"].to_numpy(), fractions=fractions, seed=seed)
    except ValueError as exc:
        raise ValueError(
            f"{manifest}: {len(table)} volumes cannot be split into train/val/test by subject "
            f"({' '.join(str(exc).split())})"
        ) from exc


def _runs_key(
    setting: str,
    inputs: torch.Tensor,
    y: np.ndarray,
    split: np.ndarray,
    ids: np.ndarray,
    train_kwargs: dict[str, Any],
) -> str:
    """``<setting>_<digest>`` of everything that determines a set of seed runs."""
    h = hashlib.sha256()
    spec = {
        "setting": setting,
        "kwargs": {k: repr(v) for k, v in sorted(train_kwargs.items())},
        "ids": [str(v) for v in ids],
        "y": [int(v) for v in y],
        "split": [str(v) for v in split],
        "shape": list(inputs.shape),
    }
    h.update(json.dumps(spec).encode())
    h.update(inputs.detach().cpu().contiguous().numpy().tobytes())
    return f"{setting}_{h.hexdigest()[:16]}"


def run_seeds(
    setting: str,
    inputs: torch.Tensor,
    y: Sequence[int] | np.ndarray,
    split: Sequence[str] | np.ndarray,
    volume_ids: Sequence[str],
    seeds: Sequence[int],
    *,
    run_root: str | Path | None = None,
    predict_batch_size: int = 16,
    **train_kwargs: Any,
) -> tuple[pd.DataFrame, list[QCRun]]:
    """The 5-seed protocol of both settings: one model per seed on a fixed split, test predicted.

    The same train/val/test split for every seed, only the seed changes; shared by notebooks 04
    (transfer) and 05 (scratch) and by ``motionqc train-qc``.

    Args:
        setting: ``"transfer"`` (:func:`train_transfer` on embeddings) or ``"scratch"``
            (:func:`train_scratch` on images).
        inputs: Embeddings ``(N, D)`` (transfer) or images ``(N, 1, X, Y, Z)`` (scratch).
        y: QC classes 0/1/2 per volume.
        split: ``"train"``, ``"val"`` or ``"test"`` per volume.
        volume_ids: Volume identifiers (for the prediction table).
        seeds: Seeds, one run each.
        run_root: Folder of the runs (``<setting>_<digest of settings and data>/seed<N>/``);
            ``None`` keeps runs in memory.
        predict_batch_size: Volumes per forward pass when predicting the test split.
        **train_kwargs: Keyword arguments of the training function (``dropout``, ``lr``, ...).

    Returns:
        ``(predictions, runs)``: a long table ``setting, seed, volume_id, y_true, y_pred`` over
        the test volumes (the input of :func:`motionqc.evaluation.qc_metrics.seed_table`) and the runs.

    Raises:
        ValueError: For an unknown setting or an empty split.
    """
    trainers = {"transfer": train_transfer, "scratch": train_scratch}
    if setting not in trainers:
        raise ValueError(f"setting must be 'transfer' or 'scratch', not {setting!r}")
    y = np.asarray(y)
    split = np.asarray(split)
    ids = np.asarray(volume_ids)
    m = {s: split == s for s in ("train", "val", "test")}
    for name, mask in m.items():
        if not mask.any():
            raise ValueError(f"the {name} split is empty")
    preds, runs = [], []
    # Resumable runs are keyed by what determines them (setting, settings, data), so a changed
    # architecture or set starts its own runs instead of resuming another's checkpoint.
    runs_dir = (
        None
        if run_root is None
        else Path(run_root) / _runs_key(setting, inputs, y, split, ids, train_kwargs)
    )
    for seed in seeds:
        run = trainers[setting](
            inputs[m["train"]],
            y[m["train"]],
            inputs[m["val"]],
            y[m["val"]],
            seed,
            run_dir=None if runs_dir is None else runs_dir / f"seed{seed}",
            **train_kwargs,
        )
        proba = predict_classes(run.model, inputs[m["test"]], batch_size=predict_batch_size)
        runs.append(run)
        preds.append(
            pd.DataFrame(
                {
                    "setting": setting,
                    "seed": seed,
                    "volume_id": ids[m["test"]],
                    "y_true": y[m["test"]],
                    "y_pred": proba.argmax(1),
                }
            )
        )
    return pd.concat(preds, ignore_index=True), runs


def run_transfer_seeds(
    z: torch.Tensor,
    y: Sequence[int] | np.ndarray,
    split: Sequence[str] | np.ndarray,
    volume_ids: Sequence[str],
    seeds: Sequence[int],
    *,
    run_root: str | Path | None = None,
    **head: Any,
) -> tuple[pd.DataFrame, list[QCRun]]:
    """Train one transfer head per seed on fixed embeddings: :func:`run_seeds` ``("transfer")``.

    Args:
        z: Embeddings ``(N, D)`` of every volume.
        y: QC classes 0/1/2 per volume.
        split: ``"train"``, ``"val"`` or ``"test"`` per volume.
        volume_ids: Volume identifiers (for the prediction table).
        seeds: Seeds, one run each.
        run_root: Folder for per-seed trainer folders; ``None`` keeps runs in memory.
        **head: Keyword arguments of :func:`train_transfer` (``dropout``, ``lr``, ...).

    Returns:
        ``(predictions, runs)`` as :func:`run_seeds`.
    """
    return run_seeds("transfer", z, y, split, volume_ids, seeds, run_root=run_root, **head)


def run_scratch_seeds(
    images: torch.Tensor,
    y: Sequence[int] | np.ndarray,
    split: Sequence[str] | np.ndarray,
    volume_ids: Sequence[str],
    seeds: Sequence[int],
    *,
    run_root: str | Path | None = None,
    **kwargs: Any,
) -> tuple[pd.DataFrame, list[QCRun]]:
    """Train SFCN from scratch once per seed: :func:`run_seeds` ``("scratch")``.

    Args:
        images: Volumes ``(N, 1, X, Y, Z)``.
        y: QC classes 0/1/2 per volume.
        split: ``"train"``, ``"val"`` or ``"test"`` per volume.
        volume_ids: Volume identifiers (for the prediction table).
        seeds: Seeds, one run each.
        run_root: Folder for per-seed trainer folders; ``None`` keeps runs in memory.
        **kwargs: Keyword arguments of :func:`train_scratch` (``dropout``, ``lr``, ...).

    Returns:
        ``(predictions, runs)`` as :func:`run_seeds`.
    """
    return run_seeds(
        "scratch",
        images,
        y,
        split,
        volume_ids,
        seeds,
        run_root=run_root,
        predict_batch_size=8,
        **kwargs,
    )


def best_run(runs: Sequence[QCRun], monitor: str = "val_balanced_accuracy") -> int:
    """Index of the run with the best validation score (never chosen on the test split).

    Args:
        runs: Runs whose history rows carry ``monitor``.
        monitor: Column to maximise.

    Returns:
        The index of the run whose best epoch scored highest (the first on ties).
    """
    scores = [
        max((float(r[monitor]) for r in run.history if monitor in r), default=-np.inf)
        for run in runs
    ]
    return int(np.argmax(scores))


def check_ratings(table: pd.DataFrame, manifest: str | Path) -> None:
    """Refuse, in one line, ratings a QC head cannot be trained on honestly.

    Args:
        table: The rated rows (``volume_id``, ``path``, ``qc_score``).
        manifest: The manifest's name, for the message.

    Raises:
        ValueError: If fewer than two QC classes are rated, or one file (by path, or by content
            for the files present) appears under two ids: copies of a training file in the test
            split would inflate every metric.
    """
    from motionqc.data.qc_task import qc_class
    from motionqc.data.volumes import file_sha256

    classes = sorted({qc_class(s) for s in table["qc_score"]})
    if len(classes) < 2:
        raise ValueError(
            f"{manifest}: every rated volume is in QC class {classes[0]}; a QC head needs at "
            "least two classes"
        )
    paths_ = table["path"].map(lambda p: str(Path(p).resolve()))
    same = table[paths_.duplicated(keep=False)]
    if len(same):
        raise ValueError(
            f"{manifest}: the same file under several ids: {', '.join(same['volume_id'][:6])}"
        )
    present = [i for i, p in table["path"].items() if Path(p).is_file()]
    digests = pd.Series({i: file_sha256(table.at[i, "path"]) for i in present}, dtype=object)
    copies = digests[digests.duplicated(keep=False)]
    if len(copies):
        ids = table.loc[copies.index, "volume_id"]
        raise ValueError(f"{manifest}: identical files under several ids: {', '.join(ids[:6])}")


def check_split_classes(y: np.ndarray, split: np.ndarray, manifest: str | Path) -> None:
    """Refuse a split in which training sees one class only, or a split is empty (one line)."""
    for name in ("train", "val", "test"):
        if not (split == name).any():
            raise ValueError(f"{manifest}: the {name} split is empty")
    if len(np.unique(y[split == "train"])) < 2:
        raise ValueError(f"{manifest}: the train split holds a single QC class")


def preprocess_rows(
    table: pd.DataFrame, meta: Mapping[str, Any]
) -> tuple[list[torch.Tensor], pd.DataFrame, list[dict[str, str]]]:
    """Preprocess every manifest row's volume for an encoder; list the ones that cannot be used.

    Args:
        table: Rows with ``volume_id`` and ``path``.
        meta: The encoder's metadata (``spacing_mm``, ``shape``).

    Returns:
        ``(images, kept rows (index reset), errors)``; each error is ``{"volume_id", "error"}``
        (the loader's one-line message), and the other rows go on.
    """
    from motionqc.data.volumes import preprocess

    images, keep, errors = [], [], []
    for i, row in table.iterrows():
        try:
            images.append(preprocess(row["path"], meta["spacing_mm"], meta["shape"]).data.float())
            keep.append(i)
        except Exception as exc:  # noqa: BLE001 - report and go on
            errors.append({"volume_id": str(row["volume_id"]), "error": str(exc)})
    return images, table.loc[keep].reset_index(drop=True), errors


def train_qc_cli(
    manifest: str | Path, checkpoint: str | Path, out_dir: str | Path, seeds: int = 5
) -> Path:
    """Train a lab's own QC head from its ratings (``motionqc train-qc``): 5-seed report.

    The manifest needs ``volume_id, subject, path, qc_score`` (and optionally ``split``:
    train/val/test, refused if a subject spans two splits; otherwise a 60/20/20 split **by
    subject**, stratified by class, is drawn with seed 0: :func:`subject_split`), and the split is
    written to ``splits.tsv`` (``volume_id``, ``subject``, ``split``). Volumes are preprocessed with
    the encoder's geometry and embedded once; a head is trained per seed; the per-seed metrics,
    the median table and the head of the seed with the best validation balanced accuracy
    (``qc_head.pt``) are written to ``out_dir``.

    Args:
        manifest: Ratings TSV.
        checkpoint: Encoder file (:func:`motionqc.models.encoder.save_encoder`).
        out_dir: Output folder.
        seeds: Number of seeds.

    Returns:
        The path of ``qc_results.csv``.
    """
    from motionqc.data.qc_task import qc_class
    from motionqc.data.volumes import file_sha256, load_manifest
    from motionqc.evaluation.qc_metrics import median_table, seed_table
    from motionqc.models.encoder import load_encoder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_encoder(checkpoint)
    # Files are checked below, one by one: a missing or unusable file goes to errors.json.
    table = load_manifest(manifest, check_files=False)
    table = table[table["qc_score"].notna()].reset_index(drop=True)
    if len(table) < 10:
        raise ValueError(f"{manifest}: {len(table)} rated volumes; at least 10 are needed")
    check_ratings(table, manifest)
    images, table, errors = preprocess_rows(table, meta)
    y = np.array([qc_class(s) for s in table["qc_score"]])
    split = split_by_subject(table, y, manifest, seed=0)
    check_split_classes(y, split, manifest)
    pd.DataFrame(
        {"volume_id": table["volume_id"], "subject": table["subject"], "split": split}
    ).to_csv(out / "splits.tsv", sep="\t", index=False)
    # Caches and resumable runs are keyed by what determines them: each embedding by its file's
    # content, the runs by every (id, file, rating, split) and the encoder, so changed ratings or
    # files retrain instead of resuming finished runs of other data.
    digests = [file_sha256(p)[:16] for p in table["path"]]
    ids = table["volume_id"].astype(str).tolist()
    z = embed(
        model,
        torch.stack(images),
        [f"{v}@{d}" for v, d in zip(ids, digests, strict=True)],
        cache=out / f"embeddings_{file_digest(checkpoint)}.pt",
        input_intensity=meta["input_intensity"],
    )
    data_key = hashlib.sha256(
        json.dumps(
            {
                "encoder": file_digest(checkpoint),
                "rows": [
                    [v, d, float(q), str(sp)]
                    for v, d, q, sp in zip(ids, digests, table["qc_score"], split, strict=True)
                ],
            }
        ).encode()
    ).hexdigest()[:16]
    predictions, runs = run_transfer_seeds(
        z, y, split, ids, range(seeds), run_root=out / "runs" / data_key
    )
    seeds_df = seed_table(predictions)
    seeds_df.to_csv(out / "qc_results.csv", index=False)
    median_table(seeds_df).to_csv(out / "qc_median.csv", index=False)
    predictions.to_csv(out / "qc_predictions.tsv", sep="\t", index=False)
    best = best_run(runs)  # chosen on validation, never on the test split
    save_qc_head(
        out / "qc_head.pt",
        runs[best],
        checkpoint,
        {"seed": best, "manifest": str(manifest), "pooled": False},
    )
    (out / "errors.json").write_text(json.dumps(errors, indent=1))
    return out / "qc_results.csv"

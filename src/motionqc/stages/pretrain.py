"""Stage of notebook 03 and ``make pretrain``: train the motion encoder, calibrate it, test it.

:func:`run` renders the recipe's motion pool (:mod:`motionqc.training.recipe`; with
``motion="batch"`` only its validation part, the training samples being simulated anew for every
step on the training device), trains the encoder, fits a softmax temperature on validation and
tests the encoder on heads it never saw: each corrupted by **TorchIO's own** ``Motion`` at known
scores, at the head's own resolution, and preprocessed as ``motionqc score`` does. The result
holds every table and figure input of notebook 03.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from motionqc.evaluation.encoder_test import (
    band_table,
    fit_temperature,
    predict_table,
    split_metrics,
    unseen_head_inputs,
)
from motionqc.models.sfcn import SFCN
from motionqc.models.soft_labels import BIN_RANGE, N_BINS, decode, predictive_std
from motionqc.physics.score import SCORE_CONVENTION
from motionqc.synthetic.batch_motion import MotionBatches
from motionqc.synthetic.pool import load_sources, render_pool
from motionqc.training.recipe import RecipeConfig, predict_logits, train, val_inputs
from motionqc.training.reproducibility import kaiming_init, seed_everything

__all__ = ["POOL_ROLE", "ManifestHeads", "PretrainResult", "manifest_heads", "run"]


POOL_ROLE = "synthetic_pool"
"""``role`` of the authors' manifests whose volumes feed synthesis (the synthetic pool)."""


@dataclass
class ManifestHeads:
    """The synthetic pool of a manifest, split by subject (:func:`manifest_heads`).

    Attributes:
        files: ``volume_id`` → resolved NIfTI path, for every usable pool volume.
        train: Volumes whose motion-corrupted copies train the encoder.
        val: Volumes that validate it (the temperature and the validation curve).
        test: Volumes of the unseen-head test (corrupted by TorchIO's ``Motion``).
        table: One row per usable pool volume: ``volume_id``, ``subject``, ``site``, ``split``.
        errors: ``volume_id`` → why the file was left out.
    """

    files: dict[str, Path]
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    table: pd.DataFrame
    errors: dict[str, str]


def manifest_heads(
    manifest: str | Path,
    *,
    data_root: str | Path | None = None,
    best_score: int = 4,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> ManifestHeads:
    """The volumes of a manifest that feed synthesis, split train/val/test by subject.

    With a ``role`` column (the authors' manifests, the stand-in) the pool is the rows of role
    :data:`POOL_ROLE`, as the authors chose them; without one, the rows rated ``best_score``.
    A complete ``split`` column (train/val/test) is used as given — refused if a subject spans
    two splits — otherwise a seeded split by subject is drawn
    (:func:`motionqc.data.splits.split_by_subject`). Relative paths resolve against
    :func:`motionqc.data.authors.manifest_base` (``data_root``, else ``MOTIONQC_DATA_ROOT`` when
    set, else the manifest's folder); a missing
    file is left out and listed in ``errors``.

    Args:
        manifest: The manifest TSV.
        data_root: Folder the relative paths resolve against.
        best_score: QC score of the pool's volumes when there is no ``role`` column.
        seed: Seed of a drawn split.
        fractions: Train, validation and test shares of a drawn split.

    Returns:
        The :class:`ManifestHeads`.

    Raises:
        motionqc.data.volumes.ManifestError: If the manifest is malformed.
        ValueError: If a given split mixes subjects, or a split has no volume.
    """
    from motionqc.data.authors import manifest_base
    from motionqc.data.splits import split_by_subject
    from motionqc.data.volumes import load_manifest

    table = load_manifest(
        manifest, base_dir=manifest_base(data_root), check_files=True, on_error="skip"
    )
    errors = dict(table.attrs.get("errors", {}))
    if "role" in table.columns:
        table = table[table["role"] == POOL_ROLE]
    else:
        table = table[table["qc_score"] == best_score]
    table = table.reset_index(drop=True)
    if table.empty:
        raise ValueError(f"{manifest}: no volume of the synthetic pool")
    split = split_by_subject(
        table, np.zeros(len(table), dtype=int), manifest, fractions=fractions, seed=seed
    )
    out = pd.DataFrame(
        {
            "volume_id": table["volume_id"].astype(str),
            "subject": table["subject"].astype(str),
            "site": table["site"].astype(str),
            "split": split,
        }
    )
    parts = {k: tuple(out.loc[out["split"] == k, "volume_id"]) for k in ("train", "val", "test")}
    empty = [k for k, v in parts.items() if not v]
    if empty:
        raise ValueError(f"{manifest}: no synthetic-pool volume in split(s) {', '.join(empty)}")
    files = {v: Path(p) for v, p in zip(out["volume_id"], table["path"], strict=True)}
    return ManifestHeads(files=files, table=out, errors=errors, **parts)


@dataclass
class PretrainResult:
    """What :func:`run` returns: the trained encoder and every table notebook 03 shows.

    Attributes:
        model: The trained SFCN (eval mode).
        meta: Its geometry, bins, input scaling and temperature (as :func:`motionqc.models.encoder.save_encoder` takes).
        history: One row per validation pass (:func:`motionqc.training.recipe.train`).
        predictions: ``split`` (train subset, val, test), ``head``, ``true``, ``pred``, ``std``.
        test_raw: The test rows before the temperature (for the calibration table).
        metrics: Per split: ``n``, ``r2``, ``spearman``, ``mae``, ``rmse``, coverage.
        bands: Per band of true score on the test heads (:func:`band_table`).
        pool_table: One row per training sample (labels and motion parameters); with
            ``motion="batch"`` (no sample is kept) the rows of the fixed training draw scored
            for the ``train`` row.
        timing_s: ``pool`` (sources + rendering) and ``train`` seconds.
        test_inputs: The preprocessed test volumes, in the order of the test rows.
    """

    model: SFCN
    meta: dict
    history: pd.DataFrame
    predictions: pd.DataFrame
    test_raw: pd.DataFrame
    metrics: pd.DataFrame
    bands: pd.DataFrame
    pool_table: pd.DataFrame
    timing_s: dict
    test_inputs: list


def run(
    config: RecipeConfig,
    files: Mapping[str, str | Path],
    *,
    test_heads: Sequence[str] = ("colin27",),
    cache_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    num_workers: int = 2,
    draws: int = 4,
    train_eval: int = 192,
    log: bool = True,
    device: str = "cpu",
    test_grid_mm: float | None = None,
) -> PretrainResult:
    """Train, calibrate and test the motion encoder of a recipe.

    Args:
        config: The recipe (:data:`motionqc.training.recipe.RECIPES`).
        files: Head id → NIfTI file (training and test heads).
        test_heads: Heads never used in training: the unseen-head test.
        cache_dir: Folder of the motion pool's chunks (``None``: nothing cached).
        run_dir: Folder of the training checkpoint (resumable; ``None``: none).
        num_workers: Rendering processes.
        draws: TorchIO motions per test score and head.
        train_eval: Training samples scored for the ``train`` row (a seeded subset).
        log: Print one line per validation pass.
        device: Where the encoder trains (the test and the returned model are on the CPU).
        test_grid_mm: Put each test head on an isotropic grid of this voxel size before its
            motion (the corpus's 2 mm heads go on 1 mm, as acquired); ``None``: its own voxels.

    Returns:
        The :class:`PretrainResult`.

    Raises:
        ValueError: If a test head is also a training head or has no file.
    """
    overlap = sorted(set(test_heads) & {*config.train_heads, *config.val_heads})
    if overlap:
        raise ValueError(f"test head(s) also used for training: {', '.join(overlap)}")
    missing = sorted(set(test_heads) - set(files))
    if missing:
        raise ValueError(f"no file for test head(s): {', '.join(missing)}")
    seed_everything(config.seed)
    t0 = time.perf_counter()
    sources = load_sources(files, config)
    val = render_pool(
        sources,
        config,
        "val",
        config.val_size,
        cache_dir=cache_dir,
        num_workers=num_workers,
        progress=log,
    )
    if config.motion == "batch":  # new samples every step, their motion simulated on `device`
        feed: tuple[torch.Tensor, torch.Tensor] | MotionBatches = MotionBatches(
            sources, config, device=device
        )
    else:
        pool = render_pool(
            sources,
            config,
            "train",
            config.pool_size,
            cache_dir=cache_dir,
            num_workers=num_workers,
            progress=log,
        )
        del sources
        feed = (pool[0], torch.tensor(pool[1]["label"].to_numpy(), dtype=torch.float32))
    pool_s = time.perf_counter() - t0
    y_val = torch.tensor(val[1]["label"].to_numpy(), dtype=torch.float32)
    model = kaiming_init(
        SFCN(
            n_outputs=N_BINS,
            channels=config.channels,
            dropout=config.dropout,
            unshuffle=config.unshuffle,
            in_channels=config.in_channels,
            detail_norm=config.detail_norm,
        )
    )
    t1 = time.perf_counter()
    history = train(
        model,
        feed,
        (val[0], y_val),
        config,
        Path(run_dir) if run_dir is not None else None,
        log=log,
        device=device,
    )
    model.to("cpu")
    train_s = time.perf_counter() - t1
    val_out = predict_logits(model, val_inputs(val[0], config))
    temperature = fit_temperature(val_out, y_val)
    if isinstance(feed, MotionBatches):  # the fit on training data: a fixed draw of new samples
        seen_x, pool_table = feed.fixed(train_eval)
        seen = pool_table
        del feed, sources
    else:
        pick = np.sort(
            np.random.default_rng(config.seed).choice(
                len(feed[1]), min(train_eval, len(feed[1])), replace=False
            )
        )
        seen_x, pool_table = feed[0][pick], pool[1]
        seen = pool_table.iloc[pick]
        del pool, feed
    y_seen = torch.tensor(seen["label"].to_numpy(), dtype=torch.float32)
    train_out = predict_logits(model, val_inputs(seen_x, config))
    meta = {
        "spacing_mm": config.spacing_mm,
        "shape": tuple(config.shape),
        "bin_range": tuple(BIN_RANGE),
        "input_intensity": "percentile",
        "temperature": temperature,
        "score_convention": SCORE_CONVENTION.as_dict(),
        "detail_mm": config.detail_mm,
    }
    tested = {h: files[h] for h in test_heads}
    rows, test_inputs = unseen_head_inputs(
        meta, tested, draws=draws, seed=config.seed + 12345, grid_mm=test_grid_mm
    )
    test = predict_table(model, meta, rows, test_inputs)
    raw = predict_table(model, meta | {"temperature": 1.0}, rows, test_inputs)
    parts = []
    for split, out, truth, heads in (
        ("train", train_out, y_seen, seen["head"].to_numpy()),
        ("val", val_out, y_val, val[1]["head"].to_numpy()),
    ):
        tempered = out / temperature
        parts.append(
            pd.DataFrame(
                {
                    "split": split,
                    "head": heads,
                    "true": truth.numpy(),
                    "pred": decode(tempered, BIN_RANGE).numpy(),
                    "std": predictive_std(tempered, BIN_RANGE).numpy(),
                }
            )
        )
    parts.append(test.assign(split="test")[["split", "head", "true", "pred", "std"]])
    predictions = pd.concat(parts, ignore_index=True)
    metrics = pd.DataFrame(
        [
            {"split": s, **split_metrics(predictions[predictions["split"] == s])}
            for s in ("train", "val", "test")
        ]
    )
    model.eval()
    return PretrainResult(
        model=model,
        meta=meta,
        history=history,
        predictions=predictions,
        test_raw=raw,
        metrics=metrics,
        bands=band_table(test),
        pool_table=pool_table,
        timing_s={"pool": pool_s, "train": train_s},
        test_inputs=test_inputs,
    )

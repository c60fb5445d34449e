"""QC training over seeds: the transfer head and the scratch SFCN, resumable, keyed by their inputs.

:func:`run_transfer_seeds` and :func:`run_scratch_seeds` train one model per seed
(:func:`motionqc.training.transfer.train_transfer`, :func:`~motionqc.training.transfer.train_scratch`),
reading back runs whose inputs and settings are unchanged; :func:`best_run` picks the seed the
saved head comes from.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from motionqc.training.transfer import QCRun, predict_classes, qc_setting, train_qc

__all__ = ["best_run", "run_scratch_seeds", "run_seeds", "run_transfer_seeds"]


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
    qc_setting(setting)  # an unknown setting fails before any work
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
        run = train_qc(
            setting,
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


run_transfer_seeds = functools.partial(run_seeds, "transfer")
run_transfer_seeds.__doc__ = """Train one transfer head per seed on fixed embeddings ``z`` ``(N, D)``.

``run_transfer_seeds(z, y, split, volume_ids, seeds, *, run_root=None, **head)`` is
:func:`run_seeds` with ``setting="transfer"``; ``**head`` goes to
:func:`motionqc.training.transfer.train_transfer` (``dropout``, ``lr``, ...).
"""

run_scratch_seeds = functools.partial(run_seeds, "scratch", predict_batch_size=8)
run_scratch_seeds.__doc__ = """Train SFCN from scratch once per seed on ``images`` ``(N, 1, X, Y, Z)``.

``run_scratch_seeds(images, y, split, volume_ids, seeds, *, run_root=None, **kwargs)`` is
:func:`run_seeds` with ``setting="scratch"`` and 8 test volumes per forward pass; ``**kwargs``
goes to :func:`motionqc.training.transfer.train_scratch` (``dropout``, ``lr``, ...).
"""


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

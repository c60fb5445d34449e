"""QC-task metrics and their aggregation over seeds: the same code scores the authors' and our runs.

A *predictions* table has one row per (setting, seed, test volume) with columns ``setting``,
``seed``, ``y_true`` and ``y_pred`` (classes 0 = QC 1/2, 1 = QC 3, 2 = QC 4) and, for the paired
bootstrap, ``volume_id``. The poster reports, per setting, the **per-column median over seeds** of
balanced accuracy and per-class F1 (not one seed's row); :func:`median_table` does exactly that.
:func:`recompute_poster` applies it to the authors' published predictions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from motionqc import paths
from motionqc.evaluation.poster import authors_table
from motionqc.qc_task import QC_CLASS_IDS

__all__ = [
    "QC_LABELS",
    "METRIC_COLUMNS",
    "qc_metrics",
    "seed_table",
    "median_table",
    "summed_confusion",
    "bootstrap_difference",
    "authors_predictions",
    "authors_seed_table",
    "recompute_poster",
    "write_poster_recomputed",
]

QC_LABELS: tuple[int, ...] = QC_CLASS_IDS
"""The transfer task's classes (:data:`motionqc.qc_task.QC_CLASS_IDS`)."""

METRIC_COLUMNS: tuple[str, ...] = ("balanced_accuracy", "f1_c0", "f1_c1", "f1_c2")
"""The poster's QC result columns, in its order."""

_AUTHORS_PREDICTIONS = {"identifier": "volume_id", "label": "y_true", "pred": "y_pred"}
_AUTHORS_METRICS = {"f1_0": "f1_c0", "f1_1": "f1_c1", "f1_2": "f1_c2"}


def qc_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """Balanced accuracy and per-class F1 of one set of predictions (scikit-learn).

    Args:
        y_true: True classes (0, 1, 2).
        y_pred: Predicted classes.

    Returns:
        ``balanced_accuracy``, ``f1_c0``, ``f1_c1``, ``f1_c2`` (F1 with labels 0, 1, 2 and
        ``zero_division=0``; balanced accuracy is the mean recall over the classes present).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    f1 = f1_score(y_true, y_pred, labels=list(QC_LABELS), average=None, zero_division=0)
    with warnings.catch_warnings():  # a class absent from a small split is expected, not news
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        out = {"balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))}
    out.update({f"f1_c{c}": float(v) for c, v in zip(QC_LABELS, f1, strict=True)})
    return out


def seed_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Score every (setting, seed) of a predictions table.

    Args:
        predictions: Columns ``setting``, ``seed``, ``y_true``, ``y_pred``.

    Returns:
        One row per (setting, seed) in order of first appearance; columns ``setting``, ``seed``
        and :data:`METRIC_COLUMNS`.
    """
    rows = [
        {"setting": setting, "seed": seed, **qc_metrics(group["y_true"], group["y_pred"])}
        for (setting, seed), group in predictions.groupby(["setting", "seed"], sort=False)
    ]
    return pd.DataFrame(rows, columns=["setting", "seed", *METRIC_COLUMNS])


def median_table(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per-setting, per-column median over seeds (the poster's aggregation).

    Each column's median is taken on its own, so a row need not be any single seed's row.

    Args:
        seeds: Output of :func:`seed_table`.

    Returns:
        One row per setting (order of first appearance): ``setting`` and :data:`METRIC_COLUMNS`.
    """
    medians = seeds.groupby("setting", sort=False)[list(METRIC_COLUMNS)].median()
    return medians.reset_index()


def summed_confusion(predictions: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Confusion matrix of one setting, summed over its seeds.

    Args:
        predictions: Columns ``setting``, ``seed``, ``y_true``, ``y_pred``.
        setting: The setting to count.

    Returns:
        Counts with rows = true class and columns = predicted class (0, 1, 2).

    Raises:
        ValueError: If the setting has no predictions.
    """
    rows = predictions[predictions["setting"] == setting]
    if rows.empty:
        raise ValueError(f"no predictions for setting {setting!r}")
    counts = confusion_matrix(rows["y_true"], rows["y_pred"], labels=list(QC_LABELS))
    return pd.DataFrame(
        counts,
        index=pd.Index(QC_LABELS, name="true"),
        columns=pd.Index(QC_LABELS, name="predicted"),
    )


def _prediction_matrix(predictions: pd.DataFrame, setting: str) -> pd.DataFrame:
    rows = predictions[predictions["setting"] == setting]
    if rows.empty:
        raise ValueError(f"no predictions for setting {setting!r}")
    if rows.duplicated(["seed", "volume_id"]).any():
        raise ValueError(f"setting {setting!r}: a volume is predicted twice for one seed")
    return rows.pivot(index="volume_id", columns="seed", values="y_pred")


def _median_balanced_accuracy(
    weights: np.ndarray, truth: np.ndarray, preds: np.ndarray
) -> np.ndarray:
    """Median over seeds of balanced accuracy, for each row of volume weights (resample counts)."""
    recalls = []
    for c in QC_LABELS:
        is_c = truth == c
        total = weights @ is_c.astype(float)  # (n_boot,)
        hits = weights @ (is_c[:, None] & (preds == c)).astype(float)  # (n_boot, n_seeds)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(total[:, None] > 0, hits / total[:, None], np.nan))
    # as scikit-learn: mean recall over the classes present in the (resampled) truth
    return np.median(np.nanmean(np.stack(recalls), axis=0), axis=1)


def bootstrap_difference(
    predictions: pd.DataFrame,
    a: str = "transfer",
    b: str = "scratch",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Paired bootstrap of the difference in median-over-seeds balanced accuracy, ``a − b``.

    Test volumes are resampled with replacement; each resample is applied to both settings and
    every seed (paired), and the statistic is recomputed exactly as the poster's: the median over
    seeds of each setting's balanced accuracy, then ``a − b``.

    Args:
        predictions: Columns ``setting``, ``seed``, ``volume_id``, ``y_true``, ``y_pred``; both
            settings must predict the same volumes with the same true classes.
        a: First setting.
        b: Second setting.
        n_boot: Number of resamples.
        seed: Seed of the resampling.
        level: Confidence level of the percentile interval.

    Returns:
        ``estimate`` (on the data), ``ci_low`` and ``ci_high`` (percentile interval),
        ``p_le_0`` (share of resamples with a difference ≤ 0), ``se`` (bootstrap standard
        error), ``n_boot``, ``n_volumes``, ``level``.

    Raises:
        ValueError: If a setting is missing, the settings' volumes or true classes differ, or a
            volume is predicted twice for one seed.
    """
    pa, pb = _prediction_matrix(predictions, a), _prediction_matrix(predictions, b)
    if set(pa.index) != set(pb.index):
        raise ValueError(f"settings {a!r} and {b!r} predict different volumes: cannot pair them")
    if pa.isna().any().any() or pb.isna().any().any():
        raise ValueError("every seed must predict every test volume")
    pb = pb.loc[pa.index]
    truth = predictions.groupby("volume_id")["y_true"].agg(["nunique", "first"]).loc[pa.index]
    if (truth["nunique"] > 1).any():
        raise ValueError("a volume has two different true classes")
    y = truth["first"].to_numpy()
    xa, xb = pa.to_numpy(), pb.to_numpy()
    n = len(y)

    ones = np.ones((1, n))
    estimate = float(
        _median_balanced_accuracy(ones, y, xa)[0] - _median_balanced_accuracy(ones, y, xb)[0]
    )
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.arange(n_boot)[:, None], draws), 1.0)
    diffs = _median_balanced_accuracy(weights, y, xa) - _median_balanced_accuracy(weights, y, xb)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return {
        "estimate": estimate,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_le_0": float((diffs <= 0).mean()),
        "se": float(diffs.std(ddof=1)),
        "n_boot": int(n_boot),
        "n_volumes": int(n),
        "level": float(level),
    }


def authors_predictions() -> pd.DataFrame:
    """The authors' per-seed test predictions in predictions layout.

    Returns:
        Columns ``setting``, ``seed``, ``volume_id``, ``y_true``, ``y_pred`` (2,240 rows:
        transfer and scratch, seeds 1–5, 224 test volumes).
    """
    table = authors_table("qc_test_predictions").rename(columns=_AUTHORS_PREDICTIONS)
    return table[["setting", "seed", "volume_id", "y_true", "y_pred"]]


def authors_seed_table() -> pd.DataFrame:
    """The authors' own per-seed metrics (``qc_seed_metrics.tsv``) with this module's columns.

    Returns:
        Columns ``setting``, ``seed`` and :data:`METRIC_COLUMNS`.
    """
    table = authors_table("qc_seed_metrics").rename(columns=_AUTHORS_METRICS)
    return table[["setting", "seed", *METRIC_COLUMNS]]


def recompute_poster() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recompute the poster's QC table from the authors' published predictions.

    Returns:
        ``(seeds, medians)``: :func:`seed_table` and :func:`median_table` of
        :func:`authors_predictions`.
    """
    seeds = seed_table(authors_predictions())
    return seeds, median_table(seeds)


def write_poster_recomputed(path: str | Path | None = None) -> Path:
    """Write the recomputed poster QC table (medians over seeds) as CSV.

    Args:
        path: Destination (default: ``poster_qc_recomputed.csv`` in ``paths.tables_dir()``).

    Returns:
        The written file; columns ``setting`` and :data:`METRIC_COLUMNS`, full precision.
    """
    target = Path(path) if path is not None else paths.tables_dir() / "poster_qc_recomputed.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    recompute_poster()[1].to_csv(target, index=False, lineterminator="\n")
    return target

"""Deterministic splits: sites reserved for synthesis vs transfer, and subject-level splits.

The poster reserves whole acquisition sites: 26 AMPSCZ sites feed the synthetic pool (only their
best-rated volumes are corrupted), 7 other sites form the transfer (QC) set. Within a role,
volumes are split into train/val/test by subject, so no subject appears in two splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from motionqc.qc_task import CLASS_LABELS, QC_CLASSES

__all__ = [
    "CLASS_LABELS",
    "check_subject_split",
    "qc_split_table",
    "site_split",
    "split_by_group",
    "split_by_subject",
    "stratified_split",
    "subject_split",
]


def site_split(
    manifest: pd.DataFrame,
    synthetic_sites: Iterable[str] | None = None,
    n_synthetic_sites: int | None = None,
    best_score: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    """Assign every volume a role from its site.

    Args:
        manifest: A manifest with ``site`` and ``qc_score`` columns.
        synthetic_sites: Sites reserved for the synthetic pool; the others are transfer sites.
        n_synthetic_sites: Instead of naming them, draw this many synthetic sites (seeded).
        best_score: Only volumes with this QC score feed synthesis (the poster: 4).
        seed: Seed of the site draw.

    Returns:
        A copy with ``site_role`` (``pretrain``/``finetune``) and ``role``:
        ``synthetic_pool`` (best-rated, synthetic site), ``transfer`` (transfer site, rated),
        or ``unused``.

    Raises:
        ValueError: If neither or both site arguments are given, a named site is absent, or
            ``n_synthetic_sites`` exceeds the number of sites.
    """
    if (synthetic_sites is None) == (n_synthetic_sites is None):
        raise ValueError("give exactly one of synthetic_sites or n_synthetic_sites")
    sites = sorted(manifest["site"].astype(str).unique())
    if synthetic_sites is not None:
        chosen = set(map(str, synthetic_sites))
        absent = sorted(chosen - set(sites))
        if absent:
            raise ValueError(f"synthetic site(s) not in the manifest: {', '.join(absent)}")
    else:
        if not 0 <= n_synthetic_sites <= len(sites):
            raise ValueError(
                f"n_synthetic_sites={n_synthetic_sites} but the manifest has {len(sites)} sites"
            )
        rng = np.random.default_rng(seed)
        chosen = set(rng.choice(sites, size=n_synthetic_sites, replace=False).tolist())
    out = manifest.copy()
    is_synth_site = out["site"].astype(str).isin(chosen)
    score = pd.to_numeric(out["qc_score"], errors="coerce")
    out["site_role"] = np.where(is_synth_site, "pretrain", "finetune")
    out["role"] = "unused"
    out.loc[is_synth_site & (score == best_score), "role"] = "synthetic_pool"
    out.loc[~is_synth_site & score.notna(), "role"] = "transfer"
    return out


def split_by_group(
    manifest: pd.DataFrame,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    names: Sequence[str] = ("train", "val", "test"),
    group: str = "subject",
    seed: int = 0,
) -> pd.Series:
    """Split volumes by group (subject by default) so that no group spans two splits.

    Groups are shuffled with ``seed`` and assigned greedily so each split's volume count is as
    close as possible to its fraction.

    Args:
        manifest: A manifest.
        fractions: Fraction of volumes per split (normalised to sum to 1).
        names: Split names, one per fraction.
        group: Column whose values must not be shared between splits.
        seed: Seed of the shuffle.

    Returns:
        The split name of every row, indexed like ``manifest``.

    Raises:
        ValueError: If fractions and names differ in length or a fraction is negative.
    """
    if len(fractions) != len(names) or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError("fractions must be non-negative, one per split name, and not all zero")
    target = np.asarray(fractions, dtype=float) / float(sum(fractions)) * len(manifest)
    sizes = manifest.groupby(group, sort=True).size()
    order = np.random.default_rng(seed).permutation(len(sizes))
    filled = np.zeros(len(names))
    assignment: dict[object, str] = {}
    for i in order:
        key, n = sizes.index[i], sizes.iloc[i]
        k = int(np.argmax(target - filled))  # the split furthest below its target
        assignment[key] = names[k]
        filled[k] += n
    return manifest[group].map(assignment).rename("split")


def qc_split_table(
    manifest: pd.DataFrame,
    split: str = "split",
    score: str = "qc_score",
    order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Count volumes per split and QC class, in the poster's "data split for QC task" layout.

    Args:
        manifest: Rows with a split column and a QC score (1–4).
        split: Split column.
        score: QC score column; rows without a score are ignored.
        order: Row order (default: as first seen).

    Returns:
        One row per split, columns ``1/2``, ``3``, ``4`` and ``total``.
    """
    rated = manifest[pd.to_numeric(manifest[score], errors="coerce").isin(list(QC_CLASSES))]
    classes = rated[score].astype(int).map(QC_CLASSES).map(dict(enumerate(CLASS_LABELS)))
    table = pd.crosstab(rated[split], classes).reindex(columns=list(CLASS_LABELS), fill_value=0)
    table = table.reindex(
        list(order) if order is not None else list(dict.fromkeys(rated[split])), fill_value=0
    )
    table["total"] = table.sum(axis=1)
    table.index.name = "split"
    table.columns.name = None
    return table


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

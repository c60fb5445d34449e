"""Deterministic splits: sites reserved for synthesis vs transfer, and subject-level splits.

The poster reserves whole acquisition sites: 26 AMPSCZ sites feed the synthetic pool (only their
best-rated volumes are corrupted), 7 other sites form the transfer (QC) set. Within a role,
volumes are split into train/val/test by subject, so no subject appears in two splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from motionqc.data.qc_task import CLASS_LABELS, QC_CLASSES

__all__ = ["site_split", "split_by_group", "qc_split_table", "CLASS_LABELS"]

"""Column labels of the three QC classes, as the poster prints them."""


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

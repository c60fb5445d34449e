"""Stage of notebooks 04–05 on a user's data: the QC set of a manifest's own ratings.

:func:`manifest_qc_set` turns a manifest (a lab's ratings, MR-ART built by
:func:`motionqc.data.bids.manifest_from_mrart`, or the authors' manifests joined to
``MOTIONQC_DATA_ROOT``) into what notebooks 04 and 05 train on: every rated volume preprocessed for
the encoder, its QC class, and a split **by subject**.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from motionqc.data.authors import manifest_base
from motionqc.data.detail import preprocess_rows
from motionqc.data.splits import split_by_subject
from motionqc.data.volumes import load_manifest
from motionqc.qc_task import qc_class

__all__ = ["TRANSFER_ROLES", "manifest_qc_set"]

TRANSFER_ROLES = ("transfer", "transfer_test_added")
"""``role`` values of the authors' manifests that belong to the QC (transfer) task."""


def manifest_qc_set(
    manifest: str | Path,
    meta: Mapping[str, object],
    *,
    data_root: str | Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    drop_shared_subjects: bool = False,
) -> tuple[torch.Tensor, pd.DataFrame, list[dict[str, str]]]:
    """The rated volumes of a manifest, preprocessed for an encoder and split by subject.

    Rows without a ``qc_score`` are left out; with a ``role`` column (the authors' manifests),
    only the QC task's roles (:data:`TRANSFER_ROLES`) are kept. A complete ``split`` column
    (train/val/test) is used as given — refused if a subject spans two splits, or, with
    ``drop_shared_subjects``, such a subject keeps only its volumes of the first of train, val,
    test it appears in (the others are listed in the errors: the authors' split is by volume, and
    some of its subjects have a later session in the added test set) — otherwise a split by subject
    is drawn (:func:`motionqc.data.splits.split_by_subject`). Relative paths resolve against
    :func:`motionqc.data.authors.manifest_base` (``data_root``, else ``MOTIONQC_DATA_ROOT`` when it is
    set, else the manifest's folder).
    A file that cannot be used is listed in the returned errors and left out.

    Args:
        manifest: The manifest TSV.
        meta: The encoder's metadata (``spacing_mm``, ``shape``).
        data_root: Folder the relative paths resolve against.
        seed: Seed of the drawn split.
        fractions: Train, validation and test shares of a drawn split.
        drop_shared_subjects: Drop a shared subject's later-split volumes instead of refusing.

    Returns:
        ``(images (N, 1, X, Y, Z), table, errors)``; the table has ``volume_id``, ``subject``,
        ``site``, ``split``, ``qc_score`` and ``qc_class`` (0: rated 1–2, 1: 3, 2: 4).

    Raises:
        motionqc.data.volumes.ManifestError: If the manifest is malformed.
        ValueError: If fewer than 10 rated volumes remain, or a given split mixes subjects.
    """
    table = load_manifest(manifest, base_dir=manifest_base(data_root), check_files=False)
    table = table[table["qc_score"].notna()]
    if "role" in table.columns:
        table = table[table["role"].isin(TRANSFER_ROLES)]
    table = table.reset_index(drop=True)
    shared: list[dict[str, str]] = []
    if drop_shared_subjects and "split" in table.columns:
        rank = table["split"].map({"train": 0, "val": 1, "test": 2})
        if rank.notna().all():
            first = rank.groupby(table["subject"].astype(str)).transform("min")
            later = rank > first
            names = {0: "train", 1: "val"}
            shared = [
                {
                    "volume_id": str(r.volume_id),
                    "error": f"left out: subject {r.subject} is also in {names[int(f)]}",
                }
                for r, f in zip(table[later].itertuples(), first[later], strict=True)
            ]
            table = table[~later].reset_index(drop=True)
    images, table, errors = preprocess_rows(table, meta)
    errors = shared + errors
    if len(table) < 10:
        raise ValueError(f"{manifest}: {len(table)} usable rated volumes; at least 10 are needed")
    y = np.array([qc_class(s) for s in table["qc_score"]])
    split = split_by_subject(table, y, manifest, fractions=fractions, seed=seed)
    out = pd.DataFrame(
        {
            "volume_id": table["volume_id"].astype(str),
            "subject": table["subject"].astype(str),
            "site": table["site"].astype(str),
            "split": split,
            "qc_score": table["qc_score"].astype(int),
            "qc_class": y,
        }
    )
    return torch.stack(images), out, errors

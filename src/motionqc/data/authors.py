"""The poster's datasets (AMPSCZ, HCP-EP) as motionqc manifests, on exactly the authors' split.

The authors published their volume lists (subject, session, site, QC rating, role, split and the
Clinica ``t1-linear`` output name); :func:`motionqc.evaluation.poster.authors_table` reads them. This module
turns them into the committed manifests ``data_manifest/ampscz.tsv`` and ``data_manifest/hcpep.tsv``
(``python -m motionqc.data.authors`` rebuilds them) and resolves a manifest against the folder where a
data holder keeps the authors' preprocessed images (``root`` or ``MOTIONQC_DATA_ROOT``), reporting
every missing file in one summary.

The images are NDA-restricted, so ``sha256`` is empty (``load_manifest`` skips empty checksums)
and ``path`` is relative to the data root, e.g.
``AMPSCZ-Preproc/subjects/sub-X/ses-Y/t1_linear/sub-X_ses-Y_..._T1w.nii.gz``.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from motionqc import paths
from motionqc.data.volumes import ManifestError, file_sha256, load_manifest
from motionqc.evaluation.poster import authors_manifest, authors_table
from motionqc.qc_task import CLASS_LABELS, QC_CLASSES

__all__ = [
    "DATA_ROOT_ENV",
    "PAPER_DATASETS",
    "MANIFEST_COLUMNS",
    "build_paper_manifest",
    "write_paper_manifests",
    "read_paper_manifest",
    "role_split_table",
    "data_root",
    "manifest_base",
    "resolve_paper_manifest",
    "main",
]

DATA_ROOT_ENV = "MOTIONQC_DATA_ROOT"
"""Environment variable naming the folder that holds ``AMPSCZ-Preproc/`` and ``HCPEP-Preproc/``."""

PAPER_DATASETS: dict[str, str] = {"ampscz": "AMPSCZ", "hcpep": "HCPEP"}
"""Manifest name (authors' table and ``data_manifest/<name>.tsv``) → ``dataset`` value."""

MANIFEST_COLUMNS: tuple[str, ...] = (
    "volume_id",
    "dataset",
    "site",
    "subject",
    "session",
    "path",
    "qc_score",
    "qc_rating",
    "role",
    "split",
    "site_role",
    "licence",
    "sha256",
)
"""Columns of the committed paper manifests (a superset of ``data.REQUIRED_COLUMNS``)."""

_LICENCE = "restricted: NIMH Data Archive (NDA) data use certification; images not redistributed"
_N_LISTED = 5  # missing files named in a summary


def build_paper_manifest(name: str) -> pd.DataFrame:
    """Build one poster dataset's manifest from the authors' table.

    ``qc_score`` holds the authors' rating where it is an integer on the 1–4 scale and is empty
    otherwise (AMPSCZ: one volume rated 5; HCP-EP: half-point ratings 2.5 and 3.5);
    ``qc_rating`` keeps every rating as published. A volume the authors list twice (HCP-EP
    ``4097_1``, rated 3.5 and 4, both in the pool's train split) keeps both rows, as their pool
    used it, the repeat's id suffixed ``_dup1``: the pool has 143 rows but 142 distinct files.

    Args:
        name: ``"ampscz"`` or ``"hcpep"``.

    Returns:
        The manifest, columns :data:`MANIFEST_COLUMNS`, rows in the authors' order.

    Raises:
        ValueError: If the name is not one of :data:`PAPER_DATASETS`.
    """
    if name not in PAPER_DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(PAPER_DATASETS)}")
    table = authors_table(name)
    cohort = authors_manifest()
    df = cohort[cohort["dataset"] == PAPER_DATASETS[name]].reset_index(drop=True)
    repeat = df.groupby("volume_id").cumcount()  # HCP-EP lists sub-4097 ses-1 twice
    df["volume_id"] = df["volume_id"].where(
        repeat == 0, df["volume_id"] + "_dup" + repeat.astype(str)
    )
    rating = pd.to_numeric(table["qc_score"])
    df["session"] = table["session"].astype(str)
    df["qc_score"] = rating.where(rating.isin(list(QC_CLASSES))).astype("Int64")
    df["qc_rating"] = rating.map(lambda v: "" if pd.isna(v) else f"{v:g}")
    if name == "ampscz":
        sites = authors_table("ampscz_sites").set_index("site")["role"]
        df["site_role"] = df["site"].map(sites).fillna("")
    else:  # every HCP-EP volume the authors list is in the synthetic pool
        df["site_role"] = "pretrain"
    df["licence"] = _LICENCE
    df["sha256"] = ""
    return df[list(MANIFEST_COLUMNS)]


def write_paper_manifests(out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``ampscz.tsv`` and ``hcpep.tsv`` (tab-separated, empty cells for missing values).

    Args:
        out_dir: Destination folder (default: the committed ``data_manifest/``).

    Returns:
        Manifest name → written file.
    """
    folder = Path(out_dir) if out_dir is not None else paths.manifest_dir()
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in PAPER_DATASETS:
        target = folder / f"{name}.tsv"
        build_paper_manifest(name).to_csv(target, sep="\t", index=False, lineterminator="\n")
        written[name] = target
    return written


def read_paper_manifest(name: str) -> pd.DataFrame:
    """Read a committed paper manifest, validated by ``load_manifest`` but without images.

    Args:
        name: ``"ampscz"`` or ``"hcpep"``.

    Returns:
        The manifest with ``path`` kept relative to the data root (the images are not needed)
        and ``qc_score`` as ``Int64``.

    Raises:
        ValueError: If the name is not one of :data:`PAPER_DATASETS`.
        ManifestError: If the committed manifest is malformed.
    """
    if name not in PAPER_DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(PAPER_DATASETS)}")
    tsv = paths.manifest_dir() / f"{name}.tsv"
    df = load_manifest(tsv, check_files=False)
    df["path"] = pd.read_csv(tsv, sep="\t", dtype=str, usecols=["path"])["path"].to_numpy()
    return df


def role_split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Count volumes, sites and QC classes per dataset, role and split.

    Args:
        manifest: A manifest with ``dataset``, ``role``, ``split``, ``site`` and ``qc_score``.

    Returns:
        One row per (dataset, role, split) in order of first appearance; columns ``volumes``,
        ``sites``, the QC classes ``1/2``, ``3``, ``4`` and ``unrated`` (no score on the 1–4 scale).
    """
    score = pd.to_numeric(manifest["qc_score"], errors="coerce")
    qc = score.map(lambda s: CLASS_LABELS[QC_CLASSES[int(s)]] if s in QC_CLASSES else "unrated")
    keys = ["dataset", "role", "split"]
    grouped = manifest.assign(qc=qc).groupby(keys, sort=False)
    table = pd.concat(
        [grouped.size().rename("volumes"), grouped["site"].nunique().rename("sites")], axis=1
    )
    classes = pd.crosstab([manifest[k] for k in keys], qc)
    classes = classes.reindex(columns=[*CLASS_LABELS, "unrated"], fill_value=0)
    table = table.join(classes).fillna(0).astype(int)
    table.columns.name = None
    return table


def data_root(root: str | Path | None = None) -> Path:
    """Return the folder holding the authors' preprocessed images.

    Args:
        root: The folder; ``None`` reads :data:`DATA_ROOT_ENV` (``MOTIONQC_DATA_ROOT``).

    Returns:
        The folder as an absolute path.

    Raises:
        ManifestError: If neither is set or the folder does not exist.
    """
    value = root if root is not None else os.environ.get(DATA_ROOT_ENV, "").strip()
    if not value:
        raise ManifestError(
            f"no data root: pass root= or set {DATA_ROOT_ENV} to the folder holding "
            "AMPSCZ-Preproc/ and HCPEP-Preproc/ (the authors' Clinica t1-linear outputs)"
        )
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise ManifestError(f"data root {folder} is not a folder")
    return folder


def manifest_base(root: str | Path | None = None) -> Path | None:
    """Folder a manifest's relative paths resolve against, when one is named.

    Args:
        root: The folder; ``None`` reads :data:`DATA_ROOT_ENV` (``MOTIONQC_DATA_ROOT``).

    Returns:
        ``root``, else the variable's folder when it is set, else ``None``
        (:func:`motionqc.data.volumes.load_manifest` then resolves against the manifest's own folder).
    """
    value = root if root not in (None, "") else os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value).expanduser() if value else None


def resolve_paper_manifest(
    manifest_path: str | Path,
    root: str | Path | None = None,
    on_missing: str = "raise",
    verify_checksums: bool = False,
) -> pd.DataFrame:
    """Load a paper manifest with its paths joined to the user's data root.

    Every missing file is counted and reported in one message (count and the first few files),
    instead of one error per file.

    Args:
        manifest_path: A manifest such as ``data_manifest/ampscz.tsv``.
        root: Folder the relative paths resolve against; ``None`` reads ``MOTIONQC_DATA_ROOT``.
        on_missing: ``"raise"`` raises one ``ManifestError`` if any file is missing; ``"skip"``
            warns once and keeps the volumes that are present.
        verify_checksums: Check the SHA-256 of the present files whose ``sha256`` is filled
            (empty checksums, as for restricted data, are skipped).

    Returns:
        The manifest with absolute paths; ``attrs["missing"]`` lists the volume ids left out and
        ``attrs["missing_summary"]`` the message ("" when nothing is missing).

    Raises:
        ManifestError: If there is no data root, the manifest is malformed, a checksum differs,
            or (with ``on_missing="raise"``) any file is missing.
        ValueError: If ``on_missing`` is not ``"raise"`` or ``"skip"``.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', not {on_missing!r}")
    folder = data_root(root)
    df = load_manifest(manifest_path, base_dir=folder, check_files=False)
    present = df["path"].map(lambda p: Path(p).is_file())
    missing = df.loc[~present]
    summary = ""
    if len(missing):
        first = [Path(p) for p in missing["path"].iloc[:_N_LISTED]]
        listed = ", ".join(
            str(p.relative_to(folder) if p.is_relative_to(folder) else p) for p in first
        )
        more = ", …" if len(missing) > _N_LISTED else ""
        summary = (
            f"{manifest_path}: {len(missing)} of {len(df)} files missing under {folder} "
            f"(first {min(len(missing), _N_LISTED)}: {listed}{more})"
        )
        if on_missing == "raise":
            raise ManifestError(summary)
        warnings.warn(summary, stacklevel=2)
    kept = df.loc[present].reset_index(drop=True)
    if verify_checksums and "sha256" in kept:
        for row in kept.itertuples():
            if row.sha256 and file_sha256(row.path) != row.sha256:
                raise ManifestError(
                    f"{manifest_path}: {row.volume_id}: checksum mismatch for {row.path}"
                )
    kept.attrs["missing"] = missing["volume_id"].tolist()
    kept.attrs["missing_summary"] = summary
    kept.attrs["source"] = str(manifest_path)
    kept.attrs["root"] = str(folder)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild ``data_manifest/ampscz.tsv`` and ``hcpep.tsv`` from the authors' tables.

    Args:
        argv: Command-line arguments (``--out-dir``); ``None`` reads ``sys.argv``.

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="python -m motionqc.data.authors", description=main.__doc__
    )
    parser.add_argument("--out-dir", default=None, help="destination (default: data_manifest/)")
    args = parser.parse_args(argv)
    for target in write_paper_manifests(args.out_dir).values():
        n_rows = len(pd.read_csv(target, sep="\t", usecols=["volume_id"]))
        print(f"{target}: {n_rows} volumes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

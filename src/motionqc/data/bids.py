"""Build manifests from BIDS trees (``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``) and ratings TSVs.

Two builders:

- :func:`manifest_from_bids` for any BIDS dataset plus an optional ratings TSV keyed by
  ``bids_name`` (the file name without ``.nii[.gz]``, as MRIQC keys its tables).
- :func:`manifest_from_mrart` for MR-ART (OpenNeuro ds004173, CC0): 148 adults scanned as
  ``acq-standard``, ``acq-headmotion1`` and ``acq-headmotion2``, rated 1–3 by neuroradiologists
  (1 = clinically good, 3 = unusable). Those ratings are kept in ``mrart_score`` and mapped
  onto the manifest's 1–4 scale (4 = best) with :data:`MRART_TO_QC`.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import pandas as pd

from motionqc.data.volumes import REQUIRED_COLUMNS, ManifestError, read_tsv

__all__ = ["find_t1w", "parse_entities", "manifest_from_bids", "manifest_from_mrart", "MRART_TO_QC"]

MRART_TO_QC: dict[int, int] = {1: 4, 2: 3, 3: 2}
"""MR-ART rating (1 good … 3 bad) → manifest QC score (4 best): classes 2, 1 and 0."""

_ENTITY = re.compile(r"([a-zA-Z0-9]+)-([a-zA-Z0-9]+)")


def bids_name(path: str | Path) -> str:
    """Return a BIDS file's name without its ``.nii``/``.nii.gz`` extension."""
    name = Path(path).name
    return re.sub(r"\.nii(\.gz)?$", "", name)


def parse_entities(path: str | Path) -> dict[str, str]:
    """Return the BIDS entities of a file name (``sub``, ``ses``, ``acq``, ``run`` …).

    Args:
        path: A BIDS file path.

    Returns:
        Entity name → label, e.g. ``{"sub": "01", "ses": "a", "acq": "standard"}``.
    """
    stem = bids_name(path)
    return {key: value for key, value in _ENTITY.findall(stem)}


def find_t1w(bids_dir: str | Path, participant_label: list[str] | None = None) -> list[Path]:
    """List the T1-weighted images of a BIDS tree, sorted.

    Args:
        bids_dir: The dataset root.
        participant_label: Keep only these subjects (with or without the ``sub-`` prefix).

    Returns:
        Paths of ``sub-*/anat/*_T1w.nii[.gz]`` and ``sub-*/ses-*/anat/*_T1w.nii[.gz]``.

    Raises:
        ManifestError: If ``bids_dir`` is not a folder.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise ManifestError(f"{root}: BIDS folder not found")
    found = [
        p
        for pattern in ("sub-*/anat/*_T1w.nii*", "sub-*/ses-*/anat/*_T1w.nii*")
        for p in root.glob(pattern)
        if re.search(r"_T1w\.nii(\.gz)?$", p.name)
    ]
    if participant_label:
        wanted = {label.removeprefix("sub-") for label in participant_label}
        found = [p for p in found if parse_entities(p).get("sub") in wanted]
    return sorted(found)


def _read_ratings(ratings: str | Path, key: str, score: str | None) -> pd.Series:
    """A ratings TSV's scores by BIDS name: read as the report exports it, every line a row.

    Fields are split at tabs and nothing is quoted (``csv.QUOTE_NONE``; the report's Export
    replaces tabs and newlines in comments by spaces), so a comment holding ``"`` is read as
    typed; the rows read are checked against the file's lines.

    Raises:
        ManifestError: If the file cannot be read, a line has another number of fields, a
            column is missing, a name repeats, or a score is not 1–4 or empty (naming the line).
    """
    path = Path(ratings)
    try:
        table = read_tsv(path, "ratings", quoting=csv.QUOTE_NONE)  # UTF-8, or one line why
        lines = [line for line in path.read_bytes().split(b"\n")[1:] if line.rstrip(b"\r")]
    except (OSError, pd.errors.ParserError) as exc:
        raise ManifestError(f"{path}: cannot read ratings ({' '.join(str(exc).split())})") from exc
    if len(lines) != len(table):
        raise ManifestError(
            f"{path}: {len(lines)} line(s) of ratings but {len(table)} row(s) read; one rating "
            "per line, fields separated by tabs"
        )
    if score is None:
        score = (
            "rating"
            if "qc_score" not in table.columns and "rating" in table.columns
            else "qc_score"
        )
    for column in (key, score):
        if column not in table.columns:
            raise ManifestError(
                f"{path}: ratings have no column {column!r} (columns: {', '.join(table.columns)})"
            )
    table[key] = table[key].map(bids_name)
    if table[key].duplicated().any():
        raise ManifestError(
            f"{path}: {key} repeated: {table[key][table[key].duplicated()].iloc[0]}"
        )
    text = table[score].str.strip()
    values = pd.to_numeric(text.replace("", None), errors="coerce")
    bad = table.index[(text != "") & ~values.isin([1, 2, 3, 4])]
    if len(bad):
        row = bad[0]
        raise ManifestError(
            f"{path}: line {row + 2}: {table.at[row, key]}: {score} {table.at[row, score]} is "
            "not 1, 2, 3, 4 or empty"
        )
    return pd.Series(values.to_numpy(), index=table[key], name=score)


def manifest_from_bids(
    bids_dir: str | Path,
    ratings: str | Path | None = None,
    dataset: str | None = None,
    site: str | None = None,
    key_column: str = "bids_name",
    score_column: str | None = None,
    participant_label: list[str] | None = None,
) -> pd.DataFrame:
    """Build a manifest from a BIDS tree and (optionally) a ratings TSV.

    Args:
        bids_dir: The dataset root.
        ratings: TSV with one row per image, keyed by ``key_column`` (``bids_name``; a file name
            with its extension is accepted) and holding ``score_column`` (1–4, 4 = best): a
            manifest, or the ratings the report exports (:data:`motionqc.app.report.RATING_COLUMNS`).
        dataset: Dataset name (default: the folder's name).
        site: Site label for every volume; default: the ``site`` column of ``participants.tsv``
            when present, else the dataset name.
        key_column: Ratings column holding the BIDS name.
        score_column: Ratings column holding the QC score (default: ``qc_score``, or ``rating``
            in a file without ``qc_score``, as the report exports).
        participant_label: Keep only these subjects.

    Returns:
        A manifest (``volume_id`` = ``bids_name``) with ``bids_name``, ``session`` and ``acq``
        columns besides the required ones; unrated volumes have an empty ``qc_score``. Rated
        names found in no file of the tree (a typo, another dataset) are listed, sorted, in
        ``df.attrs["unmatched"]`` and a warning.

    Raises:
        ManifestError: If the tree holds no T1w image or the ratings cannot be used.
    """
    root = Path(bids_dir)
    files = find_t1w(root, participant_label)
    if not files:
        raise ManifestError(f"{root}: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] found")
    dataset = dataset or root.resolve().name
    sites = _participant_sites(root)
    rows = []
    for file in files:
        entities = parse_entities(file)
        subject = entities.get("sub", "")
        rows.append(
            {
                "volume_id": bids_name(file),
                "dataset": dataset,
                "site": site or sites.get(subject, dataset),
                "subject": subject,
                "path": str(file.resolve()),
                "qc_score": pd.NA,
                "bids_name": bids_name(file),
                "session": entities.get("ses", ""),
                "acq": entities.get("acq", ""),
            }
        )
    df = pd.DataFrame(rows)
    unmatched: list[str] = []
    if ratings is not None:
        scores = _read_ratings(ratings, key_column, score_column)
        df["qc_score"] = df["bids_name"].map(scores)
        rated = scores[scores.notna()]
        unmatched = sorted(set(rated.index) - set(df["bids_name"]))
        if unmatched:
            warnings.warn(
                f"{ratings}: {len(unmatched)} of {len(rated)} rated name(s) are not in {root} "
                f"and are not used: {', '.join(unmatched[:10])}",
                stacklevel=2,
            )
        bad = df["qc_score"].notna() & ~df["qc_score"].isin([1, 2, 3, 4])
        if bad.any():
            row = df[bad].iloc[0]
            raise ManifestError(
                f"{ratings}: score {row.qc_score} of {row.bids_name} is not 1, 2, 3 or 4"
            )
    df["qc_score"] = pd.array(df["qc_score"], dtype="Int64")
    df = df[list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]]
    df.attrs["unmatched"] = unmatched
    return df


def _participant_sites(root: Path) -> dict[str, str]:
    table = root / "participants.tsv"
    if not table.is_file():
        return {}
    df = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    if "site" not in df.columns or "participant_id" not in df.columns:
        return {}
    return {
        pid.removeprefix("sub-"): s for pid, s in zip(df["participant_id"], df["site"], strict=True)
    }


def manifest_from_mrart(bids_dir: str | Path, scores: str | Path | None = None) -> pd.DataFrame:
    """Build a manifest for MR-ART (OpenNeuro ds004173).

    Args:
        bids_dir: The ds004173 root.
        scores: The ratings TSV (default: ``derivatives/scores.tsv`` in the dataset), with
            columns ``bids_name`` and ``score`` (1 = good, 2 = medium, 3 = bad).

    Returns:
        A manifest with ``qc_score`` mapped by :data:`MRART_TO_QC`, the original rating in
        ``mrart_score`` and the acquisition (``standard``, ``headmotion1``, ``headmotion2``)
        in ``acq``; ``site`` is ``MR-ART`` (a single scanner).

    Raises:
        ManifestError: If files or scores are missing, or a score is not 1, 2 or 3.
    """
    root = Path(bids_dir)
    scores_path = Path(scores) if scores is not None else root / "derivatives" / "scores.tsv"
    if not scores_path.is_file():
        raise ManifestError(f"{scores_path}: MR-ART scores TSV not found")
    df = manifest_from_bids(root, dataset="MR-ART", site="MR-ART")
    raw = _read_ratings(scores_path, "bids_name", "score")
    df["mrart_score"] = pd.array(df["bids_name"].map(raw), dtype="Int64")
    bad = df["mrart_score"].notna() & ~df["mrart_score"].isin([1, 2, 3])
    if bad.any():
        row = df[bad].iloc[0]
        raise ManifestError(
            f"{scores_path}: score {row.mrart_score} of {row.bids_name} is not 1, 2 or 3"
        )
    df["qc_score"] = pd.array(df["mrart_score"].map(MRART_TO_QC, na_action="ignore"), dtype="Int64")
    unknown = sorted(set(df["acq"]) - {"standard", "headmotion1", "headmotion2"})
    if unknown:
        raise ManifestError(f"{root}: unexpected MR-ART acquisition(s) {', '.join(unknown)}")
    return df

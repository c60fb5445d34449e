"""The corpus of real heads: IXI-layout folders as a manifest, and a seeded split by subject.

IXI (brain-development.org/ixi-dataset, CC BY-SA 3.0) ships its T1w volumes as
``IXI###-{Guys,HH,IOP}-####-T1.nii.gz`` (the ``IXI-T1.tar`` tarball, and TorchIO's
``torchio.datasets.IXI``); derivatives such as NiChart's 2 mm resampling write
``IXI###-HH-####_T1.nii.gz``. :func:`manifest_from_ixi` finds either layout below a folder and writes
the project's manifest (``volume_id, dataset, site, subject, path, qc_score``) with each file's
SHA-256 and licence. :func:`corpus_split` draws a seeded train / validation / test split **by
subject** of the training datasets' rows; every other row (another scanner, or a head marked
``test only``) is a test head of the ``cross_scanner`` set. :func:`training_heads` refuses a split
that would train on a ``test only`` head.

Command line (writes ``data_manifest/corpus.tsv``)::

    python -m motionqc.data.corpus --data-root DIR [--ixi ixi_2mm] [--extra DIR/manifest.tsv]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from motionqc import paths
from motionqc.data.volumes import ManifestError, file_sha256, load_manifest

__all__ = [
    "IXI_ATTRIBUTION",
    "IXI_LICENCE",
    "IXI_PATTERN",
    "LABEL_MAP",
    "TEST_ONLY",
    "corpus_split",
    "label_map_rows",
    "load_corpus",
    "manifest_from_ixi",
    "training_heads",
]

IXI_PATTERN = re.compile(r"^(IXI\d{3})-(Guys|HH|IOP)-(\d{4})[-_]T1\.nii(\.gz)?$")
"""An IXI T1w file name: the original (``-T1``) or a derivative's (``_T1``)."""

IXI_LICENCE = "CC BY-SA 3.0"
"""The IXI data's licence."""

IXI_ATTRIBUTION = "IXI dataset, brain-development.org/ixi-dataset"
"""The attribution CC BY-SA 3.0 requires wherever IXI data, or weights trained on it, are shared."""

TEST_ONLY = "test only"
"""``use`` of a head whose origin does not allow training released weights on it."""

LABEL_MAP = "label map"
"""``use`` of a whole-head label map (split ``labels``: it trains through generated heads)."""

SPLIT_COLUMNS = (
    "volume_id",
    "dataset",
    "site",
    "subject",
    "path",
    "qc_score",
    "licence",
    "use",
    "sha256",
    "split",
    "test_set",
)
"""Columns of the corpus manifest written by :func:`corpus_split` (``data_manifest/corpus.tsv``)."""


def manifest_from_ixi(folder: str | Path, data_root: str | Path | None = None) -> pd.DataFrame:
    """A manifest of every IXI T1w file below ``folder`` (one row per subject).

    Args:
        folder: A folder holding IXI T1w files (at any depth), as the IXI tarball, TorchIO's
            ``torchio.datasets.IXI`` or a derivative lays them out.
        data_root: Paths are written relative to this folder (default: absolute paths).

    Returns:
        Rows ``volume_id`` (``IXI###-SITE-####``), ``dataset`` (``IXI``), ``site`` (``Guys``,
        ``HH`` or ``IOP``), ``subject`` (``IXI###``), ``path``, ``qc_score`` (empty),
        ``licence``, ``use`` (``train or test``) and ``sha256``, sorted by ``volume_id``.

    Raises:
        ManifestError: If no IXI T1w file is found, or one subject has two files (one line
            naming both).
    """
    folder = Path(folder)
    root = Path(data_root).resolve() if data_root is not None else None
    rows: dict[str, dict[str, str]] = {}
    for file in sorted(folder.rglob("IXI*T1.nii*")):
        match = IXI_PATTERN.match(file.name)
        if match is None or not file.is_file():
            continue
        subject, site, number = match.group(1), match.group(2), match.group(3)
        if subject in rows:
            raise ManifestError(
                f"{file}: subject {subject} already has {rows[subject]['path']}; keep one file"
            )
        resolved = file.resolve()
        rows[subject] = {
            "volume_id": f"{subject}-{site}-{number}",
            "dataset": "IXI",
            "site": site,
            "subject": subject,
            "path": str(resolved.relative_to(root) if root is not None else resolved),
            "qc_score": "",
            "licence": IXI_LICENCE,
            "use": "train or test",
            "sha256": file_sha256(resolved),
        }
    if not rows:
        raise ManifestError(f"{folder}: no IXI T1w file (IXI###-SITE-####-T1.nii.gz) below it")
    return pd.DataFrame(list(rows.values())).sort_values("volume_id", ignore_index=True)


def corpus_split(
    table: pd.DataFrame,
    *,
    train_datasets: Sequence[str] = ("IXI",),
    fractions: tuple[float, float, float] = (0.8, 0.075, 0.125),
    seed: int = 0,
) -> pd.DataFrame:
    """A seeded train / val / test split by subject of the training datasets' rows.

    The subjects of ``train_datasets`` are shuffled with ``seed`` and cut by ``fractions``; all
    of a subject's rows share its split. Every other row, and every ``test only`` row, is
    ``test``, but label maps (``use`` :data:`LABEL_MAP`), whose split is ``labels``.
    ``test_set`` names the test rows' set: ``held_out`` (a training dataset's subject) or
    ``cross_scanner`` (another dataset, hence another scanner).

    Args:
        table: A manifest (``subject``, ``dataset``; ``use`` optional).
        train_datasets: Datasets whose subjects may train.
        fractions: Train, validation and test shares of their subjects.
        seed: Seed of the shuffle.

    Returns:
        ``table`` with ``split`` and ``test_set`` (empty outside test), in its row order.

    Raises:
        ValueError: If the fractions are not three positive shares summing to 1 or fewer than
            three subjects can train.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    out = table.copy()
    use = out["use"] if "use" in out.columns else pd.Series("", index=out.index)
    trainable = out["dataset"].isin(list(train_datasets)) & (use != TEST_ONLY)
    subjects = sorted(out.loc[trainable, "subject"].astype(str).unique())
    if len(subjects) < 3:
        raise ValueError(f"{len(subjects)} trainable subject(s): a split needs at least 3")
    order = np.random.default_rng(seed).permutation(len(subjects))
    n_test = max(1, int(round(fractions[2] * len(subjects))))
    n_val = max(1, int(round(fractions[1] * len(subjects))))
    part = {}
    for rank, i in enumerate(order):
        part[subjects[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    out["split"] = [
        part.get(str(s), "test") if t else "test"
        for s, t in zip(out["subject"], trainable, strict=True)
    ]
    out.loc[(use == LABEL_MAP).to_numpy(), "split"] = "labels"
    out["test_set"] = np.where(
        out["split"] != "test",
        "",
        np.where(out["dataset"].isin(list(train_datasets)), "held_out", "cross_scanner"),
    )
    return out


def load_corpus(
    manifest: str | Path | None = None, data_root: str | Path | None = None
) -> pd.DataFrame:
    """Read the corpus manifest, every file present and matching its recorded SHA-256.

    Args:
        manifest: The corpus manifest (default ``data_manifest/corpus.tsv``).
        data_root: Folder its relative paths resolve against (``None``: ``MOTIONQC_DATA_ROOT``).

    Returns:
        The manifest, paths resolved (:func:`motionqc.data.volumes.load_manifest`).

    Raises:
        ManifestError: If a file is missing or no longer matches its SHA-256 (one line naming
            it), or the manifest has no ``split`` column.
        ValueError: If no data root is given or set.
    """
    from motionqc.data.authors import data_root as resolve_root

    manifest = Path(manifest) if manifest is not None else paths.manifest_dir() / "corpus.tsv"
    table = load_manifest(
        manifest, base_dir=resolve_root(data_root), check_files=True, verify_checksums=True
    )
    if "split" not in table.columns:
        raise ManifestError(f"{manifest}: no split column (build it with motionqc.data.corpus)")
    return table


def label_map_rows(
    folder: str | Path, data_root: str | Path, *, licence: str = "Apache-2.0 (SynthSeg)"
) -> pd.DataFrame:
    """Manifest rows of the whole-head label maps (``*.nii.gz``) in a folder, with SHA-256.

    Args:
        folder: The label maps' folder.
        data_root: Paths are written relative to it.
        licence: Their licence.

    Returns:
        One row per map: ``volume_id`` ``labels_<stem>``, ``dataset`` ``labels``, ``use``
        :data:`LABEL_MAP`.
    """
    root = Path(data_root).resolve()
    rows = []
    for file in sorted(Path(folder).glob("*.nii*")):
        stem = file.name.split(".nii")[0]
        rows.append(
            {
                "volume_id": f"labels_{stem}",
                "dataset": "labels",
                "site": "",
                "subject": f"labels_{stem}",
                "path": str(file.resolve().relative_to(root)),
                "qc_score": "",
                "licence": licence,
                "use": LABEL_MAP,
                "sha256": file_sha256(file),
            }
        )
    return pd.DataFrame(rows)


def training_heads(table: pd.DataFrame) -> tuple[tuple[str, ...], ...]:
    """The corpus's training, validation, test and label-map ``volume_id``s.

    Raises:
        ValueError: If a ``test only`` head is in the training or validation split (one line
            naming it).
    """
    use = table["use"] if "use" in table.columns else pd.Series("", index=table.index)
    wrong = table.loc[(use == TEST_ONLY) & (table["split"] != "test"), "volume_id"].tolist()
    if wrong:
        raise ValueError(f"head(s) marked '{TEST_ONLY}' outside the test split: {', '.join(wrong)}")
    return tuple(
        tuple(table.loc[table["split"] == s, "volume_id"].astype(str))
        for s in ("train", "val", "test", "labels")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build ``data_manifest/corpus.tsv`` from IXI-layout folders (and another manifest's rows)."""
    parser = argparse.ArgumentParser(description="Build the corpus manifest and its split.")
    parser.add_argument("--data-root", type=Path, required=True, help="folder of the corpus")
    parser.add_argument("--ixi", default=".", help="IXI folder, relative to --data-root")
    parser.add_argument(
        "--extra",
        type=Path,
        default=None,
        help="a manifest whose non-IXI rows (other scanners) join as test heads",
    )
    parser.add_argument(
        "--labels", default=None, help="folder of whole-head label maps, relative to --data-root"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=paths.manifest_dir() / "corpus.tsv")
    args = parser.parse_args(argv)
    table = manifest_from_ixi(args.data_root / args.ixi, data_root=args.data_root)
    if args.extra is not None:
        extra = pd.read_csv(args.extra, sep="\t", dtype=str, keep_default_na=False)
        extra = extra[extra["dataset"] != "IXI"]
        for row in extra.itertuples():
            if row.sha256 != file_sha256(args.data_root / row.path):
                raise ManifestError(f"{args.extra}: {row.path} does not match its sha256")
        table = pd.concat([table, extra], ignore_index=True)
    if args.labels is not None:
        table = pd.concat(
            [table, label_map_rows(args.data_root / args.labels, args.data_root)],
            ignore_index=True,
        )
    out = corpus_split(table, seed=args.seed)[list(SPLIT_COLUMNS)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, sep="\t", index=False, lineterminator="\n")
    counts = out.groupby(["split", "test_set"]).size().to_dict()
    print(f"{args.out}: {len(out)} heads {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

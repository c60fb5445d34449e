"""``motionqc train-qc``: a QC head on a manifest of the user's own ratings.

:func:`train_qc_cli` checks the ratings and the split, embeds the volumes with the encoder
(:func:`motionqc.data.detail.preprocess_rows`, :func:`motionqc.training.transfer.embed`), trains the head over seeds
(:mod:`motionqc.training.qc_runs`) and writes the head file, ``splits.tsv`` and the metrics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from motionqc.data.detail import preprocess_rows
from motionqc.data.splits import split_by_subject
from motionqc.models.qc_head import file_digest, save_qc_head
from motionqc.training.qc_runs import best_run, run_transfer_seeds
from motionqc.training.transfer import embed

__all__ = [
    "OUTPUT_FILES",
    "check_manifest_spared",
    "check_ratings",
    "check_split_classes",
    "ratings_manifest",
    "train_qc_cli",
]

OUTPUT_FILES: tuple[str, ...] = (
    "manifest.tsv",
    "splits.tsv",
    "qc_results.csv",
    "qc_median.csv",
    "qc_predictions.tsv",
    "qc_head.pt",
    "errors.json",
)
"""What ``motionqc train-qc`` writes in its output folder (``manifest.tsv`` with ``--bids-dir``)."""


def check_manifest_spared(
    manifest: str | Path, out_dir: str | Path, writes_manifest: bool = False
) -> None:
    """Refuse, in one line, a ratings file or manifest that ``train-qc`` would overwrite.

    Args:
        manifest: The ratings or manifest file given.
        out_dir: The output folder.
        writes_manifest: ``OUT_DIR/manifest.tsv`` is written too (``--bids-dir``).

    Raises:
        ValueError: If ``manifest`` is one of the files written in ``out_dir``.
    """
    source = Path(manifest).resolve()
    for name in OUTPUT_FILES:
        if name == "manifest.tsv" and not writes_manifest:
            continue
        target = Path(out_dir).resolve() / name
        same = source == target
        if not same and target.exists() and source.exists():
            same = source.samefile(target)
        if same:
            raise ValueError(
                f"{manifest}: would be overwritten by train-qc's {name}; copy it elsewhere or "
                "choose another OUT_DIR"
            )


def ratings_manifest(
    bids_dir: str | Path, ratings: str | Path, out_dir: str | Path, log: Callable[[str], None]
) -> Path:
    """Write ``OUT_DIR/manifest.tsv`` from a BIDS folder and its ratings (``--bids-dir``).

    Args:
        bids_dir: The BIDS dataset.
        ratings: The ratings TSV (the report's export, or any TSV keyed by ``bids_name``).
        out_dir: The output folder.
        log: Where the warning about rated names found in no file goes (one line).

    Returns:
        The manifest's path.

    Raises:
        ValueError: If ``ratings`` is a file train-qc writes in ``out_dir``.
        motionqc.data.volumes.ManifestError: If the ratings cannot be used (one line).
    """
    import warnings

    from motionqc.data.bids import manifest_from_bids

    check_manifest_spared(ratings, out_dir, writes_manifest=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said below, in one line
        table = manifest_from_bids(bids_dir, ratings=ratings)
    unmatched = table.attrs.get("unmatched", [])
    if unmatched:
        rated = int(table["qc_score"].notna().sum()) + len(unmatched)
        log(
            f"warning: {ratings}: {len(unmatched)} of {rated} rated name(s) are not in "
            f"{bids_dir} and are not used: {', '.join(unmatched[:10])}"
            + (" ..." if len(unmatched) > 10 else "")
        )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    manifest = Path(out_dir) / "manifest.tsv"
    table.to_csv(manifest, sep="\t", index=False)
    return manifest


def _warn_one_class(y: np.ndarray, split: np.ndarray, manifest: str | Path, log) -> None:
    for name in ("val", "test"):
        present = np.unique(y[split == name])
        if len(present) == 1:
            log(
                f"warning: {manifest}: the {name} split holds one QC class ({int(present[0])}): "
                "its balanced accuracy is that class's recall and the other classes' F1 is 0; "
                "rate more volumes of the other classes or give a split column"
            )


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
    from motionqc.data.volumes import file_sha256
    from motionqc.qc_task import qc_class

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


def train_qc_cli(
    manifest: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    seeds: int = 5,
    *,
    skip_missing: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train a lab's own QC head from its ratings (``motionqc train-qc``): 5-seed report.

    The manifest needs ``volume_id, subject, path, qc_score`` (and optionally ``split``:
    train/val/test, refused if a subject spans two splits; otherwise a 60/20/20 split **by
    subject**, stratified by class, is drawn with seed 0: :func:`motionqc.data.splits.subject_split`), and the split is
    written to ``splits.tsv`` (``volume_id``, ``subject``, ``split``). Volumes are preprocessed with
    the encoder's geometry and embedded once; a head is trained per seed; the per-seed metrics,
    the median table and the head of the seed with the best validation balanced accuracy
    (``qc_head.pt``) are written to ``out_dir``.

    Args:
        manifest: Ratings TSV.
        checkpoint: Encoder file (:func:`motionqc.models.encoder.save_encoder`).
        out_dir: Output folder.
        seeds: Number of seeds.
        skip_missing: Train without the rated volumes whose files are missing or unusable
            (otherwise they stop the run); either way they are listed in ``errors.json``.
        log: Where warnings go, one line each (a test split of one class, skipped volumes);
            default: :func:`warnings.warn`.

    Returns:
        The path of ``qc_results.csv``.

    Raises:
        ValueError: In one line: too few ratings, one class, a split that cannot be used, a
            manifest that would be overwritten, or rated volumes that cannot be used (unless
            ``skip_missing``).
    """
    if log is None:
        import warnings

        def log(message: str) -> None:
            warnings.warn(message, stacklevel=3)

    from motionqc.data.volumes import file_sha256, load_manifest
    from motionqc.evaluation.qc_metrics import median_table, seed_table
    from motionqc.models.encoder import load_encoder
    from motionqc.qc_task import qc_class

    out = Path(out_dir)
    check_manifest_spared(manifest, out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta = load_encoder(checkpoint)
    # Files are checked below, one by one: a missing or unusable file goes to errors.json.
    table = load_manifest(manifest, check_files=False)
    table = table[table["qc_score"].notna()].reset_index(drop=True)
    if len(table) < 10:
        raise ValueError(f"{manifest}: {len(table)} rated volumes; at least 10 are needed")
    check_ratings(table, manifest)
    rated = len(table)
    images, table, errors = preprocess_rows(table, meta)
    (out / "errors.json").write_text(json.dumps(errors, indent=1))
    if errors:
        more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
        message = (
            f"{manifest}: {len(errors)} of {rated} rated volume(s) cannot be used "
            f"({errors[0]['volume_id']}: {' '.join(errors[0]['error'].split())}{more}; all in "
            f"{out / 'errors.json'})"
        )
        if not skip_missing:
            raise ValueError(f"{message}; fix them, or pass --skip-missing to train without them")
        log(f"warning: {message}; training without them (--skip-missing)")
    y = np.array([qc_class(s) for s in table["qc_score"]])
    split = split_by_subject(table, y, manifest, seed=0)
    check_split_classes(y, split, manifest)
    _warn_one_class(y, split, manifest, log)
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

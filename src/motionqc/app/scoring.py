"""``motionqc score``'s BIDS steps: resumable derivatives, shards and the group report.

:func:`run_participant` / :func:`run_group` are the ``participant`` and ``group`` steps: BIDS
derivatives (``dataset_description.json``, a TSV keyed by ``bids_name`` appended and fsync'd one
volume at a time, a mosaic PNG per volume) that resume where an interrupted run stopped, shards
for array jobs, and the HTML report. Volumes are loaded by :mod:`motionqc.app.loading` and scored
by :mod:`motionqc.app.scorer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from motionqc.app.derivatives import (
    GROUP_TABLE,
    ResultTable,
    check_output_dir,
    derivative_path,
    shard_table,
    sidecar_path,
    table_text,
    write_dataset_description,
    write_derivative_extras,
)
from motionqc.app.files import replace_atomically
from motionqc.app.group import mosaic_path, run_group, views_path
from motionqc.app.guards import claim_encoder, loader_workers, select_files, shard_lock
from motionqc.app.scorer import Scorer, score_volumes
from motionqc.data.bids import bids_name, find_t1w, parse_entities
from motionqc.data.volumes import file_sha256
from motionqc.qc_task import QC_CLASS_IDS, QC_CLASS_NAMES
from motionqc.runtime.devices import (
    default_batch_size,
    default_num_workers,
    default_threads,
    resolve_device,
)

__all__ = [
    "COLUMNS",
    "QC_LABELS",
    "ParticipantSummary",
    "group_table",
    "mosaic_path",
    "views_path",
    "run_group",
    "run_participant",
    "shard_lock",
]

COLUMNS: tuple[str, ...] = (
    "bids_name",
    "subject",
    "session",
    "motion_mm",
    "motion_std",
    *(f"p_qc{c}" for c in QC_CLASS_IDS),
    "qc_class",
    "status",
    "error",
)
"""Columns of the participant TSV (``p_qc*`` and ``qc_class`` are empty without a QC head)."""

QC_LABELS: dict[int, str] = QC_CLASS_NAMES
"""QC class → label shown in the report (:data:`motionqc.qc_task.QC_CLASS_NAMES`)."""


# --------------------------------------------------------------------------- loading


# --------------------------------------------------------------------------- model


# --------------------------------------------------------------------------- BIDS steps
def _write_derivative(
    out: Path, row: dict[str, Any], model: dict[str, object], bids_dir: str | Path
) -> None:
    """Write a scored volume's encoder input as NIfTI and its scores as the JSON sidecar."""
    import nibabel as nib

    target = derivative_path(out, row["bids_name"])
    if target is None or row.get("image") is None:
        return
    data = np.asarray(row["image"][0], dtype=np.float32)
    image = nib.Nifti1Image(data, np.asarray(row["affine"], dtype=float))
    image.set_data_dtype(np.int16)  # scaled by nibabel (scl_slope): a quarter of float32's size
    image.header.set_xyzt_units("mm")
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(target, lambda tmp: nib.save(image, tmp), suffix=".nii.gz")
    try:
        source = Path(row["path"]).resolve().relative_to(Path(bids_dir).resolve())
        sources = [f"bids:raw:{source.as_posix()}"]
    except ValueError:
        sources = [Path(row["path"]).resolve().as_uri()]
    sidecar: dict[str, object] = {
        "Description": (
            "The T1w as the motionqc encoder saw it (canonical RAS+, resampled to "
            f"{model['spacing_mm']} mm, cropped or padded to {model['shape']}, divided by its "
            "mean) and the motion predicted for it"
        ),
        "Sources": sources,
        "MotionScore": float(row["motion_mm"]),
        "MotionScoreStd": float(row["motion_std"]),
        "MotionScoreUnits": "mm (RMS deviation, Jenkinson)",
        "ScoreConvention": model["score_convention"],
        "BinRange": list(model["bin_range"]),  # type: ignore[call-overload]
        "BinProbabilities": [round(float(v), 6) for v in row.get("bins", [])],
        "EncoderSHA256": model["sha256"],
        "SourceSHA256": _source_sha256(row["path"]),  # the study's identity in the report
    }
    if row.get("qc_class") not in (None, ""):
        sidecar["QCClass"] = int(row["qc_class"])
        sidecar["QCProbabilities"] = [
            float(row[f"p_qc{c}"]) for c in QC_CLASS_IDS if row.get(f"p_qc{c}") is not None
        ]
    _write_bytes(sidecar_path(target), (json.dumps(sidecar, indent=2) + "\n").encode())


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: tmp.write_bytes(data))


@dataclass
class ParticipantSummary:
    """What a ``participant`` run did.

    Attributes:
        table: The TSV written.
        selected: Volumes in this run's selection (after ``--participant-label`` and the shard).
        skipped: Volumes already in the table, not scored again.
        scored: Volumes scored now.
        errors: Volumes that failed now (listed in the table with their error).
        ok_total: Volumes of the selection with a score in the table (now or before).
        report: The HTML report when written.
        interrupted: The run stopped early (Ctrl-C); what was written is kept.
        error_names: The volumes that failed now.
    """

    table: Path
    selected: int = 0
    skipped: int = 0
    scored: int = 0
    errors: int = 0
    ok_total: int = 0
    report: Path | None = None
    interrupted: bool = False
    error_names: list[str] = field(default_factory=list)


def _check_same_model(output_dir: Path, model: dict[str, object]) -> None:
    description = output_dir / "dataset_description.json"
    if not description.is_file() or not any(output_dir.glob("motion_T1w*.tsv")):
        return
    try:
        previous = json.loads(description.read_text())["GeneratedBy"][0].get("Model", {})
    except (ValueError, KeyError, IndexError, TypeError):
        return
    if previous.get("sha256") and previous["sha256"] != model["sha256"]:
        raise ValueError(
            f"{output_dir}: holds scores from another encoder ({previous.get('checkpoint')}); "
            "use a new output folder"
        )
    if previous.get("sha256") and previous.get("input_intensity") != model["input_intensity"]:
        raise ValueError(
            f"{output_dir}: holds scores made with input scaling "
            f"{previous.get('input_intensity') or 'mean (motionqc < unit_range)'}, not "
            f"{model['input_intensity']}; use a new output folder"
        )


def run_participant(
    bids_dir: str | Path,
    output_dir: str | Path,
    checkpoint: str | Path,
    *,
    participant_label: Sequence[str] | None = None,
    qc_head: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    threads: int | None = None,
    shard: tuple[int, int] = (0, 1),
    mosaics: bool = True,
    retry_errors: bool = False,
    report: bool | None = None,
    progress: bool = True,
    channels_last: bool = True,
    log: Callable[[str], None] | None = None,
) -> ParticipantSummary:
    """The ``participant`` step: score every T1w of a BIDS dataset (or of one shard of it).

    Args:
        bids_dir: The BIDS dataset.
        output_dir: The derivative folder (must not be inside ``bids_dir``).
        checkpoint: Encoder file.
        participant_label: Only these subjects (with or without ``sub-``).
        qc_head: QC head file (adds class probabilities).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` …
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        batch_size: Volumes per forward pass (default :func:`default_batch_size`).
        num_workers: Loader processes (default :func:`default_num_workers`).
        threads: torch threads of this process (default :func:`default_threads`).
        shard: ``(I, N)``: score every N-th volume starting at I (sorted by path).
        mosaics: Render and save a mosaic per volume (for the report).
        retry_errors: Try again the volumes listed with an error in the table.
        report: Write ``report.html`` (default: when not sharded).
        progress: Show a per-volume progress bar.
        channels_last: Run the model in ``channels_last_3d`` format.
        log: Where to send one-line messages (default: nowhere).

    Returns:
        A :class:`ParticipantSummary`.

    Raises:
        ValueError: If ``output_dir`` cannot be written (:func:`check_output_dir`), or it holds
            scores of another encoder (:func:`claim_encoder`), or its table has other columns,
            or another process is scoring the same shard into it (:func:`shard_lock`).
        motionqc.data.volumes.ManifestError: If ``bids_dir`` is not a folder.
        motionqc.models.encoder.EncoderError: If the encoder cannot be loaded.
    """
    log = log or (lambda _msg: None)
    index, count = shard
    found = find_t1w(bids_dir, list(participant_label) if participant_label else None)
    if not (Path(bids_dir) / "dataset_description.json").is_file():
        log(
            f"warning: {bids_dir}: no dataset_description.json, so not a valid BIDS dataset; "
            "scoring the T1w images found anyway"
        )
    out = check_output_dir(bids_dir, output_dir)
    files, refused = select_files(found, index, count, bids_dir)
    with shard_lock(out, index, count):
        if not files and not refused:
            table = ResultTable(shard_table(out, index, count), COLUMNS)
            log(f"no T1w image selected in {bids_dir} (shard {index}/{count})")
            return ParticipantSummary(table=table.path)
        target = resolve_device(device)
        workers = default_num_workers(target.type) if num_workers is None else int(num_workers)
        workers = loader_workers(workers, len(files))
        if batch_size is None:
            batch_size = default_batch_size(target.type)
        if threads is None:
            threads = default_threads(target)
        threads_before = torch.get_num_threads()
        try:
            scorer = Scorer(
                checkpoint,
                qc_head=qc_head,
                device=device,
                precision=precision,
                channels_last=channels_last,
                threads=threads,
            )
            model_info = scorer.describe()
            _check_same_model(out, model_info)
            claim_encoder(out, model_info)  # before this shard writes anything
            table = ResultTable(shard_table(out, index, count), COLUMNS)
            summary = ParticipantSummary(table=table.path, selected=len(files) + len(refused))
            _score_into(
                scorer,
                model_info,
                files,
                refused,
                out,
                table,
                summary,
                batch_size,
                workers,
                mosaics,
                retry_errors,
                qc_head is not None,
                progress,
                log,
                bids_dir,
            )
        finally:
            torch.set_num_threads(threads_before)  # the Scorer set it for this run only
        if summary.interrupted:
            return summary
        if report is None:
            report = count == 1
        if report and len(table.read()):
            summary.report = run_group(out)
        return summary


def _score_into(
    scorer: Scorer,
    model_info: dict[str, object],
    files: list[Path],
    refused: dict[str, str],
    out: Path,
    table: ResultTable,
    summary: ParticipantSummary,
    batch_size: int,
    workers: int,
    mosaics: bool,
    retry_errors: bool,
    with_qc: bool,
    progress: bool,
    log: Callable[[str], None],
    bids_dir: str | Path,
) -> None:
    write_dataset_description(out, source=bids_dir, model=model_info)
    write_derivative_extras(out)

    existing = table.read()
    if with_qc:  # rows scored without the QC head are scored again
        existing = existing[(existing["status"] != "ok") | (existing["qc_class"] != "")]
    if retry_errors:
        existing = existing[existing["status"] == "ok"]
    done = set(existing["bids_name"])
    # Compared, written and shown as the table holds them (a tab or repeated spaces in a file
    # name become one space), so that a re-run finds what it wrote.
    names = [table_text(bids_name(f)) for f in files]
    todo = [(f, n) for f, n in zip(files, names, strict=True) if n not in done]
    summary.skipped = len(files) - len(todo)
    for name, message in refused.items():  # files sharing a name: listed, none scored
        log(f"{name}: {message}")
        if name in done:
            summary.skipped += 1
            continue
        entities = parse_entities(name)
        table.append(
            {
                "bids_name": name,
                "subject": entities.get("sub", ""),
                "session": entities.get("ses", ""),
                "status": "error",
                "error": message,
            }
        )
        summary.errors += 1
        summary.error_names.append(name)
    names += list(refused)
    log(
        f"{summary.selected} T1w selected, {summary.skipped} already in {table.path.name}, "
        f"{len(todo)} to score on {scorer.device.type} ({scorer.precision}, "
        f"{scorer.spacing_mm:g} mm {'x'.join(map(str, scorer.shape))}, {workers} loader "
        f"worker(s), {torch.get_num_threads()} thread(s))"
    )
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="vol", desc="score", disable=not progress or not todo)
    try:
        for row in score_volumes(
            scorer,
            [f for f, _ in todo],
            names=[n for _, n in todo],
            batch_size=batch_size,
            num_workers=workers,
            mosaics=mosaics,
            inputs=True,
        ):
            entities = parse_entities(row["bids_name"])
            row["subject"] = entities.get("sub", "")
            row["session"] = entities.get("ses", "")
            if row.get("mosaic"):
                _write_bytes(mosaic_path(out, row["bids_name"]), row["mosaic"])
            if row.get("views"):
                _write_bytes(views_path(out, row["bids_name"]), row["views"])
            if row["status"] == "ok":
                _write_derivative(out, row, model_info, bids_dir)
            row.pop("image", None)  # written: not kept
            table.append(row)  # durable before the next volume
            if row["status"] == "ok":
                summary.scored += 1
                bar.set_postfix_str(f"{row['bids_name']} {row['motion_mm']:.2f} mm", refresh=False)
            else:
                summary.errors += 1
                summary.error_names.append(row["bids_name"])
            bar.update(1)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
    final = table.read()
    summary.ok_total = len(set(final.loc[final["status"] == "ok", "bids_name"]) & set(names))


def group_table(output_dir: str | Path) -> pd.DataFrame:
    """Read the merged ``group_T1w.tsv`` of a derivative folder."""
    return pd.read_csv(Path(output_dir) / GROUP_TABLE, sep="\t", dtype=str, keep_default_na=False)


def _source_sha256(path: str | Path) -> str | None:
    """The source file's SHA-256, or ``None`` when it cannot be read again (gone, unreadable)."""
    try:
        return file_sha256(path)
    except OSError:
        return None

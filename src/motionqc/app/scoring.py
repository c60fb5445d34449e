"""Scoring T1w volumes with a pretrained encoder: a loader pipeline, resumable BIDS derivatives.

The pipeline behind ``motionqc score``:

- :class:`VolumeDataset` loads and preprocesses one volume per item, in DataLoader worker processes
  (one torch/SimpleITK thread each) when there are cores to spare for them (on GPUs; on CPUs with 8
  cores or more, see :func:`default_num_workers`), with the geometry recorded in the encoder file.
  A volume that cannot be used (corrupt, truncated, 4D, empty, NaN/Inf) gives an error record
  instead of raising, so one bad file never stops a run.
- :class:`Scorer` runs the encoder under ``torch.inference_mode`` in ``channels_last_3d`` memory
  format with bf16 autocast on CPUs that support it (AMP on CUDA: bf16, or fp16 where bf16 is not
  supported) and returns the motion score (mm), its predictive standard deviation and, when a QC
  head file is given, the three QC class probabilities.
- :func:`score_volumes` glues them: batches in input order, one result per volume.
- :func:`run_participant` / :func:`run_group` are the ``participant`` and ``group`` steps: BIDS
  derivatives (``dataset_description.json``, a TSV keyed by ``bids_name`` appended and fsync'd one
  volume at a time, a mosaic PNG per volume) that resume where an interrupted run stopped, shards
  for array jobs, and the HTML report.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset

from motionqc.app.derivatives import (
    GROUP_TABLE,
    ResultTable,
    check_output_dir,
    derivative_path,
    merge_shards,
    shard_items,
    shard_table,
    sidecar_path,
    table_text,
    write_dataset_description,
    write_derivative_extras,
)
from motionqc.data.bids import bids_name, find_t1w, parse_entities
from motionqc.data.qc_task import N_QC_CLASSES, QC_CLASS_IDS, QC_CLASS_NAMES
from motionqc.data.volumes import VolumeError, file_sha256, load_volume, preprocess
from motionqc.models.encoder import load_encoder, scale_input
from motionqc.models.soft_labels import decode, predictive_std
from motionqc.runtime.devices import (
    cpu_has_native_bf16,
    default_batch_size,
    default_num_workers,
    default_threads,
    resolve_device,
    resolve_precision,
)

__all__ = [
    "COLUMNS",
    "QC_LABELS",
    "VolumeDataset",
    "Scorer",
    "ParticipantSummary",
    "cpu_has_native_bf16",
    "default_batch_size",
    "default_num_workers",
    "default_threads",
    "group_table",
    "load_preprocessed",
    "mosaic_path",
    "views_path",
    "resolve_device",
    "resolve_precision",
    "run_group",
    "run_participant",
    "score_volumes",
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
"""QC class → label shown in the report (:data:`motionqc.data.qc_task.QC_CLASS_NAMES`)."""


# --------------------------------------------------------------------------- loading
def load_preprocessed(path: str | Path, spacing_mm: float, shape: Sequence[int]) -> torch.Tensor:
    """Load a volume and preprocess it exactly as :func:`motionqc.data.volumes.preprocess` would.

    A volume that is already axis-aligned RAS+ at the target voxel size skips the resampling step
    (the resampling would be the identity: same grid, values equal to ~1e-12), which saves most of
    the preprocessing time for 1 mm inputs at 1 mm.

    Args:
        path: A NIfTI file.
        spacing_mm: Target isotropic voxel size (the encoder's ``meta["spacing_mm"]``).
        shape: Target grid (the encoder's ``meta["shape"]``).

    Returns:
        ``(1, X, Y, Z)`` float32 tensor, intensities divided by their mean.

    Raises:
        VolumeError: If the volume cannot be used.
    """
    return _load_and_preprocess(path, spacing_mm, shape)[0]


def _load_and_preprocess(
    path: str | Path, spacing_mm: float, shape: Sequence[int]
) -> tuple[torch.Tensor, np.ndarray, Any]:
    """:func:`load_preprocessed`, also returning the result's affine and the loaded image."""
    image = load_volume(path)
    linear = np.asarray(image.affine, dtype=float)[:3, :3]
    target = np.diag([float(spacing_mm)] * 3)
    if not np.allclose(linear, target, rtol=0.0, atol=1e-6 * float(spacing_mm)):
        out = preprocess(image, spacing_mm, shape)
        return out.data.float(), np.asarray(out.affine), image
    tensor = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32)).unsqueeze(0)
    scalar = tio.ScalarImage(tensor=tensor, affine=image.affine)
    cropped = tio.CropOrPad(tuple(int(s) for s in shape))(scalar)
    out = cropped.data.float()
    mean = float(out.mean())
    if not np.isfinite(mean) or mean <= 0:
        raise VolumeError(f"{path}: mean intensity {mean:g} after preprocessing is not positive")
    return out / mean, np.asarray(cropped.affine), image


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _pictures(volume: torch.Tensor, image: Any) -> tuple[bytes, bytes]:
    """The encoder input's strip and the original volume's views (its own voxel size).

    ``image`` is what :func:`motionqc.data.volumes.load_volume` returned: already 3D, RAS+ and in memory.
    """
    from motionqc.app.report import mosaic_png, views_png

    native = np.asarray(image.dataobj, dtype=np.float32)
    return mosaic_png(volume[0].numpy()), views_png(native, image.header.get_zooms()[:3])


class VolumeDataset(Dataset):
    """One preprocessed volume per item; never raises for a bad file.

    Args:
        paths: Volume files.
        spacing_mm: Target voxel size (from the encoder file).
        shape: Target grid (from the encoder file).
        names: One name per path (default: the BIDS name of each file).
        mosaics: Also render the preprocessed volume's strip and the original's views (PNG bytes,
            :func:`motionqc.app.report.mosaic_png`, :func:`motionqc.app.report.views_png`).

    Each item is a dict with ``index``, ``bids_name``, ``path``, ``image`` (``(1, X, Y, Z)``
    float32, or ``None``), ``affine`` (the image's, or ``None``), ``error`` (one line, empty when
    fine), ``mosaic`` and ``views`` (bytes or ``None``).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        spacing_mm: float,
        shape: Sequence[int],
        names: Sequence[str] | None = None,
        mosaics: bool = False,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.names = list(names) if names is not None else [bids_name(p) for p in self.paths]
        if len(self.names) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.names)} names")
        self.spacing_mm = float(spacing_mm)
        self.shape = tuple(int(s) for s in shape)
        self.mosaics = bool(mosaics)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "index": index,
            "bids_name": self.names[index],
            "path": self.paths[index],
            "image": None,
            "affine": None,
            "error": "",
            "mosaic": None,
            "views": None,
        }
        loaded = None
        try:
            record["image"], record["affine"], loaded = _load_and_preprocess(
                self.paths[index], self.spacing_mm, self.shape
            )
        except VolumeError as exc:
            record["error"] = _one_line(exc)
        except Exception as exc:  # noqa: BLE001 - any failure is this volume's, not the run's
            record["error"] = _one_line(f"{self.paths[index]}: {type(exc).__name__}: {exc}")
        if record["image"] is not None and self.mosaics:
            try:
                record["mosaic"], record["views"] = _pictures(record["image"], loaded)
            except Exception:  # noqa: BLE001 - a missing thumbnail is not worth an error row
                record["mosaic"] = record["views"] = None
        return record


def _collate(records: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in records if r["image"] is not None]
    images = torch.stack([r["image"] for r in good]) if good else None
    return {"records": records, "images": images, "good": [r["index"] for r in good]}


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (``PR_SET_PDEATHSIG``).

    A loader worker otherwise outlives a ``score`` killed by SIGKILL or SIGTERM (re-parented to
    PID 1, holding its memory). Ctrl-C is the parent's to handle: workers ignore SIGINT, so an
    interrupted run ends with one line, not a worker's traceback. A no-op off Linux.
    """
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def _worker_init(_: int) -> None:
    _die_with_parent()
    torch.set_num_threads(1)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:  # noqa: BLE001 - SimpleITK is optional here
        pass


# --------------------------------------------------------------------------- model
class Scorer:
    """The encoder (and optional QC head) ready for inference.

    Args:
        checkpoint: Encoder file (:func:`motionqc.models.encoder.save_encoder`).
        qc_head: QC head file (:func:`motionqc.models.qc_head.save_qc_head`) trained on this encoder's
            embeddings; adds class probabilities.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (see :func:`resolve_precision`).
        channels_last: Run in ``channels_last_3d`` memory format.
        threads: torch intra-op threads of this process (default: torch's own choice).

    Raises:
        motionqc.models.encoder.EncoderError: If the encoder file cannot be used.
        ValueError: If the QC head cannot be used with this encoder.
        ImportError: If a QC head is given but :mod:`motionqc.models.qc_head` is missing.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        qc_head: str | Path | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        threads: int | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.checkpoint = Path(checkpoint)
        self.model, self.meta = load_encoder(self.checkpoint, self.device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
            self.autocast_dtype
        ]
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.qc_head = None
        self.qc_pooled = False
        if qc_head is not None:
            from motionqc.models.qc_head import load_qc_head

            head, head_meta = load_qc_head(qc_head, self.checkpoint)
            self.qc_head = head.to(self.device).eval()
            self.qc_pooled = bool(head_meta.get("info", {}).get("pooled", False))
            if int(head_meta["task"]["n_classes"]) != N_QC_CLASSES:
                raise ValueError(
                    f"{qc_head}: a QC head of {head_meta['task']['n_classes']} classes; "
                    f"motionqc score writes {N_QC_CLASSES} (p_qc0..{N_QC_CLASSES - 1})"
                )
            size = (
                self.model.embedding_channels
                if self.qc_pooled
                else self.model.embedding_size(self.meta["shape"])
            )
            if int(head_meta["in_features"]) != size:
                raise ValueError(
                    f"{qc_head}: head reads {head_meta['in_features']} features, the encoder "
                    f"gives {size}"
                )

    @property
    def spacing_mm(self) -> float:
        """Voxel size the encoder was trained on."""
        return float(self.meta["spacing_mm"])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid the encoder was trained on."""
        return tuple(int(s) for s in self.meta["shape"])  # type: ignore[return-value]

    def describe(self) -> dict[str, object]:
        """What ``dataset_description.json`` records about the model."""
        return {
            "checkpoint": str(self.checkpoint.resolve()),
            "sha256": file_sha256(self.checkpoint),
            "spacing_mm": self.spacing_mm,
            "shape": list(self.shape),
            "bin_range": list(self.meta["bin_range"]),
            "input_intensity": self.meta["input_intensity"],
            "temperature": self.meta["temperature"],
            "score_convention": self.meta["score_convention"],
            "precision": self.precision,
            "device": self.device.type,
            "qc_head": self.qc_head is not None,
        }

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Score a batch of preprocessed volumes ``(B, 1, X, Y, Z)``.

        Returns:
            ``motion_mm`` and ``motion_std`` ``(B,)``, the bin ``probabilities`` ``(B, bins)``;
            with a QC head also ``p_qc`` ``(B, 3)``.
        """
        # the intensity scaling the encoder was trained with (recorded in its file)
        x = scale_input(images.to(self.device, non_blocking=True), self.meta["input_intensity"])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            fmap = self.model.encode(x)
            out = self.model.head(fmap)
        out = out.float() / self.meta["temperature"]
        result = {
            "motion_mm": decode(out, self.meta["bin_range"]).cpu().numpy(),
            "motion_std": predictive_std(out, self.meta["bin_range"]).cpu().numpy(),
            "probabilities": torch.softmax(out, 1).cpu().numpy(),
        }
        if self.qc_head is not None:
            z = self.model.embed(fmap.float(), pooled=self.qc_pooled)
            result["p_qc"] = torch.softmax(self.qc_head(z).float(), 1).cpu().numpy()
        return result


def _batch_rows(scorer: Scorer, batch: dict[str, Any]) -> list[dict[str, Any]]:
    records = batch["records"]
    rows = {
        r["index"]: {
            "bids_name": r["bids_name"],
            "path": r["path"],
            "mosaic": r["mosaic"],
            "views": r.get("views"),
            "image": r.get("image"),
            "affine": r.get("affine"),
            "status": "error" if r["error"] else "ok",
            "error": r["error"],
        }
        for r in records
    }
    good = batch["good"]
    if good:
        try:
            outputs = [scorer.predict(batch["images"])]
            groups = [good]
        except Exception:  # noqa: BLE001 - retry one by one to find the volume at fault
            outputs, groups = [], []
            for k, index in enumerate(good):
                try:
                    outputs.append(scorer.predict(batch["images"][k : k + 1]))
                    groups.append([index])
                except Exception as exc:  # noqa: BLE001
                    row = rows[index]
                    row["status"] = "error"
                    row["error"] = _one_line(f"inference failed: {type(exc).__name__}: {exc}")
        for out, indices in zip(outputs, groups, strict=True):
            for k, index in enumerate(indices):
                row = rows[index]
                row["motion_mm"] = float(out["motion_mm"][k])
                row["motion_std"] = float(out["motion_std"][k])
                row["bins"] = [float(v) for v in out["probabilities"][k]]
                if "p_qc" in out:
                    p = out["p_qc"][k]
                    row.update({f"p_qc{c}": float(p[c]) for c in range(len(p))})
                    row["qc_class"] = int(np.argmax(p))
                if not np.isfinite(row["motion_mm"]):
                    row["status"] = "error"
                    row["error"] = "inference gave a non-finite score"
    return [rows[r["index"]] for r in records]


def score_volumes(
    scorer: Scorer,
    paths: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    mosaics: bool = False,
    prefetch_factor: int = 2,
    inputs: bool = False,
) -> Iterator[dict[str, Any]]:
    """Score volumes in input order, loading them in worker processes.

    Args:
        scorer: The model.
        paths: Volume files.
        names: One name per file (default: BIDS names).
        batch_size: Volumes per forward pass (default :func:`default_batch_size` of the
            scorer's device).
        num_workers: Loader processes (0: load in this process; default
            :func:`default_num_workers` of the scorer's device).
        mosaics: Also render the encoder input's strip (``row["mosaic"]``) and the original
            volume's views (``row["views"]``), PNG bytes.
        prefetch_factor: Batches each worker prepares ahead.
        inputs: Also yield the encoder's input of each volume (``image`` ``(1, X, Y, Z)`` and
            its ``affine``; ``None`` for a volume that failed); off, a caller that keeps the rows
            does not keep every volume with them.

    Yields:
        One dict per volume: ``bids_name``, ``path``, ``status`` (``ok``/``error``), ``error``,
        ``motion_mm``, ``motion_std``, the bin probabilities ``bins``, with a QC head
        ``p_qc0..2`` and ``qc_class``, ``mosaic`` and ``views`` (and ``image``, ``affine``).
    """
    if batch_size is None:
        batch_size = default_batch_size(scorer.device.type)
    if num_workers is None:
        num_workers = default_num_workers(scorer.device.type)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = VolumeDataset(paths, scorer.spacing_mm, scorer.shape, names=names, mosaics=mosaics)
    if len(dataset) == 0:
        return
    workers = max(0, min(int(num_workers), len(dataset)))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=prefetch_factor if workers else None,
        pin_memory=scorer.device.type == "cuda",
    )
    for batch in loader:
        for row in _batch_rows(scorer, batch):
            if not inputs:
                row.pop("image", None)
                row.pop("affine", None)
            yield row


# --------------------------------------------------------------------------- BIDS steps
def mosaic_path(output_dir: str | Path, name: str) -> Path:
    """Where the mosaic of a volume goes: ``<out>/sub-<label>/figures/<bids_name>_mosaic.png``."""
    subject = parse_entities(name).get("sub", "unknown")
    return Path(output_dir) / f"sub-{subject}" / "figures" / f"{name}_mosaic.png"


def views_path(output_dir: str | Path, name: str) -> Path:
    """Where the original volume's views go: ``<out>/sub-<label>/figures/<bids_name>_views.png``."""
    return mosaic_path(output_dir, name).with_name(f"{name}_views.png")


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
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.nii.gz")
    nib.save(image, tmp)
    os.replace(tmp, target)
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
    }
    if row.get("qc_class") not in (None, ""):
        sidecar["QCClass"] = int(row["qc_class"])
        sidecar["QCProbabilities"] = [
            float(row[f"p_qc{c}"]) for c in QC_CLASS_IDS if row.get(f"p_qc{c}") is not None
        ]
    _write_bytes(sidecar_path(target), (json.dumps(sidecar, indent=2) + "\n").encode())


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
        ValueError: If ``output_dir`` is inside ``bids_dir``, or it holds scores of another
            encoder, or its table has other columns, or another process is scoring the same
            shard into it (:func:`shard_lock`).
        motionqc.data.volumes.ManifestError: If ``bids_dir`` is not a folder.
        motionqc.models.encoder.EncoderError: If the encoder cannot be loaded.
    """
    log = log or (lambda _msg: None)
    index, count = shard
    files = find_t1w(bids_dir, list(participant_label) if participant_label else None)
    if not (Path(bids_dir) / "dataset_description.json").is_file():
        log(
            f"warning: {bids_dir}: no dataset_description.json, so not a valid BIDS dataset; "
            "scoring the T1w images found anyway"
        )
    out = check_output_dir(bids_dir, output_dir)
    files = shard_items(files, index, count)
    with shard_lock(out, index, count):
        table = ResultTable(shard_table(out, index, count), COLUMNS)
        summary = ParticipantSummary(table=table.path, selected=len(files))
        if not files:
            log(f"no T1w image selected in {bids_dir} (shard {index}/{count})")
            return summary
        target = resolve_device(device)
        workers = default_num_workers(target.type) if num_workers is None else int(num_workers)
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
            _score_into(
                scorer,
                files,
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


@contextlib.contextmanager
def shard_lock(output_dir: Path, index: int, count: int) -> Iterator[None]:
    """Hold an exclusive lock on one shard of a derivative folder while it is scored.

    Args:
        output_dir: The derivative folder.
        index: Shard index.
        count: Number of shards.

    Raises:
        ValueError: On entry (one line), when another process holds the lock (the same shard
            started twice would score every volume twice).
    """
    import fcntl

    lock_path = Path(output_dir) / f".motionqc-shard-{index:04d}of{count:04d}.lock"
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{output_dir}: shard {index}/{count} is being scored by another motionqc "
                f"process (lock {lock_path.name}); wait for it to end or score another shard"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _score_into(
    scorer: Scorer,
    files: list[Path],
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
    model_info = scorer.describe()
    _check_same_model(out, model_info)
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
    log(
        f"{len(files)} T1w selected, {summary.skipped} already in {table.path.name}, "
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


def _display_class(row: dict[str, Any]) -> str:
    try:
        label = int(float(str(row.get("qc_class", ""))))
    except ValueError:
        return ""
    p = row.get(f"p_qc{label}", "")
    return QC_LABELS.get(label, str(label)) + (f", p {float(p):.2f}" if p not in ("", None) else "")


def run_group(output_dir: str | Path, title: str | None = None) -> Path:
    """The ``group`` step: merge the participant tables and write ``report.html``.

    Args:
        output_dir: The derivative folder.
        title: Report title (default: ``motionqc report: <source dataset>``).

    Returns:
        The report's path (the merged table is ``output_dir/group_T1w.tsv``).

    Raises:
        ValueError: If the folder holds no participant table.
    """
    from motionqc.app.report import dataset_key, read_bins, write_report

    out = Path(output_dir)
    merged = merge_shards(out)
    mosaics, views, bins = {}, {}, {}
    bin_range = None
    for name in merged["bids_name"]:
        png = mosaic_path(out, name)
        if png.is_file():
            mosaics[name] = png.read_bytes()
        png = views_path(out, name)
        if png.is_file():
            views[name] = png.read_bytes()
        nifti = derivative_path(out, name)
        found = read_bins(sidecar_path(nifti)) if nifti else None
        if found is not None:
            bins[name], bin_range = found
    shown = merged.copy()
    if "qc_class" in shown.columns:
        shown["qc_value"] = shown["qc_class"]
        shown["qc_class"] = [_display_class(row) for row in shown.to_dict("records")]
    source = str(out.resolve())
    try:
        source = json.loads((out / "dataset_description.json").read_text())["SourceDatasets"][0][
            "URL"
        ]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    if title is None:
        title = "motionqc report"
        if source.startswith("file:"):
            title = f"motionqc report: {Path(unquote(urlparse(source).path)).name}"
    return write_report(
        shown,
        out / "report.html",
        mosaics,
        title=title,
        views=views,
        bins=bins,
        bin_range=bin_range,
        key=dataset_key(source),
    )


def group_table(output_dir: str | Path) -> pd.DataFrame:
    """Read the merged ``group_T1w.tsv`` of a derivative folder."""
    return pd.read_csv(Path(output_dir) / GROUP_TABLE, sep="\t", dtype=str, keep_default_na=False)

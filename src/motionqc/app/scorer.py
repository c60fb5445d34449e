"""The encoder at inference: motion score, its spread and the QC probabilities of a batch.

:class:`Scorer` runs the encoder under ``torch.inference_mode`` in ``channels_last_3d`` memory
format with bf16 autocast on CPUs that support it (AMP on CUDA: bf16, or fp16 where bf16 is not
supported) and returns the motion score (mm), its predictive standard deviation and, when a QC
head file is given, the QC class probabilities. :func:`score_volumes` runs it over volumes in
input order, one result per volume.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from motionqc.app.guards import loader_workers
from motionqc.app.loading import VolumeDataset, collate_records, loader_worker_init, one_line
from motionqc.data.volumes import file_sha256
from motionqc.models.encoder import encoder_forward, load_encoder
from motionqc.models.soft_labels import decode, predictive_std
from motionqc.qc_task import N_QC_CLASSES
from motionqc.runtime.devices import (
    default_batch_size,
    default_num_workers,
    resolve_device,
    resolve_precision,
)

__all__ = ["Scorer", "batch_rows", "score_volumes"]


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
            "detail_mm": self.meta.get("detail_mm"),
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
        # the intensity scaling and temperature the encoder was trained with (in its file)
        fmap, out = encoder_forward(
            self.model,
            images,
            input_intensity=self.meta["input_intensity"],
            temperature=self.meta["temperature"],
            autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last,
        )
        result = {
            "motion_mm": decode(out, self.meta["bin_range"]).cpu().numpy(),
            "motion_std": predictive_std(out, self.meta["bin_range"]).cpu().numpy(),
            "probabilities": torch.softmax(out, 1).cpu().numpy(),
        }
        if self.qc_head is not None:
            z = self.model.embed(fmap.float(), pooled=self.qc_pooled)
            result["p_qc"] = torch.softmax(self.qc_head(z).float(), 1).cpu().numpy()
        return result


def batch_rows(scorer: Scorer, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One result row per record of a batch; a batch that fails is retried volume by volume."""
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
                    row["error"] = one_line(f"inference failed: {type(exc).__name__}: {exc}")
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
            :func:`default_num_workers` of the scorer's device), at most one per volume and
            per usable core.
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
    dataset = VolumeDataset(
        paths,
        scorer.spacing_mm,
        scorer.shape,
        names=names,
        mosaics=mosaics,
        detail_mm=scorer.meta.get("detail_mm"),
    )
    if len(dataset) == 0:
        return
    workers = loader_workers(num_workers, len(dataset))  # no more than volumes or cores
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_records,
        worker_init_fn=loader_worker_init if workers else None,
        prefetch_factor=prefetch_factor if workers else None,
        pin_memory=scorer.device.type == "cuda",
    )
    for batch in loader:
        for row in batch_rows(scorer, batch):
            if not inputs:
                row.pop("image", None)
                row.pop("affine", None)
            yield row

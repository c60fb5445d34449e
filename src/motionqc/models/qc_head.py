"""The QC head file: a transfer head with its feature standardisation, its task and its encoder.

:func:`save_qc_head` writes the head (plain types only, read back with ``weights_only=True``),
the digest of the encoder whose embeddings it reads, and the QC task it was trained for
(:func:`motionqc.qc_task.task_record`); :func:`load_qc_head` refuses a head of another
encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from motionqc.models.encoder import foreign_file_kind
from motionqc.models.sfcn import QCHead
from motionqc.qc_task import N_QC_CLASSES, task_record

if TYPE_CHECKING:
    from motionqc.training.transfer import QCRun

__all__ = ["QC_HEAD_FORMAT", "Standardise", "file_digest", "load_qc_head", "save_qc_head"]


QC_HEAD_FORMAT = "motionqc-qchead/1"


def file_digest(path: str | Path) -> str:
    """Return the first 16 hex digits of a file's SHA-256 (the embedding cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class Standardise(nn.Module):
    """Fixed feature standardisation (train-set mean and std), saved with the head."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(z − mean) / std``."""
        return (z - self.mean) / self.std


def save_qc_head(path: str | Path, run: QCRun, encoder_path: str | Path, info: dict) -> Path:
    """Save a transfer head with the digest of the encoder it was trained on.

    Args:
        path: Output ``.pt`` file.
        run: A :func:`motionqc.training.transfer.train_transfer` result.
        encoder_path: The encoder file whose embeddings the head reads.
        info: Anything else (seed, metrics, pooled flag).

    Returns:
        The path written.

    Raises:
        ValueError: If the head's outputs are not the QC task's classes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = run.model
    qc = head[1]  # type: ignore[index]
    if int(qc.net[-1].out_features) != N_QC_CLASSES:
        raise ValueError(
            f"a head of {qc.net[-1].out_features} classes; the QC task has {N_QC_CLASSES}"
        )
    state = {
        "format": QC_HEAD_FORMAT,
        "model": head.state_dict(),
        "in_features": int(qc.in_features),
        "hidden": int(qc.net[1].out_features),
        "dropout": float(qc.net[0].p),
        "encoder_digest": file_digest(encoder_path),
        "task": task_record(),
        "info": json.loads(json.dumps(dict(info))),  # plain types: read with weights_only
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_qc_head(
    path: str | Path, encoder_path: str | Path | None = None
) -> tuple[nn.Module, dict]:
    """Load a head written by :func:`save_qc_head` (checking it matches the encoder when given).

    Returns:
        ``(head, meta)``; ``head(z)`` gives class logits for embeddings ``z``; ``meta["task"]``
        is the QC task the head was trained for (:func:`motionqc.qc_task.task_record`).

    Raises:
        ValueError: If the file is not a QC head or was trained on another encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no QC head file")
    foreign = foreign_file_kind(path)
    if foreign is not None:
        raise ValueError(f"{path}: {foreign}, not a QC head file (pass qc_head.pt)")
    try:  # weights_only: a QC head from someone else can hold no code to run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(
            f"{path}: not a readable QC head file, not loaded ({type(exc).__name__})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != QC_HEAD_FORMAT:
        raise ValueError(f"{path}: not a motionqc QC head ({QC_HEAD_FORMAT})")
    if encoder_path is not None and file_digest(encoder_path) != state["encoder_digest"]:
        raise ValueError(f"{path}: trained on another encoder than {encoder_path}")
    d = state["in_features"]
    task = state.get("task") or task_record()  # files before the task was recorded: the poster's
    head = nn.Sequential(
        Standardise(torch.zeros(d), torch.ones(d)),
        QCHead(d, hidden=state["hidden"], dropout=state["dropout"], n_classes=task["n_classes"]),
    )
    head.load_state_dict(state["model"])
    head.eval()
    meta = {k: state[k] for k in ("in_features", "hidden", "dropout", "encoder_digest", "info")}
    return head, meta | {"task": task}

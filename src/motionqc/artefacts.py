"""What one notebook hands the next: every file passed between stages, named in one place.

Each function returns the path of one artefact of a profile's run, under
:func:`motionqc.paths.checkpoints_dir` (``MOTIONQC_CHECKPOINTS`` moves a whole run elsewhere); its
folder is created, the file may not exist yet. Notebooks and stages take these paths instead of
building their own, so the writer and its readers cannot drift apart.

============================  ==================  ==========================================
artefact                      written by          read by
============================  ==================  ==========================================
:func:`encoder`               03 (pretraining)    04, 05 (its widths), 07, ``motionqc score``
:func:`stage_dir`             03, 04, 05          06 (each stage's ``resources.json``)
:func:`resources`             03, 04, 05          06 (the efficiency table)
:func:`qc_set`                04 (QC set)         05 (the same volumes, labels and splits)
:func:`embedding_cache`       04                  04 (a re-run with the same encoder)
:func:`qc_head`               04                  ``motionqc score --qc-head``
============================  ==================  ==========================================

Tables and figures for readers go to :func:`motionqc.paths.tables_dir` and
:func:`motionqc.paths.figures_dir`; they are results, not hand-overs.
"""

from __future__ import annotations

from pathlib import Path

from motionqc import paths

__all__ = [
    "STAGES",
    "encoder",
    "embedding_cache",
    "qc_head",
    "qc_set",
    "resources",
    "run_root",
    "stage_dir",
]

STAGES = ("pretrain", "transfer", "scratch")
"""The stages whose resource logs the efficiency table compares (notebook 06)."""


def run_root(profile: str) -> Path:
    """``checkpoints/<profile>/``: the folder of a profile's run."""
    folder = paths.checkpoints_dir() / profile
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def encoder(profile: str) -> Path:
    """``checkpoints/<profile>/encoder.pt``: the motion encoder notebook 03 trained."""
    return run_root(profile) / "encoder.pt"


def stage_dir(profile: str, stage: str) -> Path:
    """``checkpoints/<profile>/<stage>/``: a stage's checkpoints and logs.

    Raises:
        ValueError: If ``stage`` is not one of :data:`STAGES`.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    folder = run_root(profile) / stage
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def resources(profile: str, stage: str) -> Path:
    """``checkpoints/<profile>/<stage>/resources.json``: the stage's time, memory and power."""
    return stage_dir(profile, stage) / "resources.json"


def qc_set(profile: str) -> Path:
    """``checkpoints/<profile>/qc_set.pt``: notebook 04's QC volumes, labels and splits."""
    return run_root(profile) / "qc_set.pt"


def embedding_cache(profile: str, encoder_digest: str) -> Path:
    """``checkpoints/<profile>/embeddings_<digest>_<profile>.pt``, keyed by the encoder file."""
    return run_root(profile) / f"embeddings_{encoder_digest}_{profile}.pt"


def qc_head(profile: str) -> Path:
    """``checkpoints/<profile>/qc_head.pt``: the QC head of the best seed on validation."""
    return run_root(profile) / "qc_head.pt"

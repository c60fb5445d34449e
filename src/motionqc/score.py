"""``motionqc.score``: :mod:`motionqc.physics.score` under its name before the layout."""

from __future__ import annotations

from motionqc.physics.score import (  # noqa: F401 - re-exported
    AUTHORS_RADIUS,
    SCORE_CONVENTION,
    ScoreConvention,
    authors_matrices,
    motion_score,
    rms_deviation,
    score_motion,
    volume_center,
)

__all__ = [
    "AUTHORS_RADIUS",
    "ScoreConvention",
    "SCORE_CONVENTION",
    "volume_center",
    "rms_deviation",
    "motion_score",
    "authors_matrices",
    "score_motion",
]

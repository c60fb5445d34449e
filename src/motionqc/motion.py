"""``motionqc.motion``: :mod:`motionqc.physics.motion` under its name before the layout.

It also keeps the names ``motionqc.motion`` re-exported before the layout from the score, the
transforms and the synthetic set (their homes: :mod:`motionqc.physics.score`,
:mod:`motionqc.physics.transforms`, :mod:`motionqc.synthetic.parameters`,
:mod:`motionqc.synthetic.motion_sets`).
"""

from __future__ import annotations

from motionqc.physics import motion as _motion
from motionqc.physics.motion import *  # noqa: F403 - the home's names, re-exported
from motionqc.physics.score import (  # noqa: F401 - re-exported
    authors_matrices,
    motion_score,
    rms_deviation,
    score_motion,
    volume_center,
)
from motionqc.physics.transforms import MotionTransform, RandomMotionTransform  # noqa: F401
from motionqc.synthetic.motion_sets import (  # noqa: F401 - re-exported
    SyntheticMotionDataset,
    build_parameter_table,
    export_nifti,
    split_sources,
)
from motionqc.synthetic.parameters import sample_authors_motion, sample_motion  # noqa: F401

__all__ = [
    *_motion.__all__,
    "MotionTransform",
    "RandomMotionTransform",
    "rms_deviation",
    "motion_score",
    "score_motion",
    "volume_center",
    "authors_matrices",
    "sample_motion",
    "sample_authors_motion",
    "build_parameter_table",
    "split_sources",
    "SyntheticMotionDataset",
    "export_nifti",
]

"""``motionqc.motion``: :mod:`motionqc.physics.motion` under its name before the layout."""

from __future__ import annotations

from motionqc.physics.motion import (  # noqa: F401 - re-exported
    BACKENDS,
    check_affine,
    check_params,
    head_poses,
    itk_euler_matrix,
    kspace_weights,
    resampling_transforms,
    rigid_matrices,
    simulate_motion,
)

__all__ = [
    "BACKENDS",
    "check_affine",
    "check_params",
    "head_poses",
    "itk_euler_matrix",
    "resampling_transforms",
    "rigid_matrices",
    "kspace_weights",
    "simulate_motion",
]

"""Motion parameters drawn at a target score: the poster's sampler and a direct one.

:func:`sample_motion` builds parameters whose motion score equals a target directly (random
direction, scale solved by root finding); :func:`sample_scored_motion` is the sampler of the
recipe and ``motionqc simulate`` (the score under
:data:`motionqc.physics.score.SCORE_CONVENTION`); :func:`sample_authors_motion` reproduces the
authors' sampler (rejection around a uniform target); :func:`torchio_times` draws the times of
the poses in k-space as TorchIO does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq

from motionqc.physics.motion import head_poses
from motionqc.physics.score import (
    AUTHORS_CONVENTION,
    SCORE_CONVENTION,
    ScoreConvention,
    as_convention,
    motion_score,
    score_motion,
)

__all__ = [
    "MotionParams",
    "sample_authors_motion",
    "sample_motion",
    "sample_scored_motion",
    "seeded_rng",
    "torchio_times",
]


MotionParams = dict
"""A motion: ``{"degrees": (n, 3), "translation": (n, 3), "times": (n,), "n": int, "score": float}``."""


def seeded_rng(seed: int) -> np.random.Generator:
    """A numpy generator from a non-negative integer seed (anything else is refused)."""
    if seed is None or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def torchio_times(n: int, rng: np.random.Generator, perturbation: float = 0.3) -> np.ndarray:
    """Times as ``tio.RandomMotion`` draws them: evenly spaced in (0, 1), ±30 % jitter of the step.

    Args:
        n: Number of transforms.
        rng: Random generator.
        perturbation: Jitter as a fraction of the step.

    Returns:
        Sorted float32 times, shape (n,).
    """
    step = 1.0 / (n + 1)
    base = np.arange(1, n + 1) * step
    return (base + rng.uniform(-step * perturbation, step * perturbation, n)).astype(np.float32)


def sample_motion(
    target: float,
    seed: int,
    n: int | None = None,
    *,
    n_range: tuple[int, int] = (2, 8),
    max_degrees_per_mm: float = 1.0 / 3.0,
    affine: object | None = None,
    shape: Sequence[int] | None = None,
    convention: ScoreConvention | str = SCORE_CONVENTION,
    center: object = None,
    **fields: object,
) -> MotionParams:
    """Draw motion parameters whose score equals ``target`` (to ~1e-6 mm), without rejection.

    A random direction is drawn (per-axis uniform rotations and translations, the rotation share
    itself random and at most ``max_degrees_per_mm`` degrees per mm of translation range, as in
    the authors' sampler); the direction is then scaled, the scale solved with Brent's method so
    that :func:`motionqc.physics.score.score_motion` equals the target.

    Args:
        target: Wanted score in mm (0 gives no motion: a single identity transform).
        seed: Seed of every random draw; the same seed gives the same parameters.
        n: Number of transforms; drawn from ``n_range`` (numpy ``integers``, upper exclusive)
            when omitted.
        n_range: Range of ``n`` when drawn.
        max_degrees_per_mm: Largest rotation range relative to the translation range.
        affine: Image affine (for a volume-centred sphere).
        shape: Image shape (for a volume-centred sphere).
        convention: The score's :class:`~motionqc.physics.score.ScoreConvention` (default
            ``SCORE_CONVENTION``) or its rotations by name.
        center: Sphere centre in world mm, overriding the convention's.
        **fields: Convention fields to override (``radius=``, ``pairs=``;
            :func:`motionqc.physics.score.as_convention`).

    Returns:
        Dict with ``degrees`` (n, 3), ``translation`` (n, 3), ``times`` (n,), ``n``, ``score``.

    Raises:
        ValueError: For a negative or non-finite target, a bad seed or a bad ``n``.
    """
    if not np.isfinite(target) or target < 0:
        raise ValueError(f"target must be a non-negative number of mm, got {target}")
    conv = as_convention(convention, **fields)
    rng = seeded_rng(seed)
    if n is None:
        lo, hi = n_range
        if lo < 1 or hi <= lo:
            raise ValueError(f"n_range must be (low >= 1, high > low), got {n_range}")
        n = int(rng.integers(lo, hi))
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    n = int(n)
    times = torchio_times(n, rng)
    rot_share = rng.uniform(0.0, max_degrees_per_mm)
    deg_dir = rng.uniform(-1.0, 1.0, (n, 3)) * rot_share
    tra_dir = rng.uniform(-1.0, 1.0, (n, 3))
    where = conv.sphere_center(affine, shape, center)

    def score(scale: float) -> float:
        return score_motion(deg_dir * scale, tra_dir * scale, convention=conv, center=where)

    if target == 0:
        scale = 0.0
    else:
        hi = max(target, 1e-3)
        while score(hi) < target:
            hi *= 2.0
            if hi > 1e6:
                raise ValueError(f"cannot reach a score of {target} mm")
        scale = brentq(lambda s: score(s) - target, 0.0, hi, xtol=1e-10, rtol=1e-12)
    deg, tra = deg_dir * scale, tra_dir * scale
    return {"degrees": deg, "translation": tra, "times": times, "n": n, "score": score(scale)}


def sample_scored_motion(
    target: float,
    seed: int,
    n: int | None = None,
    *,
    affine: object,
    shape: Sequence[int],
    convention: ScoreConvention = SCORE_CONVENTION,
) -> MotionParams:
    """:func:`sample_motion` for an image: the sampler of the recipe and ``motionqc simulate``.

    Args:
        target: Wanted score in mm.
        seed: Seed of every draw.
        n: Number of transforms (drawn from the seed when omitted).
        affine: The image's voxel-to-RAS matrix.
        shape: The image's spatial shape.
        convention: The score convention (default: motionqc's one, ``SCORE_CONVENTION``).

    Returns:
        As :func:`sample_motion`.
    """
    return sample_motion(target, seed, n, affine=affine, shape=shape, convention=convention)


def sample_authors_motion(
    seed: int,
    *,
    target_range: tuple[float, float] = (0.05, 4.0),
    n_range: tuple[int, int] = (2, 8),
    tolerance: float = 0.01,
    p_motion_free: float = 0.05,
    free_range: tuple[float, float] = (0.0, 0.05),
    convention: ScoreConvention | str = AUTHORS_CONVENTION,
    radius: float | None = None,
    batch: int = 256,
    max_tries: int = 200_000,
) -> dict[str, object]:
    """The authors' sampler: uniform target, TorchIO-style draws, rejection within a tolerance.

    Following their ``CustomMotion`` / ``CreateSynthVolume``: target ~ U(0.05, 4) mm, rotation
    range d ~ U(0, min(target / 3, 1)) degrees, angles ~ U(−d, d) and translations
    ~ U(−target, target) mm per axis, n ~ randint(2, 8); draws are repeated until the score
    (their convention: rotation vectors, consecutive pairs, R = 82.5 mm, world origin) is within
    ``tolerance`` of the target. A fraction ``p_motion_free`` of samples has no motion and a
    label drawn from U(0, 0.05).

    Args:
        seed: Seed of every draw.
        target_range: Range of the uniform target, mm.
        n_range: Range of the number of transforms (upper exclusive).
        tolerance: Accepted |score − target|, mm.
        p_motion_free: Probability of a motion-free sample.
        free_range: Label range of motion-free samples.
        convention: Score convention of the acceptance (default: the authors' own,
            :data:`motionqc.physics.score.AUTHORS_CONVENTION`; a name, ``"authors"`` or
            ``"applied"``, is that convention with those rotations; a volume-centred one is
            centred on the world origin here, the sampler knowing no image).
        radius: Sphere radius overriding the convention's (mm).
        batch: Candidates scored per vectorised round.
        max_tries: Give up after this many candidates.

    Returns:
        Dict with ``degrees``, ``translation``, ``times``, ``n``, ``target``, ``score`` (the
        accepted score, 0 when motion-free), ``label`` (the training label) and ``motion_free``.

    Raises:
        ValueError: For bad ranges or probabilities, or if no draw is accepted.
    """
    if not 0 <= p_motion_free <= 1:
        raise ValueError(f"p_motion_free must be in [0, 1], got {p_motion_free}")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    if isinstance(convention, str):
        convention = as_convention(AUTHORS_CONVENTION, rotations=convention)
    convention = as_convention(convention, radius=radius)
    rng = seeded_rng(seed)
    if rng.uniform() < p_motion_free:
        label = float(rng.uniform(*free_range))
        empty = np.zeros((0, 3))
        return {
            "degrees": empty,
            "translation": empty,
            "times": np.zeros(0, np.float32),
            "n": 0,
            "target": label,
            "score": 0.0,
            "label": label,
            "motion_free": True,
        }
    target = float(rng.uniform(*target_range))
    n = int(rng.integers(*n_range))
    d = rng.uniform(0.0, min(target / 3.0, 1.0))
    tried = 0
    while tried < max_tries:
        deg = rng.uniform(-d, d, (batch, n, 3))
        tra = rng.uniform(-target, target, (batch, n, 3))
        mats = head_poses(deg, tra, convention.rotations)
        scores = motion_score(mats, radius=convention.radius, pairs=convention.pairs)
        ok = np.flatnonzero(np.abs(scores - target) <= tolerance)
        tried += batch
        if ok.size:
            i = int(ok[0])
            times = torchio_times(n, rng)
            return {
                "degrees": deg[i],
                "translation": tra[i],
                "times": times,
                "n": n,
                "target": target,
                "score": float(scores[i]),
                "label": float(scores[i]),
                "motion_free": False,
            }
    raise ValueError(f"no draw within {tolerance} mm of {target:.3f} mm after {max_tries} tries")

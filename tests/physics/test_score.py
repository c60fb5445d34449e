"""Jenkinson's RMS deviation and the motion score."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from motionqc.physics.motion import rigid_matrices
from motionqc.physics.score import (
    AUTHORS_RADIUS,
    authors_matrices,
    motion_score,
    rms_deviation,
    score_motion,
    volume_center,
)


def random_rigid(rng: np.random.Generator, angle: float = 0.1, shift: float = 3.0) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(rng.normal(0, angle, 3)).as_matrix()
    m[:3, 3] = rng.normal(0, shift, 3)
    return m


def monte_carlo_rms(m1, m2, radius, center, n=1_000_000, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    v *= radius * rng.uniform(size=(n, 1)) ** (1 / 3) / np.linalg.norm(v, axis=1, keepdims=True)
    x = v + center
    m = m1 @ np.linalg.inv(m2) - np.eye(4)
    d = x @ m[:3, :3].T + m[:3, 3]
    return np.sqrt((d**2).sum(1).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_matches_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    m1, m2 = random_rigid(rng), random_rigid(rng)
    center = rng.normal(0, 20, 3)
    for radius in (50.0, 80.0):
        closed = rms_deviation(m1, m2, radius, center)
        assert abs(closed - monte_carlo_rms(m1, m2, radius, center, seed=seed)) <= 1e-3 * closed


def test_identity_translation_symmetry():
    assert rms_deviation(np.eye(4), np.eye(4)) == 0.0
    t = np.eye(4)
    t[:3, 3] = [3.0, -4.0, 12.0]
    assert rms_deviation(t) == pytest.approx(13.0)
    assert rms_deviation(t, radius=10, center=[50, 0, 0]) == pytest.approx(13.0)
    rng = np.random.default_rng(4)
    for _ in range(5):
        a, b = random_rigid(rng), random_rigid(rng)
        c = rng.normal(0, 30, 3)
        assert rms_deviation(a, b, 80, c) == pytest.approx(rms_deviation(b, a, 80, c))
    stack = np.stack([random_rigid(rng) for _ in range(4)])
    np.testing.assert_allclose(rms_deviation(stack), [rms_deviation(m) for m in stack])


def test_motion_score_pairs():
    rng = np.random.default_rng(5)
    mats = np.stack([np.eye(4)] + [random_rigid(rng) for _ in range(4)])
    consecutive = np.mean([rms_deviation(mats[k + 1], mats[k]) for k in range(4)])
    all_pairs = np.mean(
        [rms_deviation(mats[j], mats[i]) for i in range(5) for j in range(i + 1, 5)]
    )
    assert motion_score(mats) == pytest.approx(consecutive)
    assert motion_score(mats, pairs="all") == pytest.approx(all_pairs)
    assert motion_score(mats[:2]) == pytest.approx(motion_score(mats[:2], pairs="all"))
    assert motion_score(mats[:1]) == 0.0
    batch = np.stack([mats, mats[[0, 2, 1, 4, 3]]])
    np.testing.assert_allclose(motion_score(batch), [motion_score(m) for m in batch])


def test_score_rises_with_severity_and_zero_for_no_motion():
    rng = np.random.default_rng(6)
    deg, tra = rng.uniform(-1, 1, (4, 3)), rng.uniform(-1, 1, (4, 3))
    scores = [score_motion(deg * s, tra * s) for s in (0, 0.5, 1, 2, 4)]
    assert scores[0] == 0.0 and scores == sorted(scores)


def test_pure_translation_score_is_displacement():
    tra = np.array([[3.0, 0, 4.0]])
    assert score_motion(np.zeros((1, 3)), tra) == pytest.approx(5.0)
    assert score_motion(np.zeros((1, 3)), tra, convention="authors") == pytest.approx(5.0)


def test_authors_convention_close_to_applied():
    rng = np.random.default_rng(7)
    ratios = []
    for _ in range(50):
        deg, tra = rng.uniform(-1, 1, (4, 3)), rng.uniform(-2, 2, (4, 3))
        applied = score_motion(deg, tra, radius=AUTHORS_RADIUS)
        authors = score_motion(deg, tra, radius=AUTHORS_RADIUS, convention="authors")
        ratios.append(authors / applied)
    assert abs(np.mean(ratios) - 1) < 0.02
    np.testing.assert_allclose(authors_matrices([[0, 0, 90]], [[1, 2, 3]])[1, :3, 3], [1, 2, 3])


def test_volume_center_and_default_center():
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -120], [0, 0, 2.0, -70], [0, 0, 0, 1]])
    np.testing.assert_allclose(volume_center(affine, (91, 109, 91)), [0.0, -12.0, 20.0])
    deg, tra = np.array([[2.0, 0, 0]]), np.zeros((1, 3))
    at_center = score_motion(deg, tra, affine, (91, 109, 91))
    explicit = motion_score(rigid_matrices(deg, tra), center=volume_center(affine, (91, 109, 91)))
    assert at_center == pytest.approx(explicit)
    assert at_center != pytest.approx(score_motion(deg, tra))  # world origin differs


def test_bad_arguments():
    with pytest.raises(ValueError, match="4x4"):
        rms_deviation(np.eye(3))
    with pytest.raises(ValueError, match="radius"):
        rms_deviation(np.eye(4), radius=0)
    with pytest.raises(ValueError, match="center"):
        rms_deviation(np.eye(4), center=[1, 2])
    with pytest.raises(ValueError, match="pairs"):
        motion_score(np.stack([np.eye(4)] * 2), pairs="some")
    with pytest.raises(ValueError, match="convention"):
        score_motion(np.zeros((1, 3)), np.zeros((1, 3)), convention="fsl")


def test_a_convention_value_is_the_scores_every_field():
    from motionqc.physics.score import (
        AUTHORS_CONVENTION,
        SCORE_CONVENTION,
        ScoreConvention,
        as_convention,
    )

    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -120], [0, 0, 2.0, -70], [0, 0, 0, 1]])
    shape = (91, 109, 91)
    rng = np.random.default_rng(9)
    deg, tra = rng.uniform(-2, 2, (5, 3)), rng.uniform(-3, 3, (5, 3))
    # the authors' label: rotation vectors, 82.5 mm, the world origin even for an image
    authors = score_motion(deg, tra, affine, shape, convention=AUTHORS_CONVENTION)
    assert authors == pytest.approx(motion_score(authors_matrices(deg, tra), radius=82.5))
    # each field counts: all pairs, another radius, the origin instead of the volume centre
    ours = score_motion(deg, tra, affine, shape)
    poses, centre = rigid_matrices(deg, tra), volume_center(affine, shape)
    assert ours == pytest.approx(motion_score(poses, center=centre))
    every_pair = ScoreConvention(pairs="all")
    assert score_motion(deg, tra, affine, shape, convention=every_pair) == pytest.approx(
        motion_score(poses, center=centre, pairs="all")
    )
    at_origin = ScoreConvention(center="origin", radius=60.0)
    assert score_motion(deg, tra, affine, shape, convention=at_origin) == pytest.approx(
        motion_score(poses, radius=60.0)
    )
    # the keywords of before name the same conventions
    assert as_convention("authors", radius=82.5) == ScoreConvention("authors", radius=82.5)
    assert score_motion(deg, tra, affine, shape, pairs="all") == pytest.approx(
        score_motion(deg, tra, affine, shape, convention=every_pair)
    )
    assert as_convention() is SCORE_CONVENTION
    for bad in ({"rotations": "fsl"}, {"pairs": "some"}, {"radius": -1.0}, {"center": "brain"}):
        with pytest.raises(ValueError):
            ScoreConvention(**bad)
    with pytest.raises(ValueError, match="not a field"):
        as_convention(SCORE_CONVENTION, sphere=80.0)

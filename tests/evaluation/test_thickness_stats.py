"""Tests for motionqc.evaluation.thickness_stats: the motion statistics on data with a known slope.

No ANTs here: the frames are drawn with a known within-subject motion effect (and, for the
real-data model, known age, sex and site effects), so the fitted slopes and the correction can
be checked against the truth. The file runs in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from motionqc.evaluation.thickness_stats import (
    SlopeResult,
    correct_thickness,
    thickness_motion_model,
    within_subject_slope,
)

TRUE_SLOPE = -0.12  # mm of thickness per mm of motion score


def _synthetic(seed: int = 0, n_subjects: int = 12, n_scores: int = 6, noise: float = 0.03):
    """Clean thickness per subject, graded motion scores, thickness = clean + slope·score + ε."""
    rng = np.random.default_rng(seed)
    clean = rng.normal(2.5, 0.15, n_subjects)
    rows = []
    for s in range(n_subjects):
        scores = np.concatenate([[0.0], rng.uniform(0.1, 3.0, n_scores - 1)])
        for score in scores:
            rows.append(
                {
                    "subject": f"sub-{s:02d}",
                    "score": score,
                    "clean": clean[s],
                    "thickness": clean[s] + TRUE_SLOPE * score + rng.normal(0, noise),
                }
            )
    return pd.DataFrame(rows)


def test_within_subject_slope_ci_contains_true_slope():
    df = _synthetic()
    fit = within_subject_slope(df, y="thickness", x="score", group="subject")
    assert isinstance(fit, SlopeResult)
    assert fit.method == "ols+fixed_effects" and fit.n == len(df) and fit.n_groups == 12
    assert fit.ci_low < TRUE_SLOPE < fit.ci_high
    assert fit.slope == pytest.approx(TRUE_SLOPE, abs=0.02)
    assert fit.p < 1e-6
    assert set(fit.as_dict()) >= {"slope", "ci_low", "ci_high", "p", "n"}


def test_correct_thickness_recovers_clean_values():
    df = _synthetic(seed=1)
    fit = within_subject_slope(df)
    corrected = correct_thickness(df["thickness"], df["score"], fit)
    assert isinstance(corrected, pd.Series) and corrected.index.equals(df.index)
    before = np.sqrt(np.mean((df["thickness"] - df["clean"]) ** 2))
    after = np.sqrt(np.mean((corrected - df["clean"]) ** 2))
    assert after < 0.045  # close to the noise (0.03 mm)
    assert after < before / 3
    assert correct_thickness(2.0, 1.5, -0.1, reference_score=0.5) == pytest.approx(2.1)


def test_correct_thickness_checks_inputs():
    with pytest.raises(ValueError, match="finite"):
        correct_thickness([2.0], [1.0], float("nan"))
    with pytest.raises(ValueError, match="shape"):
        correct_thickness(np.ones(3), np.ones(2), -0.1)


def test_within_subject_slope_rejects_bad_frames():
    with pytest.raises(ValueError, match="not in the frame"):
        within_subject_slope(pd.DataFrame({"thickness": [1.0, 2.0]}))
    flat = pd.DataFrame({"thickness": [1.0, 2.0, 3.0], "score": [1.0] * 3, "subject": ["a"] * 3})
    with pytest.raises(ValueError, match="does not vary"):
        within_subject_slope(flat)


def _real_like(seed: int = 2, n: int = 240, n_sites: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    site = rng.integers(0, n_sites, n)
    site_effect = rng.normal(0, 0.1, n_sites)[site]
    age = rng.uniform(18, 40, n)
    sex = rng.choice(["F", "M"], n)
    score = rng.gamma(2.0, 0.5, n)
    thickness = (
        2.6
        - 0.005 * (age - 30)
        + 0.03 * (sex == "M")
        + site_effect
        + TRUE_SLOPE * score
        + rng.normal(0, 0.05, n)
    )
    return pd.DataFrame(
        {"thickness": thickness, "score": score, "age": age, "sex": sex, "site": site.astype(str)}
    )


def test_thickness_motion_model_mixed_with_sites_and_covariates():
    fit = thickness_motion_model(_real_like())
    assert fit.method in ("mixedlm", "ols+fixed_effects")
    assert fit.covariates == ("age", "sex") and fit.n_groups == 6
    assert fit.ci_low < TRUE_SLOPE < fit.ci_high


def test_thickness_motion_model_uses_only_available_columns():
    df = _real_like().drop(columns=["age", "site"])
    fit = thickness_motion_model(df)
    assert fit.method == "ols" and fit.covariates == ("sex",)
    assert fit.ci_low < TRUE_SLOPE < fit.ci_high

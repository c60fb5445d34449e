"""Statistics of cortical thickness against head motion, and the motion correction.

Three functions, all on plain data frames (one row per volume), none needing ANTs:

- :func:`within_subject_slope`: the synthetic validation, where the same heads are corrupted at
  graded motion scores; OLS with one intercept per subject gives the common within-subject
  change in thickness per mm of motion score.
- :func:`thickness_motion_model`: real data, thickness ~ motion score + covariates (age, sex…
  when the frame has them), with site as a random intercept (MixedLM) when there are sites.
- :func:`correct_thickness`: removes the fitted linear motion effect, moving each value to
  what the model predicts at a reference score (0 = motion-free).

Thickness itself comes from :mod:`motionqc.evaluation.thickness` (ANTs DiReCT, or FreeSurfer stats).
``statsmodels`` is imported when a model is fitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["SlopeResult", "correct_thickness", "thickness_motion_model", "within_subject_slope"]


@dataclass(frozen=True)
class SlopeResult:
    """The motion effect on thickness: change in thickness (mm) per unit of motion score.

    Attributes:
        slope: Estimated slope (mm of thickness per mm of motion score).
        ci_low: Lower bound of the confidence interval.
        ci_high: Upper bound.
        p: Two-sided p-value of the slope.
        n: Observations used (rows without missing values).
        n_groups: Number of groups (subjects or sites) in the model.
        method: ``"ols"``, ``"ols+fixed_effects"`` or ``"mixedlm"``.
        covariates: Covariates actually in the model.
        formula: The model formula.
        model: The fitted statsmodels results object (not compared, for inspection).
    """

    slope: float
    ci_low: float
    ci_high: float
    p: float
    n: int
    n_groups: int
    method: str
    covariates: tuple[str, ...] = ()
    formula: str = ""
    model: Any = dataclasses.field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Return the numbers (everything but the fitted model) as a plain dict."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"
        }


def _q(column: str) -> str:
    return f'Q("{column}")'


def _require(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: column(s) {', '.join(missing)} not in the frame")


def _slope_from(fit: Any, term: str, alpha: float) -> tuple[float, float, float, float]:
    ci = fit.conf_int(alpha=alpha)
    return (
        float(fit.params[term]),
        float(ci.loc[term, 0]),
        float(ci.loc[term, 1]),
        float(fit.pvalues[term]),
    )


def within_subject_slope(
    df: pd.DataFrame,
    y: str = "thickness",
    x: str = "score",
    group: str | None = "subject",
    alpha: float = 0.05,
) -> SlopeResult:
    """Within-subject slope of thickness on motion score (OLS with subject fixed effects).

    For the synthetic validation: the same heads are corrupted at graded motion scores, so each
    subject contributes its own intercept (its clean thickness) and the slope is the common
    within-subject effect of motion. With one subject (or ``group=None``) this is plain OLS.

    Args:
        df: One row per volume.
        y: Thickness column.
        x: Motion score column (true or predicted).
        group: Subject column; ``None`` for no fixed effects.
        alpha: 1 − confidence level of the interval.

    Returns:
        A :class:`SlopeResult`.

    Raises:
        ValueError: If a column is missing, ``alpha`` is not in (0, 1), or there are too few
            rows (fewer than the model's parameters + 1) or no variation in ``x``.
    """
    import statsmodels.formula.api as smf

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    _require(df, [y, x] + ([group] if group else []), "within_subject_slope")
    data = df[[y, x] + ([group] if group else [])].dropna()
    data = data.astype({y: float, x: float})
    n_groups = int(data[group].nunique()) if group else 1
    if data[x].nunique() < 2:
        raise ValueError(f"within_subject_slope: {x!r} does not vary; the slope is undefined")
    if len(data) < n_groups + 2:
        raise ValueError(
            f"within_subject_slope: {len(data)} complete rows for {n_groups} group(s); need at "
            f"least {n_groups + 2}"
        )
    formula = f"{_q(y)} ~ {_q(x)}"
    method = "ols"
    if group and n_groups > 1:
        formula += f" + C({_q(group)})"
        method = "ols+fixed_effects"
    fit = smf.ols(formula, data=data).fit()
    slope, low, high, p = _slope_from(fit, _q(x), alpha)
    return SlopeResult(slope, low, high, p, len(data), n_groups, method, (), formula, fit)


def thickness_motion_model(
    df: pd.DataFrame,
    y: str = "thickness",
    x: str = "score",
    covariates: Sequence[str] = ("age", "sex"),
    group: str | None = "site",
    alpha: float = 0.05,
) -> SlopeResult:
    """Thickness ~ motion score + covariates, with site as a random intercept when there are sites.

    For real data: covariates are used only when the frame has them and they vary (a missing
    ``age`` column is simply left out, and listed in neither ``covariates`` nor the formula);
    text columns (``sex``) enter as categories. With ≥ 2 sites a linear mixed model
    (``statsmodels`` MixedLM, random intercept per site, REML) is fitted; if it fails to
    converge, OLS with site fixed effects is used instead. With one site or none, plain OLS.

    Args:
        df: One row per volume.
        y: Thickness column.
        x: Motion score column (usually the predicted score).
        covariates: Candidate covariates.
        group: Site column, or ``None``.
        alpha: 1 − confidence level.

    Returns:
        A :class:`SlopeResult` (``covariates`` lists those used, ``method`` the model).

    Raises:
        ValueError: If ``y`` or ``x`` is missing, ``x`` does not vary, or there are too few rows.
    """
    import warnings

    import statsmodels.formula.api as smf

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    _require(df, [y, x], "thickness_motion_model")
    used: list[str] = []
    for column in covariates:
        if column in df.columns and df[column].notna().any() and df[column].nunique() > 1:
            used.append(column)
    use_group = bool(group) and group in df.columns
    columns = [y, x] + used + ([group] if use_group else [])
    data = df[columns].dropna().copy()
    data[y] = data[y].astype(float)
    data[x] = data[x].astype(float)
    if data[x].nunique() < 2:
        raise ValueError(f"thickness_motion_model: {x!r} does not vary; the slope is undefined")
    terms = [_q(x)]
    for column in used:
        numeric = pd.api.types.is_numeric_dtype(data[column]) and not pd.api.types.is_bool_dtype(
            data[column]
        )
        terms.append(_q(column) if numeric else f"C({_q(column)})")
    n_groups = int(data[group].nunique()) if use_group else 1
    n_params = 1 + len(terms) + (n_groups - 1 if n_groups > 1 else 0)
    if len(data) < n_params + 1:
        raise ValueError(
            f"thickness_motion_model: {len(data)} complete rows for {n_params} parameters"
        )
    formula = f"{_q(y)} ~ " + " + ".join(terms)
    if use_group and n_groups >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", category=Warning)  # non-convergence → fallback
                fit = smf.mixedlm(formula, data=data, groups=data[group]).fit(reml=True)
            slope, low, high, p = _slope_from(fit, _q(x), alpha)
            if np.isfinite([slope, low, high, p]).all():
                return SlopeResult(
                    slope, low, high, p, len(data), n_groups, "mixedlm", tuple(used), formula, fit
                )
        except Exception:  # noqa: BLE001 - singular or non-converged fits fall back to OLS
            pass
        formula += f" + C({_q(group)})"
        fit = smf.ols(formula, data=data).fit()
        slope, low, high, p = _slope_from(fit, _q(x), alpha)
        return SlopeResult(
            slope, low, high, p, len(data), n_groups, "ols+fixed_effects", tuple(used), formula, fit
        )
    fit = smf.ols(formula, data=data).fit()
    slope, low, high, p = _slope_from(fit, _q(x), alpha)
    return SlopeResult(slope, low, high, p, len(data), n_groups, "ols", tuple(used), formula, fit)


def correct_thickness(
    thickness: float | np.ndarray | pd.Series,
    score: float | np.ndarray | pd.Series,
    slope: float | SlopeResult,
    reference_score: float = 0.0,
) -> float | np.ndarray | pd.Series:
    """Remove the linear motion effect from thickness.

    ``corrected = thickness − slope · (score − reference_score)``: each value is moved to what
    the model predicts at the reference motion score (0 = motion-free).

    Args:
        thickness: Thickness values (mm).
        score: Motion scores of the same volumes (same shape, or a scalar).
        slope: Fitted slope (mm per unit score) or a :class:`SlopeResult`.
        reference_score: Score the values are corrected to.

    Returns:
        Corrected thickness, of the same type as ``thickness`` (a Series keeps its index).

    Raises:
        ValueError: If the slope or reference is not finite, or the shapes do not match.
    """
    beta = slope.slope if isinstance(slope, SlopeResult) else float(slope)
    if not np.isfinite(beta) or not np.isfinite(reference_score):
        raise ValueError(f"slope and reference_score must be finite, got {beta}, {reference_score}")
    t = np.asarray(thickness, dtype=float)
    s = np.asarray(score, dtype=float)
    if s.ndim and s.shape != t.shape:
        raise ValueError(f"score shape {s.shape} does not match thickness shape {t.shape}")
    corrected = t - beta * (s - float(reference_score))
    if isinstance(thickness, pd.Series):
        return pd.Series(corrected, index=thickness.index, name=thickness.name)
    if corrected.ndim == 0:
        return float(corrected)
    return corrected

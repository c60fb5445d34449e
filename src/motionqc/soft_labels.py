"""``motionqc.soft_labels``: :mod:`motionqc.models.soft_labels` under its name before the layout."""

from __future__ import annotations

from motionqc.models.soft_labels import (  # noqa: F401 - re-exported
    BIN_RANGE,
    N_BINS,
    SIGMA,
    SoftLabelKL,
    bin_centers,
    decode,
    kl_loss,
    predictive_std,
    regression_metrics,
    soft_labels,
)

__all__ = [
    "BIN_RANGE",
    "N_BINS",
    "SIGMA",
    "bin_centers",
    "soft_labels",
    "kl_loss",
    "decode",
    "predictive_std",
    "SoftLabelKL",
    "regression_metrics",
]

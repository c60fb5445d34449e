"""Soft labels, KL loss, decoding and spread, against scipy and brute-force sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from motionqc.models.soft_labels import (
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


def reference_num2vect(x: float, bin_range, n_bins, sigma) -> np.ndarray:
    """The SFCN reference's loop (dp_utils.num2vect), rewritten with scipy.stats.norm."""
    step = (bin_range[1] - bin_range[0]) / n_bins
    centres = bin_range[0] + step / 2 + step * np.arange(n_bins)
    v = np.zeros(n_bins)
    for i in range(n_bins):
        x1, x2 = centres[i] - step / 2, centres[i] + step / 2
        cdfs = stats.norm.cdf([x1, x2], loc=x, scale=sigma)
        v[i] = cdfs[1] - cdfs[0]
    return v


def test_bin_centres():
    c = bin_centers().double().numpy()
    step = (4.8 + 0.8) / 50
    assert c.shape == (50,)
    np.testing.assert_allclose(c, -0.8 + step / 2 + step * np.arange(50), atol=1e-12)
    assert c[0] == pytest.approx(-0.744) and c[-1] == pytest.approx(4.744)


@pytest.mark.parametrize("y", [0.0, 0.05, 1.234, 3.99, -0.8, 4.8, 4.7])
def test_soft_labels_match_scipy(y):
    got = soft_labels(torch.tensor([y], dtype=torch.float64))[0].double().numpy()
    np.testing.assert_allclose(got, reference_num2vect(y, BIN_RANGE, N_BINS, SIGMA), atol=1e-7)


def test_soft_labels_shapes_and_mass():
    y = torch.tensor([[0.5, 1.0, 2.0], [3.0, 0.0, 4.0]])
    s = soft_labels(y)
    assert s.shape == (2, 3, 50) and s.dtype == torch.float32
    # Interior targets keep essentially all their mass; a target at the edge loses half.
    np.testing.assert_allclose(s.sum(-1).numpy(), 1.0, atol=1e-6)
    assert soft_labels(4.8).sum().item() == pytest.approx(0.5, abs=1e-6)
    assert soft_labels(4.8, normalize=True).sum().item() == pytest.approx(1.0, abs=1e-6)
    assert soft_labels(1.0).shape == (50,)


def test_soft_labels_other_bins():
    got = soft_labels(torch.tensor([2.2]), bin_range=(0, 10), n_bins=7, sigma=1.3)[0].numpy()
    np.testing.assert_allclose(got, reference_num2vect(2.2, (0, 10), 7, 1.3), atol=1e-7)


def test_out_of_range_and_bad_args_raise():
    with pytest.raises(ValueError, match="bin range"):
        soft_labels(torch.tensor([1.0, 5.0]))
    with pytest.raises(ValueError, match="bin range"):
        soft_labels(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="finite"):
        soft_labels(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="sigma"):
        soft_labels(1.0, sigma=0)
    with pytest.raises(ValueError, match="start < end"):
        soft_labels(1.0, bin_range=(2, 1))
    with pytest.raises(ValueError, match="n_bins"):
        soft_labels(1.0, n_bins=0)


def test_kl_loss_brute_force_and_zero_at_target():
    torch.manual_seed(0)
    y = torch.tensor([0.3, 1.7, 3.2])
    target = soft_labels(y)
    logits = torch.randn(3, 50)
    lp = torch.log_softmax(logits, 1)
    brute = 0.0
    for b in range(3):
        for i in range(50):
            t = target[b, i].item()
            if t > 0:
                brute += t * (math.log(t) - lp[b, i].item())
    assert kl_loss(lp, target).item() == pytest.approx(brute / 3, rel=1e-5)
    # The loss is zero when the prediction reproduces the (normalised) target.
    tn = soft_labels(y, normalize=True)
    assert kl_loss(tn.clamp_min(1e-30).log(), tn).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="batch, n_bins"):
        kl_loss(lp, target[:, :10])


def test_softlabelkl_callable_matches_functions():
    y = torch.tensor([0.3, 1.7])
    lp = torch.log_softmax(torch.randn(2, 50), 1)
    loss = SoftLabelKL()
    assert loss(lp, y).item() == pytest.approx(kl_loss(lp, soft_labels(y)).item())
    assert loss(lp, soft_labels(y)).item() == pytest.approx(kl_loss(lp, soft_labels(y)).item())


def test_decode_and_spread_brute_force():
    torch.manual_seed(1)
    logits = torch.randn(4, 50) * 3
    p = torch.softmax(logits, 1).double().numpy()
    c = bin_centers().double().numpy()
    mean = (p * c).sum(1)
    std = np.sqrt((p * (c - mean[:, None]) ** 2).sum(1))
    np.testing.assert_allclose(decode(logits).numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(decode(torch.log_softmax(logits, 1)).numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(predictive_std(logits).numpy(), std, atol=1e-5)


def test_decode_soft_labels_round_trips():
    # The expectation of a soft label recovers the target; its spread is about sigma.
    y = torch.tensor([0.5, 1.0, 2.5, 4.0])
    lp = soft_labels(y, normalize=True).log()
    np.testing.assert_allclose(decode(lp).numpy(), y.numpy(), atol=1e-3)
    spread = predictive_std(lp).numpy()
    step = 5.6 / 50
    # A Gaussian binned at step h has variance sigma^2 + h^2/12 (Sheppard's correction).
    np.testing.assert_allclose(spread, math.sqrt(SIGMA**2 + step**2 / 12), rtol=5e-3)


def test_regression_metrics_against_sklearn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    torch.manual_seed(2)
    y = torch.rand(20) * 4
    lp = torch.log_softmax(torch.randn(20, 50), 1)
    pred = decode(lp).double().numpy()
    m = regression_metrics(lp, y)
    assert m["r2"] == pytest.approx(r2_score(y.double().numpy(), pred), rel=1e-6)
    assert m["mae"] == pytest.approx(mean_absolute_error(y.double().numpy(), pred), rel=1e-6)
    assert m["rmse"] == pytest.approx(mean_squared_error(y.double().numpy(), pred) ** 0.5, rel=1e-6)
    # Perfect predictions (soft labels of the targets) give R^2 close to 1.
    perfect = regression_metrics(soft_labels(y, normalize=True).log(), y)
    assert perfect["r2"] > 0.999 and perfect["mae"] < 2e-3

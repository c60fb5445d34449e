"""Soft-label regression: Gaussian soft labels over bins, KL loss, decoding and its spread.

The SFCN recipe (Peng et al. 2021, reference ``ha-ha-ha-han/UKBiobank_deep_pretrain``,
``dp_model/dp_utils.num2vect`` and ``dp_loss.my_KLDivLoss``) turns a scalar target ``y`` into a
distribution over ``n_bins`` equal bins of ``bin_range``:

- bin centres ``c_i = start + step/2 + step·i``, ``step = (end - start) / n_bins``;
- mass of bin i = ``Φ((c_i + step/2 - y)/σ) - Φ((c_i - step/2 - y)/σ)`` (Gaussian CDF difference;
  not renormalised, as the reference: the tails outside the range are dropped);
- loss = ``KL(target ‖ prediction)`` summed over bins and averaged over the batch;
- prediction = ``Σ_i p_i c_i`` (expectation under the predicted distribution).

The motion-score setting of the authors: 50 bins over (−0.8, 4.8) mm, σ = 0.168 mm. The standard
deviation of the predicted distribution, ``sqrt(Σ_i p_i (c_i − ŷ)²)``, is offered as a per-volume
uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

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

BIN_RANGE: tuple[float, float] = (-0.8, 4.8)
"""Motion-score bin range in mm (the authors')."""
N_BINS: int = 50
"""Number of bins (the authors')."""
SIGMA: float = 0.168
"""Soft-label Gaussian standard deviation in mm (the authors')."""


def _check_bins(bin_range: Sequence[float], n_bins: int) -> tuple[float, float, int]:
    if len(bin_range) != 2:
        raise ValueError(f"bin_range must be (start, end), got {bin_range!r}")
    start, end = float(bin_range[0]), float(bin_range[1])
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        raise ValueError(f"bin_range must be finite with start < end, got {bin_range!r}")
    if int(n_bins) != n_bins or int(n_bins) < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return start, end, int(n_bins)


def bin_centers(
    bin_range: Sequence[float] = BIN_RANGE,
    n_bins: int = N_BINS,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return the bin centres ``start + step/2 + step·i`` (i = 0 … n_bins-1).

    Args:
        bin_range: ``(start, end)`` of the binned interval.
        n_bins: Number of equal bins.
        dtype: Output dtype.
        device: Output device.

    Returns:
        Tensor of shape ``(n_bins,)``.

    Raises:
        ValueError: If the range is empty or not finite, or ``n_bins`` is not a positive integer.
    """
    start, end, n = _check_bins(bin_range, n_bins)
    step = (end - start) / n
    centres = start + step / 2 + step * torch.arange(n, dtype=torch.float64)
    return centres.to(dtype=dtype, device=device)


def soft_labels(
    y: torch.Tensor | Sequence[float] | float,
    bin_range: Sequence[float] = BIN_RANGE,
    n_bins: int = N_BINS,
    sigma: float = SIGMA,
    normalize: bool = False,
) -> torch.Tensor:
    """Turn scalar targets into Gaussian soft labels over bins (Peng et al. 2021).

    Args:
        y: Targets, any shape (a scalar gives one row); e.g. motion scores in mm.
        bin_range: ``(start, end)`` of the bins; every target must lie inside it.
        n_bins: Number of equal bins.
        sigma: Standard deviation of the Gaussian placed on each target (> 0).
        normalize: If ``True`` rescale each row to sum to 1; the reference does not (default).

    Returns:
        Float32 tensor of shape ``y.shape + (n_bins,)``: the Gaussian mass of each bin
        (computed in float64).

    Raises:
        ValueError: If ``sigma`` is not positive, the bins are invalid, or a target is not finite
            or lies outside ``bin_range`` (targets are never clipped silently).
    """
    start, end, n = _check_bins(bin_range, n_bins)
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    t = torch.as_tensor(y).detach()
    # Targets stored in float32 may round just past an edge given in float64 (4.8 → 4.8000002):
    # allow that rounding, nothing more.
    tol = (
        2 * torch.finfo(t.dtype).eps * max(abs(start), abs(end), 1.0)
        if t.is_floating_point()
        else 0.0
    )
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError("soft_labels: every target must be a finite number (found NaN or inf)")
    if t.numel() and (t.min() < start - tol or t.max() > end + tol):
        raise ValueError(
            f"soft_labels: targets must lie in the bin range [{start}, {end}], got values from "
            f"{t.min().item():.4g} to {t.max().item():.4g}; widen bin_range rather than clipping"
        )
    step = (end - start) / n
    edges = start + step * torch.arange(n + 1, dtype=torch.float64, device=t.device)
    cdf = torch.special.ndtr((edges - t.unsqueeze(-1)) / float(sigma))
    mass = cdf[..., 1:] - cdf[..., :-1]
    if normalize:
        mass = mass / mass.sum(dim=-1, keepdim=True)
    return mass.to(torch.float32)


def kl_loss(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL divergence ``KL(target ‖ exp(log_probs))`` summed over bins, averaged over the batch.

    Bins where the target is 0 contribute 0 (``0·log 0 = 0``). This is the reference's
    ``my_KLDivLoss`` (``nn.KLDivLoss(reduction='sum') / batch``) without its ``+1e-16`` on the
    target.

    Args:
        log_probs: Predicted log-probabilities ``(B, n_bins)`` (the SFCN output).
        target: Soft labels ``(B, n_bins)`` from :func:`soft_labels`.

    Returns:
        Scalar loss (float32 even under autocast).

    Raises:
        ValueError: If the shapes differ or are not 2-D.
    """
    if log_probs.dim() != 2 or log_probs.shape != target.shape:
        raise ValueError(
            "kl_loss: log_probs and target must both be (batch, n_bins), got "
            f"{tuple(log_probs.shape)} and {tuple(target.shape)}"
        )
    lp = log_probs.float()
    tg = target.to(device=lp.device, dtype=lp.dtype)
    return F.kl_div(lp, tg, reduction="sum") / lp.shape[0]


def decode(
    log_probs: torch.Tensor, bin_range: Sequence[float] = BIN_RANGE, n_bins: int | None = None
) -> torch.Tensor:
    """Decode predictions by expectation: ``ŷ = Σ_i softmax_i · c_i``.

    Args:
        log_probs: Log-probabilities (or logits: they are re-normalised) ``(B, n_bins)``.
        bin_range: The bin range used for training.
        n_bins: Number of bins; defaults to ``log_probs.shape[-1]``.

    Returns:
        Predictions ``(B,)`` in float32.
    """
    n = log_probs.shape[-1] if n_bins is None else n_bins
    if n != log_probs.shape[-1]:
        raise ValueError(f"decode: expected {n} bins, log_probs has {log_probs.shape[-1]}")
    p = torch.softmax(log_probs.float(), dim=-1)
    c = bin_centers(bin_range, n, dtype=p.dtype, device=p.device)
    return p @ c


def predictive_std(
    log_probs: torch.Tensor, bin_range: Sequence[float] = BIN_RANGE, n_bins: int | None = None
) -> torch.Tensor:
    """Standard deviation of the predicted bin distribution, ``sqrt(Σ p_i (c_i − ŷ)²)``.

    A per-volume uncertainty: it is at least about ``σ`` when the network reproduces the soft
    labels and grows when the prediction spreads over many bins.

    Args:
        log_probs: Log-probabilities (or logits) ``(B, n_bins)``.
        bin_range: The bin range used for training.
        n_bins: Number of bins; defaults to ``log_probs.shape[-1]``.

    Returns:
        Standard deviations ``(B,)`` in float32.
    """
    n = log_probs.shape[-1] if n_bins is None else n_bins
    if n != log_probs.shape[-1]:
        raise ValueError(f"predictive_std: expected {n} bins, log_probs has {log_probs.shape[-1]}")
    p = torch.softmax(log_probs.float(), dim=-1)
    c = bin_centers(bin_range, n, dtype=p.dtype, device=p.device)
    mean = p @ c
    var = (p * (c - mean.unsqueeze(-1)) ** 2).sum(-1)
    return var.clamp_min(0).sqrt()


class SoftLabelKL:
    """Loss callable for the trainer: scalar targets → soft labels → KL to the prediction.

    Args:
        bin_range: ``(start, end)`` of the bins.
        n_bins: Number of bins (must match the model's outputs).
        sigma: Soft-label standard deviation.

    Call it as ``loss(log_probs, y)`` with ``y`` of shape ``(B,)`` (scalar targets) or
    ``(B, n_bins)`` (precomputed soft labels).
    """

    def __init__(
        self, bin_range: Sequence[float] = BIN_RANGE, n_bins: int = N_BINS, sigma: float = SIGMA
    ) -> None:
        self.bin_range = _check_bins(bin_range, n_bins)[:2]
        self.n_bins = int(n_bins)
        if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        self.sigma = float(sigma)

    def __call__(self, log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the batch-mean KL between the soft labels of ``y`` and ``log_probs``."""
        if y.dim() == 2 and y.shape[-1] == self.n_bins:
            target = y
        else:
            target = soft_labels(y.reshape(-1), self.bin_range, self.n_bins, self.sigma)
        return kl_loss(log_probs, target.to(log_probs.device))

    def __repr__(self) -> str:
        return f"SoftLabelKL(bin_range={self.bin_range}, n_bins={self.n_bins}, sigma={self.sigma})"


def regression_metrics(
    log_probs: torch.Tensor, y: torch.Tensor, bin_range: Sequence[float] = BIN_RANGE
) -> dict[str, float]:
    """Decode predictions and score them against scalar targets (a trainer ``metrics_fn``).

    Args:
        log_probs: Log-probabilities ``(N, n_bins)`` in the order of ``y``.
        y: Scalar targets ``(N,)`` (or soft labels ``(N, n_bins)``, decoded the same way).
        bin_range: The bin range used for training.

    Returns:
        ``r2`` (1 − SS_res/SS_tot; NaN when the targets are constant), ``rmse``, ``mae`` and
        ``mean_std`` (mean predictive spread).
    """
    pred = decode(log_probs, bin_range).double()
    t = y.detach().to(pred.device)
    if t.dim() == 2 and t.shape[-1] == log_probs.shape[-1]:
        t = t.double() @ bin_centers(bin_range, t.shape[-1], dtype=torch.float64, device=t.device)
    t = t.reshape(-1).double()
    if t.shape != pred.shape:
        raise ValueError(f"regression_metrics: {pred.numel()} predictions but {t.numel()} targets")
    resid = pred - t
    ss_tot = ((t - t.mean()) ** 2).sum().item()
    return {
        "r2": 1.0 - (resid**2).sum().item() / ss_tot if ss_tot > 0 else float("nan"),
        "rmse": resid.pow(2).mean().sqrt().item(),
        "mae": resid.abs().mean().item(),
        "mean_std": predictive_std(log_probs, bin_range).mean().item(),
    }

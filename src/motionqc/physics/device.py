"""Motion and the authors' intensity augmentations applied to a batch on the training device.

:class:`DeviceMotion` is the ``batch_transform`` of the paper path (notebook 03 on GPUs): each
batch of clean sources with their motion and intensity parameters (collated by
:class:`motionqc.synthetic.heads.MotionSourceSet`) is corrupted where the model runs, so no motion
sample is rendered ahead. This module needs only torch and numpy (no TorchIO, SimpleITK or
nibabel), so ``benchmarks/gpu_check.sh`` runs it on a machine that has only PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from motionqc.physics.motion import simulate_motion

__all__ = ["N_BIAS", "DeviceMotion", "bias_field"]

_BIAS_ORDER = 3
N_BIAS = sum(
    1
    for i in range(_BIAS_ORDER + 1)
    for j in range(_BIAS_ORDER + 1 - i)
    for _ in range(_BIAS_ORDER + 1 - i - j)
)
"""Coefficients of the order-3 polynomial bias field (20)."""


def bias_field(
    shape: Sequence[int],
    coefficients: torch.Tensor | Sequence[float],
    order: int = _BIAS_ORDER,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """TorchIO's polynomial bias field (``tio.BiasField``) computed in torch, on any device.

    ``exp(Σ c_ijk x^i y^j z^k)`` over coordinates normalised to [-1, 1] as TorchIO builds them
    (voxel centres ``arange(-n/2, n/2) + 0.5`` divided by their maximum), with TorchIO's
    coefficient order (x outermost, z innermost).

    Args:
        shape: Spatial shape ``(X, Y, Z)``.
        coefficients: The polynomial coefficients (20 for order 3).
        order: Polynomial order.
        device: Device of the result (default: the coefficients' device, else CPU).

    Returns:
        The multiplicative field, float32, shape ``(X, Y, Z)``.

    Raises:
        ValueError: If the number of coefficients does not match the order.
    """
    coef = torch.as_tensor(coefficients, dtype=torch.float64, device=device).flatten()
    needed = sum(
        1 for i in range(order + 1) for j in range(order + 1 - i) for _ in range(order + 1 - i - j)
    )
    if len(coef) != needed:
        raise ValueError(
            f"a bias field of order {order} needs {needed} coefficients, got {len(coef)}"
        )
    axes = []
    for n in shape:
        r = torch.arange(-n / 2, n / 2, dtype=torch.float64, device=coef.device) + 0.5
        if r.max() > 0:
            r = r / r.max()
        axes.append(r)
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    field = torch.zeros(tuple(int(n) for n in shape), dtype=torch.float64, device=coef.device)
    i = 0
    for xo in range(order + 1):
        for yo in range(order + 1 - xo):
            for zo in range(order + 1 - (xo + yo)):
                field = field + coef[i] * x**xo * y**yo * z**zo
                i += 1
    return torch.exp(field).float()


class DeviceMotion:
    """Batch transform: k-space motion and the authors' intensity augmentations on the device.

    Give it to :class:`motionqc.training.trainer.Trainer` as ``batch_transform`` with a
    :class:`motionqc.synthetic.heads.MotionSourceSet`: each batch arrives on the training device as the dict that set
    collates, and leaves as ``(B, 1, X, Y, Z)`` float32 images, in the authors' order — motion
    (``simulate_motion`` with the pure-torch backend, items grouped by number of transforms;
    motion-free items untouched), gamma ``sign(x)·|x|^γ``, bias field, min-max rescale to
    ``[0, rescale_max]`` (TorchIO's ``RescaleIntensity``; skipped where ``rescale_max`` is 0).

    Args:
        backend: Motion backend: ``"torch"`` (any device) or ``"auto"``.
    """

    def __init__(self, backend: str = "torch") -> None:
        self.backend = backend

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Apply motion and augmentations to a collated :class:`motionqc.synthetic.heads.MotionSourceSet` batch."""
        x = batch["image"].float()
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"expected images (B, 1, X, Y, Z), got shape {tuple(x.shape)}")
        out = x[:, 0].clone()
        counts = batch["n"].cpu()
        for k in sorted(set(counts.tolist()) - {0}):
            idx = torch.nonzero(counts == k).flatten()
            out[idx.to(out.device)] = simulate_motion(
                out[idx.to(out.device)],
                batch["degrees"][idx, :k].cpu(),
                batch["translation"][idx, :k].cpu(),
                batch["times"][idx, :k].cpu(),
                batch["affine"][idx].cpu(),
                backend=self.backend,
            )
        gamma = batch["gamma"].to(out.device).float()
        if bool((gamma != 1).any()):
            g = gamma.view(-1, 1, 1, 1)
            out = torch.where(g != 1, out.sign() * out.abs() ** g, out)
        bias = batch["bias"].to(out.device)
        for i in torch.nonzero(bias.abs().sum(dim=1) > 0).flatten().tolist():
            out[i] = out[i] * bias_field(out.shape[1:], bias[i])
        top = batch["rescale_max"].to(out.device).float()
        for i in torch.nonzero(top > 0).flatten().tolist():
            lo, hi = out[i].min(), out[i].max()
            if hi > lo:
                out[i] = (out[i] - lo) / (hi - lo) * top[i]
        return out[:, None]

"""Detail channels: the acquisition grid's high-frequency energy, pooled onto the encoder grid.

Resampling a 1 mm head to the encoder's 4 mm grid keeps the centre of k-space, where TorchIO's
``Motion`` holds the motion-free pose; the poses the score measures are recorded in the outer
planes, and a 4 mm band keeps about half of what a 1 mm image records of the score
(``benchmarks/probe_encoder_cues.py --parts 6``: the gradient-energy-weighted pose displacement
explains R² 0.88 of the score at 1 mm, 0.52 within a 4 mm band). The detail channels carry the
1 mm grid's gradient energy at the 4 mm network's cost: per axis ``a`` the squared first
difference ``(Δₐx)²`` at the fine grid, averaged over each encoder voxel's block of fine voxels
(an energy, so averaging keeps it instead of folding it away), divided by the block's mean
``x²`` (a local contrast: a bias field or a global scaling cancels), logged and scaled by
:data:`DETAIL_SCALE`. Motion blurs the head along the acquisition's segment axis and spreads
ghosts of its edges into the background: both change these ratios block by block.

:func:`encoder_input` is the one preprocessing of an encoder that has them (the pool, the
unseen-head test and ``motionqc score``): channel 0 is the head on the encoder grid as
:func:`motionqc.data.volumes.preprocess` makes it from the fine grid, channels 1–3 the detail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import pandas as pd
import torch
import torchio as tio

from motionqc.data.volumes import VolumeError, preprocess

__all__ = [
    "DETAIL_EPS",
    "DETAIL_SCALE",
    "N_DETAIL",
    "detail_channels",
    "encoder_image",
    "encoder_input",
    "preprocess_rows",
    "zoom_offset",
]

N_DETAIL = 3
"""Detail channels (one per axis)."""
DETAIL_EPS = 1e-4
"""Added to both energies of the ratio (the fine grid's intensities have mean 1): the dark
background keeps a finite ratio, and faint ghosts in it (a few % of tissue, squared) still count."""
DETAIL_SCALE = 4.0
"""The log ratios are divided by it (they span about −10 to 1): inputs of order one."""


def detail_channels(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The detail channels of a fine-grid volume, on the grid ``factor`` times coarser.

    Args:
        x: ``(X, Y, Z)`` volume at the fine grid, intensities divided by their mean; each side a
            multiple of ``factor``.
        factor: Fine voxels per encoder voxel along each axis (4: 1 mm → 4 mm).

    Returns:
        ``(3, X / factor, Y / factor, Z / factor)``: per axis
        ``log((mean (Δₐx)² + ε) / (mean x² + ε)) / DETAIL_SCALE`` over each block, where
        ``Δₐx`` is the forward difference along axis ``a`` (zero at the last plane).

    Raises:
        ValueError: If a side is not a multiple of ``factor``.
    """
    if x.dim() != 3 or any(int(s) % int(factor) for s in x.shape):
        raise ValueError(f"a volume of sides multiple of {factor} is needed, got {tuple(x.shape)}")
    x = x.float()
    pool = torch.nn.functional.avg_pool3d
    k = int(factor)
    den = torch.log(pool((x * x)[None, None], k)[0, 0] + DETAIL_EPS)
    out = []
    for axis in range(3):
        d = torch.diff(x, dim=axis, append=x.narrow(axis, x.shape[axis] - 1, 1))
        num = torch.log(pool((d * d)[None, None], k)[0, 0] + DETAIL_EPS)
        out.append((num - den) / DETAIL_SCALE)
    return torch.stack(out)


def zoom_offset(zoom: float) -> float:
    """What a zoom by ``zoom`` adds to every detail channel.

    A head ``s`` times larger on the same fine grid has first differences ``s`` times smaller:
    each ratio's log drops by ``2 log s`` (:func:`motionqc.synthetic.augment.geometry_batch`
    adds this when it zooms a sample on the encoder grid).
    """
    return -2.0 * math.log(float(zoom)) / DETAIL_SCALE


def encoder_image(
    volume: str | Path | nib.Nifti1Image | tio.ScalarImage,
    spacing_mm: float,
    shape: Sequence[int],
    detail_mm: float | None = None,
) -> tio.ScalarImage:
    """A volume preprocessed for an encoder, on the encoder grid (with that grid's affine).

    Args:
        volume: A path, a nibabel image or a torchio image.
        spacing_mm: The encoder's voxel size.
        shape: The encoder's grid.
        detail_mm: The fine grid's voxel size (``None``: no detail channels, exactly
            :func:`motionqc.data.volumes.preprocess`). The volume is first brought to that
            grid (canonical, resampled, cropped or padded to the encoder grid's field of view),
            then channel 0 is that grid preprocessed to the encoder's, and channels 1–3 its
            :func:`detail_channels`.

    Returns:
        One channel, or four with detail; channel 0 divided by its mean.

    Raises:
        ValueError: If ``spacing_mm`` is not a whole multiple of ``detail_mm``.
        VolumeError: If the volume cannot be loaded or its mean intensity is not positive.
    """
    if detail_mm is None:
        return preprocess(volume, spacing_mm, shape)
    ratio = float(spacing_mm) / float(detail_mm)
    factor = int(round(ratio))
    if factor < 1 or abs(ratio - factor) > 1e-6:
        raise ValueError(f"spacing {spacing_mm} mm is not a whole multiple of {detail_mm} mm")
    fine = preprocess(volume, float(detail_mm), [int(s) * factor for s in shape])
    coarse = preprocess(fine, float(spacing_mm), shape)
    if tuple(coarse.shape[1:]) != tuple(int(s) for s in shape):  # pragma: no cover - CropOrPad
        where = getattr(volume, "path", None) or volume
        raise VolumeError(f"{where}: preprocessed to {tuple(coarse.shape[1:])}, not {shape}")
    detail = detail_channels(fine.data[0].float(), factor)
    return tio.ScalarImage(tensor=torch.cat([coarse.data.float(), detail]), affine=coarse.affine)


def encoder_input(
    volume: str | Path | nib.Nifti1Image | tio.ScalarImage,
    spacing_mm: float,
    shape: Sequence[int],
    detail_mm: float | None = None,
) -> torch.Tensor:
    """:func:`encoder_image`'s voxels: ``(1, X, Y, Z)``, or with detail ``(4, X, Y, Z)`` float32."""
    return encoder_image(volume, spacing_mm, shape, detail_mm).data.float()


def preprocess_rows(
    table: pd.DataFrame, meta: Mapping[str, Any]
) -> tuple[list[torch.Tensor], pd.DataFrame, list[dict[str, str]]]:
    """Preprocess every manifest row's volume for an encoder; list the ones that cannot be used.

    Args:
        table: Rows with ``volume_id`` and ``path``.
        meta: The encoder's metadata (``spacing_mm``, ``shape``, ``detail_mm``: the volumes go
            through :func:`encoder_input`).

    Returns:
        ``(images, kept rows (index reset), errors)``; each error is ``{"volume_id", "error"}``
        (the loader's one-line message), and the other rows go on.
    """
    images, keep, errors = [], [], []
    for i, row in table.iterrows():
        try:
            images.append(
                encoder_input(row["path"], meta["spacing_mm"], meta["shape"], meta.get("detail_mm"))
            )
            keep.append(i)
        except Exception as exc:  # noqa: BLE001 - report and go on
            errors.append({"volume_id": str(row["volume_id"]), "error": str(exc)})
    return images, table.loc[keep].reset_index(drop=True), errors

"""Heads of random contrast generated from whole-head label maps (SynthSeg-style).

A label map of a real subject (brain structures plus skull, scalp, eyes …; SynthSeg's training
maps) becomes a head whose every structure has a random mean intensity and noise level
(TorchIO's ``RandomLabelsToImage``, after Billot et al.), blurred for partial-volume edges
(``RandomBlur``). The anatomy is real; the contrast is not any scanner's, so an encoder trained
on such heads beside real scans cannot read one scanner's appearance as motion. The background
(label 0) stays dark, as air is in a real acquisition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torchio as tio

__all__ = ["GENERATED_SEP", "generated_heads"]

GENERATED_SEP = ".g"
"""Separates a label map's id from the generated head's index (``<map>.g<k>``)."""


def generated_heads(
    label_maps: Mapping[str, str | Path],
    n: int,
    *,
    spacing_mm: float,
    shape: Sequence[int],
    seed: int = 0,
    mean: tuple[float, float] = (0.1, 1.0),
    std: tuple[float, float] = (0.0, 0.06),
    background: tuple[float, float] = (0.0, 0.03),
    blur_mm: tuple[float, float] = (0.3, 1.0),
) -> dict[str, tio.ScalarImage]:
    """``n`` heads of random contrast per label map, on the simulation grid.

    Each map is put in canonical orientation, resampled (nearest label) to ``spacing_mm`` and
    centre-cropped or padded to ``shape``, as :func:`motionqc.data.volumes.preprocess` does with
    a scan; then per head every label draws a mean ~ U(``mean``) and a noise sd ~ U(``std``)
    (label 0: mean ~ U(``background``)), the image is blurred with an sd ~ U(``blur_mm``) mm
    and divided by its mean. Head ``(map, k)`` is seeded by ``SeedSequence([seed, map index,
    k])`` alone: the same seed gives the same heads.

    Args:
        label_maps: Map id → integer label NIfTI.
        n: Heads per map.
        spacing_mm: Voxel size of the grid.
        shape: The grid.
        seed: Base seed.
        mean: Range of the structures' mean intensities.
        std: Range of the structures' noise sd (Gaussian, voxel-wise).
        background: Range of the background's mean intensity.
        blur_mm: Range of the partial-volume blur's sd, mm.

    Returns:
        ``"<map>.g<k>"`` → image (one channel, mean 1).

    Raises:
        ValueError: If ``n`` is below 1 or a map id holds ``"~"``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    grid = tio.Compose(
        [tio.ToCanonical(), tio.Resample(float(spacing_mm)), tio.CropOrPad(tuple(shape))]
    )
    out: dict[str, tio.ScalarImage] = {}
    for m_idx, (vid, path) in enumerate(label_maps.items()):
        if "~" in vid:
            raise ValueError(f"label map id {vid!r} must not contain '~'")
        labels = grid(tio.LabelMap(path))
        values = torch.unique(labels.data.long())
        # consecutive labels 0..L-1 (TorchIO indexes the ranges by label value); 0 stays 0
        labels.set_data(torch.searchsorted(values, labels.data.long().contiguous()))
        means = [background if v == 0 else mean for v in values.tolist()]
        stds = [(0.0, 0.0) if v == 0 else std for v in values.tolist()]
        generate = tio.Compose(
            [
                tio.RandomLabelsToImage(label_key="labels", mean=means, std=stds),
                tio.RandomBlur(std=blur_mm),
            ]
        )
        for k in range(n):
            state = np.random.SeedSequence([int(seed), m_idx, k]).generate_state(1)[0]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(state))
                subject = generate(tio.Subject(labels=labels))
            data = subject["image_from_labels"].data.float().clamp_min(0)
            out[f"{vid}{GENERATED_SEP}{k}"] = tio.ScalarImage(
                tensor=data / data.mean(), affine=labels.affine
            )
    return out

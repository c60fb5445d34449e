"""The pictures of the QC report: a mosaic of axial cuts, three views, the bin distribution.

Every picture is made in memory (PNG bytes or inline SVG) so the report embeds it: the original
scan at its own resolution (sagittal, coronal and axial slices; the motion model's k-space
segment axis marked, :data:`SEGMENT_AXIS`), the encoder's input as a mosaic, the predicted bin
distribution, and the distribution of the dataset's scores.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = [
    "MAX_PANEL_PIXELS",
    "SEGMENT_AXIS",
    "bins_svg",
    "distribution_png",
    "mosaic_png",
    "views_png",
]


SEGMENT_AXIS = "S–I"
"""The array axis along which the motion model fills k-space segment by segment (the last axis
of a RAS+ volume, :mod:`motionqc.physics.motion`): its ghosts repeat along it."""


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72, bbox_inches="tight", facecolor=fig.get_facecolor())
    plt.close(fig)
    return buffer.getvalue()


def _grey_png(image: np.ndarray) -> bytes:
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, np.clip(image, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buffer.getvalue()


def _row_of_cuts(cuts: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    rows = max(c.shape[0] for c in cuts)
    panels = []
    for cut in cuts:
        pad = rows - cut.shape[0]
        panels += [np.pad(cut, ((pad // 2, pad - pad // 2), (0, 0))), np.zeros((rows, gap))]
    return np.concatenate(panels[:-1], axis=1)


def mosaic_png(volume: np.ndarray, n_axial: int = 5, height: int = 128) -> bytes:
    """Render a T1w volume as a strip: mid sagittal, mid coronal and ``n_axial`` axial slices.

    The slices are laid side by side in one grey-level image (no figure machinery). The report
    uses it for the encoder's input.

    Args:
        volume: A 3D array in RAS orientation (X = left→right, Y = posterior→anterior, Z = up).
        n_axial: Number of evenly spaced axial slices.
        height: Approximate height of the strip in pixels (voxels are repeated or skipped).

    Returns:
        PNG bytes.
    """
    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"mosaic needs a 3D volume, got shape {data.shape}")
    longest = max(data.shape)
    if longest > 1.5 * height:  # thumbnails: skip voxels rather than render them all
        step = int(round(longest / height))
        data = data[::step, ::step, ::step]
    vmax = float(np.percentile(data[::2, ::2, ::2], 99.5)) or 1.0
    x, y, _ = (s // 2 for s in data.shape)
    zs = np.linspace(0.25 * data.shape[2], 0.8 * data.shape[2], n_axial).astype(int)
    zs = np.clip(zs, 0, data.shape[2] - 1)
    # each cut as displayed with origin="lower": rows = second axis, bottom row first
    cuts = [data[x].T, data[:, y].T] + [data[:, :, k].T for k in zs]
    image = _row_of_cuts(cuts)[::-1] / vmax
    scale = max(1, int(round(height / image.shape[0])))
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    return _grey_png(image)


MAX_PANEL_PIXELS = 1024
"""Longest side, in pixels, of a slice of :func:`views_png`: a slice larger than that once its
pixels are square (a 256-voxel axis of 80 mm voxels beside 1 mm ones would be 20,480 pixels) is
shrunk, proportions kept; heads at 0.25 mm or coarser are shown voxel for voxel."""


def _square_pixels(
    cut: np.ndarray, rows_mm: float, cols_mm: float, max_side: int = MAX_PANEL_PIXELS
) -> np.ndarray:
    """Resample a slice (nearest neighbour) so that its pixels are square at the finer spacing.

    The result is never longer than ``max_side`` pixels along either side (proportions kept):
    the size is computed before anything is allocated.
    """
    if not (np.isfinite([rows_mm, cols_mm]).all() and min(rows_mm, cols_mm) > 0):
        rows_mm = cols_mm = 1.0  # no usable voxel size: show the voxels as they are
    fine = min(rows_mm, cols_mm)
    rows = cut.shape[0] * rows_mm / fine
    cols = cut.shape[1] * cols_mm / fine
    shrink = min(1.0, max_side / max(rows, cols))
    r = max(1, int(round(rows * shrink)))
    c = max(1, int(round(cols * shrink)))
    if (r, c) == cut.shape:
        return cut
    ri = np.minimum((np.arange(r) * cut.shape[0] / r).astype(int), cut.shape[0] - 1)
    ci = np.minimum((np.arange(c) * cut.shape[1] / c).astype(int), cut.shape[1] - 1)
    return cut[np.ix_(ri, ci)]


def views_png(
    volume: np.ndarray, zooms: Sequence[float] = (1.0, 1.0, 1.0), n_slices: int = 4
) -> bytes:
    """The original volume at its own resolution: a row of sagittal, coronal and axial slices each.

    Every voxel of the shown slices is shown (no thumbnailing); anisotropic voxels are repeated
    so that the anatomy keeps its proportions, up to :data:`MAX_PANEL_PIXELS` per side. Slices are spread over the central 70 % of each
    axis. A tick column at the left of the sagittal and coronal rows marks the k-space segment
    axis of the motion model (:data:`SEGMENT_AXIS`, vertical in those rows), along which its
    ghosts repeat.

    Args:
        volume: A 3D array in RAS orientation.
        zooms: Voxel size (mm) along X, Y, Z.
        n_slices: Slices per view.

    Returns:
        PNG bytes.
    """
    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"views need a 3D volume, got shape {data.shape}")
    zx, zy, zz = (float(z) for z in zooms[:3])
    vmax = float(np.percentile(data[::2, ::2, ::2], 99.5)) or 1.0

    def positions(n: int) -> np.ndarray:
        return np.clip(np.linspace(0.25 * n, 0.75 * n, n_slices).astype(int), 0, n - 1)

    sag = [_square_pixels(data[i].T[::-1], zz, zy) for i in positions(data.shape[0])]
    cor = [_square_pixels(data[:, j].T[::-1], zz, zx) for j in positions(data.shape[1])]
    axi = [_square_pixels(data[:, :, k].T[::-1], zy, zx) for k in positions(data.shape[2])]
    rows = [_row_of_cuts(view) for view in (sag, cor, axi)]
    width = max(r.shape[1] for r in rows) + 6
    out = []
    for index, row in enumerate(rows):
        mark = np.zeros((row.shape[0], 6))
        if index < 2:  # the segment axis is vertical in the sagittal and coronal rows
            mark[::8, 1:5] = vmax
            mark[:, 2:3] = vmax
        padded = np.concatenate([mark, row], axis=1)
        padded = np.pad(padded, ((0, 3), (0, width - padded.shape[1])))
        out.append(padded)
    return _grey_png(np.concatenate(out, axis=0) / vmax)


def bins_svg(
    probabilities: Sequence[float],
    bin_range: Sequence[float],
    value: float | None = None,
    width: int = 200,
    height: int = 56,
) -> str:
    """The predicted bin distribution as a small inline SVG bar chart.

    Args:
        probabilities: One probability per bin.
        bin_range: ``(low, high)`` edges of the bins (mm).
        value: The predicted score, marked by a red line.
        width: Width in pixels.
        height: Height in pixels.

    Returns:
        An ``<svg>`` element.
    """
    p = np.asarray(probabilities, dtype=float)
    lo, hi = float(bin_range[0]), float(bin_range[1])
    plot_h = height - 14
    bar = width / len(p)
    top = float(p.max()) or 1.0
    bars = "".join(
        f'<rect x="{i * bar:.2f}" y="{plot_h - v / top * plot_h:.2f}" width="{max(bar - 0.5, 0.5):.2f}" '
        f'height="{v / top * plot_h:.2f}"/>'
        for i, v in enumerate(p)
    )
    marks = ""
    if value is not None and np.isfinite(value):
        x = (float(value) - lo) / (hi - lo) * width
        marks = f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{plot_h}" stroke="#c0392b"/>'
    ticks = "".join(
        f'<text x="{(t - lo) / (hi - lo) * width:.1f}" y="{height - 2}" '
        f'text-anchor="middle">{t:g}</text>'
        for t in range(int(np.ceil(lo)), int(np.floor(hi)) + 1)
    )
    return (
        f'<svg class="bins" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="predicted bin distribution"><g fill="#3b6ea5">{bars}</g>'
        f'{marks}<g font-size="9" fill="#555">{ticks}</g></svg>'
    )


def distribution_png(scores: pd.Series, label: str = "predicted motion (mm)") -> bytes:
    """Histogram of the group's predicted motion scores.

    Args:
        scores: One score per volume.
        label: Axis label.

    Returns:
        PNG bytes.
    """
    fig, ax = plt.subplots(figsize=(6, 2.6))
    values = pd.to_numeric(scores, errors="coerce").dropna()
    ax.hist(values, bins=max(5, min(40, len(values))), color="#3b6ea5", edgecolor="white")
    ax.locator_params(axis="x", nbins=6)
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.set_xlabel(label)
    ax.set_ylabel("volumes")
    ax.set_title(f"{len(values)} volume(s) scored")
    return _png(fig)

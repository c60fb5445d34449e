"""Self-contained HTML QC report: volumes ranked by predicted motion, slice mosaics, group plot.

One file (``report.html``) with every image embedded as base64 PNG, so it can be mailed, archived
next to the derivatives, or opened offline. Rows are ranked by predicted motion (worst first);
volumes that could not be scored are listed at the end with their error.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import motionqc  # noqa: E402

__all__ = ["mosaic_png", "distribution_png", "write_report"]


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72, bbox_inches="tight", facecolor=fig.get_facecolor())
    plt.close(fig)
    return buffer.getvalue()


def mosaic_png(volume: np.ndarray, n_axial: int = 5, height: int = 128) -> bytes:
    """Render a T1w volume as a mosaic: mid sagittal, mid coronal and ``n_axial`` axial slices.

    The slices are laid side by side in one grey-level image (no figure machinery: a few
    milliseconds per volume, which matters when a study has 100k of them).

    Args:
        volume: A 3D array in RAS orientation (X = left→right, Y = posterior→anterior, Z = up).
        n_axial: Number of evenly spaced axial slices.
        height: Approximate height of the mosaic in pixels (voxels are repeated or skipped).

    Returns:
        PNG bytes.
    """
    from matplotlib.image import imsave

    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"mosaic needs a 3D volume, got shape {data.shape}")
    longest = max(data.shape)
    if longest > 1.5 * height:  # thumbnails: skip voxels rather than render them all
        step = int(round(longest / height))
        data = data[::step, ::step, ::step]
    vmax = float(np.percentile(data[::2, ::2, ::2], 99.5)) or 1.0
    x, y, z = (s // 2 for s in data.shape)
    zs = np.linspace(0.25 * data.shape[2], 0.8 * data.shape[2], n_axial).astype(int)
    zs = np.clip(zs, 0, data.shape[2] - 1)
    # each cut as displayed with origin="lower": rows = second axis, bottom row first
    cuts = [data[x].T, data[:, y].T] + [data[:, :, k].T for k in zs]
    rows = max(c.shape[0] for c in cuts)
    gap = np.zeros((rows, 2), np.float32)
    panels = []
    for cut in cuts:
        pad = rows - cut.shape[0]
        panels += [np.pad(cut, ((pad // 2, pad - pad // 2), (0, 0))), gap]
    image = np.clip(np.concatenate(panels[:-1], axis=1)[::-1] / vmax, 0.0, 1.0)
    scale = max(1, int(round(height / rows)))
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    imsave(buffer, image, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buffer.getvalue()


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


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.error td{background:#fff0f0}
img{max-width:100%}
.small{color:#666;font-size:90%}
"""


def write_report(
    table: pd.DataFrame,
    path: str | Path,
    mosaics: Mapping[str, bytes] | None = None,
    title: str = "motionqc report",
) -> Path:
    """Write the self-contained HTML report.

    Args:
        table: One row per volume with ``bids_name``, ``motion_mm``, ``motion_std`` and optionally
            ``qc_class``, ``status`` and ``error``.
        path: The HTML file to write.
        mosaics: ``bids_name`` → PNG bytes (see :func:`mosaic_png`).
        title: Page title.

    Returns:
        The written path.
    """
    mosaics = mosaics or {}
    df = table.copy()
    df["motion_value"] = pd.to_numeric(df.get("motion_mm"), errors="coerce")
    status = df["status"] if "status" in df.columns else pd.Series("ok", index=df.index)
    ok = df[status == "ok"].sort_values("motion_value", ascending=False)
    failed = df[status != "ok"]
    rows = []
    for rank, row in enumerate(ok.itertuples(), start=1):
        name = str(row.bids_name)
        std = pd.to_numeric(getattr(row, "motion_std", np.nan), errors="coerce")
        qc = getattr(row, "qc_class", "")
        qc = "" if qc is None or (isinstance(qc, float) and np.isnan(qc)) else qc
        image = _img(mosaics[name], name) if name in mosaics else ""
        rows.append(
            f'<tr class="ok"><td class="num">{rank}</td><td>{html.escape(name)}</td>'
            f'<td class="num">{row.motion_value:.2f} ± {std:.2f}</td><td>{html.escape(str(qc))}</td><td>{image}</td></tr>'
        )
    for row in failed.itertuples():
        error = html.escape(str(getattr(row, "error", "")))
        rows.append(
            f'<tr class="error"><td class="num">–</td><td>{html.escape(str(row.bids_name))}</td>'
            f'<td colspan="3">not scored: {error}</td></tr>'
        )
    plot = (
        _img(distribution_png(ok["motion_value"]), "group distribution")
        if len(ok)
        else "<p>No volume scored.</p>"
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="small">motionqc {motionqc.__version__}: {len(ok)} volume(s) scored, {len(failed)} not scored.
Motion is the predicted RMS deviation (mm, Jenkinson) ± the spread of the model's bin distribution.</p>
<h2>Group distribution</h2>
{plot}
<h2>Volumes ranked by predicted motion</h2>
<table id="volumes">
<thead><tr><th>rank</th><th>bids_name</th><th>motion (mm)</th><th>QC class</th><th>slices</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # never a half-written report
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path

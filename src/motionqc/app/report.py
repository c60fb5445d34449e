"""Self-contained HTML QC report and rating tool: score → look → rate → train your own QC head.

One file (``report.html``) with every image embedded (base64 PNG, inline SVG) and its script
inline, so it works offline, from a mail attachment or an archive — no server, no CDN. Per
volume it shows the original scan at its own resolution (sagittal, coronal and axial slices; the
motion model's k-space segment axis marked), the encoder's input and the predicted bin
distribution. A rater gives each volume a 1–4 rating (the poster's scale: 4 = best) and a
comment, with the keyboard (``1``–``4`` rate and go on, ``n``/``p`` next/previous, ``c``
comment); ratings are kept in the browser (``localStorage``, keyed by the dataset) across reloads
and exported as a TSV with the columns of :data:`RATING_COLUMNS`, which ``motionqc train-qc
--bids-dir`` and :func:`motionqc.data.bids.manifest_from_bids` read as they are. The table sorts
(score, uncertainty, QC class, subject), filters, and flags volumes at or above a threshold.
Volumes that could not be scored are listed at the end with their error.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import motionqc  # noqa: E402

__all__ = [
    "RATING_COLUMNS",
    "SEGMENT_AXIS",
    "mosaic_png",
    "views_png",
    "bins_svg",
    "distribution_png",
    "dataset_key",
    "write_report",
]

RATING_COLUMNS: tuple[str, ...] = ("bids_name", "rating", "comment", "rater", "timestamp")
"""Columns of the ratings TSV the report exports (``rating``: 1–4, 4 = best)."""

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


def _square_pixels(cut: np.ndarray, rows_mm: float, cols_mm: float) -> np.ndarray:
    """Resample a slice (nearest neighbour) so that its pixels are square at the finer spacing."""
    fine = min(rows_mm, cols_mm)
    r = max(1, int(round(cut.shape[0] * rows_mm / fine)))
    c = max(1, int(round(cut.shape[1] * cols_mm / fine)))
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
    so that the anatomy keeps its proportions. Slices are spread over the central 70 % of each
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


def dataset_key(*parts: object) -> str:
    """A short, stable key of a dataset (its ratings' ``localStorage`` key) from what names it."""
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode()
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<img{klass} alt="{html.escape(alt)}" loading="lazy" src="data:image/png;base64,{data}">'
    )


def _subject(name: str) -> str:
    found = re.search(r"(?:^|_)sub-([A-Za-z0-9]+)", name)
    return found.group(1) if found else ""


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
th[data-sort]{cursor:pointer}
th[data-sort]::after{content:" \\2195";color:#999}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.error td{background:#fff0f0}
tr.vol.current{outline:3px solid #3b6ea5;outline-offset:-3px}
tr.vol.flagged td.flag::before{content:"\\2691";color:#c0392b;font-size:130%}
tr.vol.rated td.rate{background:#eef7ee}
img{max-width:100%}
img.input{display:block;margin-top:4px}
.small{color:#666;font-size:90%}
.controls{display:flex;flex-wrap:wrap;gap:1em;align-items:center;background:#f8f8f8;
  padding:.6em 1em;border:1px solid #ddd;border-radius:6px;margin-bottom:1em;position:sticky;
  top:0;z-index:2}
.rate label{display:inline-block;margin-right:.4em;white-space:nowrap}
.rate textarea{width:14em;height:3.2em;display:block;margin-top:.3em}
kbd{border:1px solid #bbb;border-radius:3px;padding:0 3px;background:#fff;font-size:90%}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const KEY = "motionqc-ratings:" + document.body.dataset.key;
  const tbody = document.querySelector("#volumes tbody");
  const allRows = Array.from(tbody.querySelectorAll("tr.vol"));
  const $ = (id) => document.getElementById(id);
  let state = {rater: "", ratings: {}};
  try { state = Object.assign(state, JSON.parse(localStorage.getItem(KEY) || "{}")); }
  catch (e) { state = {rater: "", ratings: {}}; }
  let current = 0;

  function save() { localStorage.setItem(KEY, JSON.stringify(state)); }
  function visible() { return allRows.filter((r) => r.style.display !== "none"); }
  function entry(name) {
    if (!state.ratings[name]) { state.ratings[name] = {rating: null, comment: "", rater: "", timestamp: ""}; }
    return state.ratings[name];
  }
  function show(row) {
    const e = state.ratings[row.dataset.name];
    const rating = e && e.rating ? String(e.rating) : "";
    row.querySelectorAll("input[type=radio]").forEach((b) => { b.checked = b.value === rating; });
    row.querySelector("textarea").value = e ? e.comment || "" : "";
    row.classList.toggle("rated", rating !== "");
  }
  function progress() {
    const n = allRows.filter((r) => { const e = state.ratings[r.dataset.name]; return e && e.rating; }).length;
    $("progress").textContent = "rated " + n + " / " + allRows.length;
  }
  function rate(row, value) {
    const e = entry(row.dataset.name);
    e.rating = value; e.rater = state.rater; e.timestamp = new Date().toISOString();
    save(); show(row); progress(); applyFilter(false);
  }
  function setCurrent(index, scroll) {
    const rows = visible();
    if (!rows.length) { return; }
    current = Math.max(0, Math.min(index, rows.length - 1));
    allRows.forEach((r) => r.classList.remove("current"));
    rows[current].classList.add("current");
    if (scroll !== false) { rows[current].scrollIntoView({block: "nearest"}); }
    $("current").textContent = rows[current].dataset.name;
  }
  function currentRow() { return visible()[current]; }
  function move(step) {
    const rows = visible(), row = currentRow();
    const at = row ? rows.indexOf(row) : -1;
    setCurrent(at + step);
  }
  function flag() {
    const t = parseFloat($("threshold").value);
    let n = 0;
    allRows.forEach((r) => {
      const on = isFinite(t) && parseFloat(r.dataset.score) >= t;
      r.classList.toggle("flagged", on); if (on) { n += 1; }
    });
    $("flagged").textContent = isFinite(t) ? n + " flagged at \u2265 " + t + " mm" : "";
  }
  function applyFilter(resetCurrent) {
    const text = $("filter").value.trim().toLowerCase();
    const qc = $("qc").value, onlyFlagged = $("only-flagged").checked, onlyUnrated = $("only-unrated").checked;
    const keep = currentRow();
    allRows.forEach((r) => {
      const e = state.ratings[r.dataset.name];
      const ok = (!text || r.dataset.name.toLowerCase().includes(text) || r.dataset.subject.toLowerCase().includes(text))
        && (!qc || r.dataset.qc === qc) && (!onlyFlagged || r.classList.contains("flagged"))
        && (!onlyUnrated || !(e && e.rating) || r === keep);
      r.style.display = ok ? "" : "none";
    });
    const rows = visible();
    if (resetCurrent !== false || rows.indexOf(keep) < 0) { setCurrent(0, false); }
    else { current = rows.indexOf(keep); }
  }
  function sortBy(key, th) {
    const numeric = th.dataset.type === "num";
    const dir = th.dataset.dir === "asc" ? -1 : 1;
    document.querySelectorAll("th[data-sort]").forEach((h) => { delete h.dataset.dir; });
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    const value = (r) => numeric ? parseFloat(r.dataset[key]) : r.dataset[key];
    const sorted = allRows.slice().sort((a, b) => {
      const x = value(a), y = value(b);
      if (numeric) {
        if (isNaN(x) && isNaN(y)) { return 0; } if (isNaN(x)) { return 1; } if (isNaN(y)) { return -1; }
        return dir * (x - y);
      }
      return dir * String(x).localeCompare(String(y), undefined, {numeric: true});
    });
    const firstError = tbody.querySelector("tr.error");
    sorted.forEach((r) => tbody.insertBefore(r, firstError));
    allRows.splice(0, allRows.length, ...sorted);
    setCurrent(0, false);
  }
  function clean(text) { return String(text || "").replace(/[\t\r\n]+/g, " ").trim(); }
  function exportTsv() {
    const lines = ["bids_name\trating\tcomment\trater\ttimestamp"];
    allRows.slice().sort((a, b) => a.dataset.name.localeCompare(b.dataset.name)).forEach((r) => {
      const e = state.ratings[r.dataset.name];
      if (!e || (!e.rating && !clean(e.comment))) { return; }
      lines.push([r.dataset.name, e.rating || "", clean(e.comment), clean(e.rater || state.rater), e.timestamp || ""].join("\t"));
    });
    const blob = new Blob([lines.join("\n") + "\n"], {type: "text/tab-separated-values"});
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = document.body.dataset.stem + "_ratings.tsv";
    document.body.appendChild(a); a.click(); a.remove();
    $("exported").textContent = "exported " + (lines.length - 1) + " row(s) to " + a.download;
    return lines.join("\n") + "\n";
  }
  window.motionqcExport = exportTsv;

  allRows.forEach((row) => {
    show(row);
    row.querySelectorAll("input[type=radio]").forEach((b) => b.addEventListener("change", () => rate(row, parseInt(b.value, 10))));
    row.querySelector("textarea").addEventListener("input", (ev) => {
      const e = entry(row.dataset.name); e.comment = ev.target.value; e.rater = e.rater || state.rater;
      e.timestamp = new Date().toISOString(); save();
    });
    row.addEventListener("click", () => { const rows = visible(); setCurrent(rows.indexOf(row), false); });
  });
  document.querySelectorAll("th[data-sort]").forEach((th) => th.addEventListener("click", () => sortBy(th.dataset.sort, th)));
  $("rater").value = state.rater || "";
  $("rater").addEventListener("input", (ev) => { state.rater = ev.target.value; save(); });
  ["filter", "qc", "only-flagged", "only-unrated"].forEach((id) => $(id).addEventListener("input", () => applyFilter(true)));
  $("threshold").addEventListener("input", () => { flag(); applyFilter(false); });
  $("export").addEventListener("click", exportTsv);
  document.addEventListener("keydown", (ev) => {
    const tag = ev.target.tagName;
    if (tag === "INPUT" && ev.target.type !== "radio" && ev.target.type !== "checkbox" || tag === "TEXTAREA" || tag === "SELECT") {
      if (ev.key === "Escape") { ev.target.blur(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    const row = currentRow();
    if (["1", "2", "3", "4"].includes(ev.key) && row) { rate(row, parseInt(ev.key, 10)); move(1); ev.preventDefault(); }
    else if (["n", "j", "ArrowDown"].includes(ev.key)) { move(1); ev.preventDefault(); }
    else if (["p", "k", "ArrowUp"].includes(ev.key)) { move(-1); ev.preventDefault(); }
    else if (ev.key === "c" && row) { row.querySelector("textarea").focus(); ev.preventDefault(); }
    else if ((ev.key === "x" || ev.key === "Delete") && row) {
      const e = entry(row.dataset.name); e.rating = null; e.timestamp = new Date().toISOString();
      save(); show(row); progress();
    }
  });
  flag(); applyFilter(true); progress();
})();
"""


def write_report(
    table: pd.DataFrame,
    path: str | Path,
    mosaics: Mapping[str, bytes] | None = None,
    title: str = "motionqc report",
    *,
    views: Mapping[str, bytes] | None = None,
    bins: Mapping[str, Sequence[float]] | None = None,
    bin_range: Sequence[float] | None = None,
    key: str | None = None,
    threshold: float | None = None,
) -> Path:
    """Write the self-contained HTML report and rating page.

    Args:
        table: One row per volume with ``bids_name``, ``motion_mm``, ``motion_std`` and optionally
            ``qc_class`` (shown), ``qc_value`` (the class, for the filter), ``status`` and
            ``error``.
        path: The HTML file to write.
        mosaics: ``bids_name`` → PNG of the encoder's input (:func:`mosaic_png`).
        title: Page title.
        views: ``bids_name`` → PNG of the original volume (:func:`views_png`).
        bins: ``bids_name`` → the predicted bin probabilities (needs ``bin_range``).
        bin_range: Edges of the bins (mm).
        key: The dataset's key for the ratings kept in the browser (default: from the title and
            the volumes' names, :func:`dataset_key`).
        threshold: Initial flag threshold (mm; none when ``None``).

    Returns:
        The written path.
    """
    mosaics, views, bins = mosaics or {}, views or {}, bins or {}
    df = table.copy()
    df["motion_value"] = pd.to_numeric(df.get("motion_mm"), errors="coerce")
    status = df["status"] if "status" in df.columns else pd.Series("ok", index=df.index)
    ok = df[status == "ok"].sort_values("motion_value", ascending=False)
    failed = df[status != "ok"]
    rows = []
    classes: set[str] = set()
    for rank, row in enumerate(ok.to_dict("records"), start=1):
        name = str(row["bids_name"])
        std = pd.to_numeric(row.get("motion_std", np.nan), errors="coerce")
        qc = row.get("qc_class", "")
        qc = "" if qc is None or (isinstance(qc, float) and np.isnan(qc)) else str(qc)
        qc_value = str(row.get("qc_value", qc) or "")
        if qc_value:
            classes.add(qc_value)
        shown = []
        if name in views:
            shown.append(_img(views[name], f"{name}: original volume"))
            shown.append(
                f'<div class="small">rows: sagittal, coronal, axial at the scan\'s own '
                f"resolution; the tick column marks the motion model's k-space segment axis "
                f"({SEGMENT_AXIS}), along which its ghosts repeat</div>"
            )
        if name in mosaics:
            shown.append(_img(mosaics[name], f"{name}: encoder input", "input"))
            shown.append('<div class="small">the encoder\'s input</div>')
        if name in bins and bin_range is not None:
            shown.append(bins_svg(bins[name], bin_range, float(row["motion_value"])))
        radios = "".join(
            f'<label><input type="radio" name="rate-{rank}" value="{v}"> {v}</label>'
            for v in (1, 2, 3, 4)
        )
        attrs = {
            "data-name": name,
            "data-score": f"{row['motion_value']:.6g}",
            "data-std": f"{std:.6g}",
            "data-qc": qc_value,
            "data-subject": _subject(name),
            "data-rank": str(rank),
        }
        attr_text = " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items())
        rows.append(
            f'<tr class="vol" {attr_text}><td class="flag"></td><td class="num">{rank}</td>'
            f"<td>{html.escape(name)}</td><td>{html.escape(_subject(name))}</td>"
            f'<td class="num">{row["motion_value"]:.2f}</td><td class="num">{std:.2f}</td>'
            f"<td>{html.escape(qc)}</td><td>{''.join(shown)}</td>"
            f'<td class="rate">{radios}<textarea placeholder="comment" '
            f'aria-label="comment on {html.escape(name)}"></textarea></td></tr>'
        )
    for row in failed.to_dict("records"):
        error = html.escape(str(row.get("error", "")))
        rows.append(
            f'<tr class="error"><td></td><td class="num">–</td>'
            f"<td>{html.escape(str(row['bids_name']))}</td><td></td>"
            f'<td colspan="5">not scored: {error}</td></tr>'
        )
    plot = (
        _img(distribution_png(ok["motion_value"]), "group distribution")
        if len(ok)
        else "<p>No volume scored.</p>"
    )
    key = key or dataset_key(title, *sorted(ok["bids_name"].astype(str)))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", title.removeprefix("motionqc report:").strip())
    stem = stem.strip("_") or "motionqc"
    options = "".join(
        f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in sorted(classes)
    )
    thr = "" if threshold is None else f"{float(threshold):g}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body data-key="{html.escape(key)}" data-stem="{html.escape(stem)}">
<h1>{html.escape(title)}</h1>
<p class="small">motionqc {motionqc.__version__}: {len(ok)} volume(s) scored, {len(failed)} not scored.
Motion is the predicted RMS deviation (mm, Jenkinson) and its uncertainty the spread (std) of the
model's bin distribution.</p>
<h2>Group distribution</h2>
{plot}
<h2>Volumes</h2>
<p class="small">Rate each volume 1–4 (4 = best, the poster's scale). Keys: <kbd>1</kbd>–<kbd>4</kbd>
rate and go to the next, <kbd>n</kbd>/<kbd>p</kbd> (or <kbd>↓</kbd>/<kbd>↑</kbd>) next/previous,
<kbd>c</kbd> comment (<kbd>Esc</kbd> leaves it), <kbd>x</kbd> clears the rating. Ratings stay in this
browser for this dataset; <em>Export</em> writes them as a TSV for
<code>motionqc train-qc --manifest FILE --bids-dir BIDS_DIR OUT_DIR</code>.</p>
<div class="controls">
<label>rater <input id="rater" size="10" placeholder="your name"></label>
<label>filter <input id="filter" size="12" placeholder="name or subject"></label>
<label>QC class <select id="qc"><option value="">all</option>{options}</select></label>
<label>flag at ≥ <input id="threshold" type="number" step="0.1" min="0" style="width:5em" value="{thr}"> mm</label>
<span id="flagged"></span>
<label><input id="only-flagged" type="checkbox"> flagged only</label>
<label><input id="only-unrated" type="checkbox"> unrated only</label>
<strong id="progress"></strong>
<button id="export" type="button">Export ratings (TSV)</button>
<span id="exported" class="small"></span>
<span class="small">current: <span id="current"></span></span>
</div>
<table id="volumes">
<thead><tr><th></th><th data-sort="rank" data-type="num">rank</th><th>bids_name</th>
<th data-sort="subject">subject</th><th data-sort="score" data-type="num">motion (mm)</th>
<th data-sort="std" data-type="num">± std</th><th data-sort="qc">QC class</th><th>views</th>
<th>rating</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # never a half-written report
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_bins(sidecar: str | Path) -> tuple[list[float], list[float]] | None:
    """The bin probabilities and range a scored volume's JSON sidecar holds (``None`` if absent)."""
    try:
        data = json.loads(Path(sidecar).read_text())
        return [float(p) for p in data["BinProbabilities"]], [float(b) for b in data["BinRange"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None

"""Self-contained HTML QC report and rating tool: score → look → rate → train your own QC head.

One file (``report.html``) with every image embedded (base64 PNG, inline SVG) and its script
inline, so it works offline, from a mail attachment or an archive — no server, no CDN; a large
study is written as pages (``page_rows``) that refer to the figure files beside them. Per
volume it shows the original scan at its own resolution (sagittal, coronal and axial slices; the
motion model's k-space segment axis marked), the encoder's input and the predicted bin
distribution. A rater gives each volume a 1–4 rating (the poster's scale: 4 = best) and a
comment, with the keyboard (``1``–``4`` rate and go on, ``n``/``p`` next/previous, ``c``
comment); ratings are kept in the browser (``localStorage``, keyed by the study's identity, shared
by its pages) across reloads and exported as a TSV (tab-separated, nothing quoted) with the columns of :data:`RATING_COLUMNS`, which ``motionqc train-qc
--bids-dir`` and :func:`motionqc.data.bids.manifest_from_bids` read as they are. The table sorts
(score, uncertainty, QC class, subject), filters, and flags volumes at or above a threshold.
Volumes that could not be scored are listed at the end with their error.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

import motionqc
from motionqc.app.files import replace_atomically
from motionqc.app.pictures import SEGMENT_AXIS, bins_svg, distribution_png
from motionqc.app.report_assets import CSS, SCRIPT

__all__ = ["PAGE_ROWS", "RATING_COLUMNS", "dataset_key", "page_path", "read_bins", "write_report"]

RATING_COLUMNS: tuple[str, ...] = ("bids_name", "rating", "comment", "rater", "timestamp")
"""Columns of the ratings TSV the report exports (``rating``: 1–4, 4 = best)."""


def dataset_key(*parts: object) -> str:
    """A short, stable key of a dataset (its ratings' ``localStorage`` key) from what names it."""
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _subject(name: str) -> str:
    found = re.search(r"(?:^|_)sub-([A-Za-z0-9]+)", name)
    return found.group(1) if found else ""


PAGE_ROWS = 500
"""Volumes per page of a paged report (:func:`write_report`)."""


def _img(png: bytes | str, alt: str, cls: str = "") -> str:
    """An ``<img>``: PNG bytes embedded (base64), or a URL relative to the page, loaded lazily."""
    if isinstance(png, str):
        src = html.escape(png)
    else:
        src = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{html.escape(alt)}" loading="lazy" src="{src}">'


def _volume_row(
    rank: int,
    row: dict,
    views: Mapping[str, bytes | str],
    mosaics: Mapping[str, bytes | str],
    bins: Mapping[str, Sequence[float]],
    bin_range: Sequence[float] | None,
) -> str:
    name = str(row["bids_name"])
    std = pd.to_numeric(row.get("motion_std", np.nan), errors="coerce")
    qc = row.get("qc_class", "")
    qc = "" if qc is None or (isinstance(qc, float) and np.isnan(qc)) else str(qc)
    qc_value = str(row.get("qc_value", qc) or "")
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
    return (
        f'<tr class="vol" {attr_text}><td class="flag"></td><td class="num">{rank}</td>'
        f"<td>{html.escape(name)}</td><td>{html.escape(_subject(name))}</td>"
        f'<td class="num">{row["motion_value"]:.2f}</td><td class="num">{std:.2f}</td>'
        f"<td>{html.escape(qc)}</td><td>{''.join(shown)}</td>"
        f'<td class="rate">{radios}<textarea placeholder="comment" '
        f'aria-label="comment on {html.escape(name)}"></textarea></td></tr>'
    )


def _error_row(row: dict) -> str:
    name = html.escape(str(row["bids_name"]))
    error = html.escape(str(row.get("error", "")))
    return (
        f'<tr class="error"><td></td><td class="num">–</td>'
        f'<td>{name}</td><td></td><td colspan="5">not scored: {error}</td></tr>'
    )


def page_path(path: str | Path, page: int) -> Path:
    """Page ``page`` (1-based) of a report: ``report.html``, then ``report_page-0002.html``."""
    path = Path(path)
    if page == 1:
        return path
    return path.with_name(f"{path.stem}_page-{page:04d}{path.suffix}")


def _nav(path: Path, page: int, pages: int) -> str:
    if pages == 1:
        return ""
    links = []
    for k in range(1, pages + 1):
        if k == page:
            links.append(f"<strong>{k}</strong>")
        elif k in (1, pages) or abs(k - page) <= 3:
            href = html.escape(quote(page_path(path, k).name))
            links.append(f'<a href="{href}">{k}</a>')
        elif abs(k - page) == 4:
            links.append("…")
    return f'<nav class="pages">page {page} of {pages}: {" ".join(links)}</nav>'


def write_report(
    table: pd.DataFrame,
    path: str | Path,
    mosaics: Mapping[str, bytes | str] | None = None,
    title: str = "motionqc report",
    *,
    views: Mapping[str, bytes | str] | None = None,
    bins: Mapping[str, Sequence[float]] | None = None,
    bin_range: Sequence[float] | None = None,
    key: str | None = None,
    threshold: float | None = None,
    page_rows: int | None = None,
) -> Path:
    """Write the HTML report and rating page: one self-contained file, or pages of a study.

    Args:
        table: One row per volume with ``bids_name``, ``motion_mm``, ``motion_std`` and optionally
            ``qc_class`` (shown), ``qc_value`` (the class, for the filter), ``status`` and
            ``error``.
        path: The HTML file to write (the first page).
        mosaics: ``bids_name`` → PNG of the encoder's input (:func:`motionqc.app.pictures.mosaic_png`):
            bytes, embedded, or a URL relative to the page (a file beside it, loaded lazily).
        title: Page title.
        views: ``bids_name`` → PNG of the original volume (:func:`motionqc.app.pictures.views_png`),
            bytes or a relative URL as ``mosaics``.
        bins: ``bids_name`` → the predicted bin probabilities (needs ``bin_range``).
        bin_range: Edges of the bins (mm).
        key: The dataset's key for the ratings kept in the browser (default: from the title and
            the volumes' names, :func:`dataset_key`); every page has it, so pages share ratings.
        threshold: Initial flag threshold (mm; none when ``None``).
        page_rows: Volumes per page: worst first, then the ones not scored; page 1 is ``path``,
            page *k* :func:`page_path` (default: every volume on one page). Pages left by an
            earlier, longer report are removed.

    Returns:
        The first page's path.
    """
    mosaics, views, bins = mosaics or {}, views or {}, bins or {}
    df = table.copy()
    df["motion_value"] = pd.to_numeric(df.get("motion_mm"), errors="coerce")
    status = df["status"] if "status" in df.columns else pd.Series("ok", index=df.index)
    ok = df[status == "ok"].sort_values("motion_value", ascending=False)
    failed = df[status != "ok"]
    classes = sorted(
        {str(r.get("qc_value", r.get("qc_class", "")) or "") for r in ok.to_dict("records")}
        - {"", "nan", "None"}
    )
    key = key or dataset_key(title, *sorted(ok["bids_name"].astype(str)))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", title.removeprefix("motionqc report:").strip())
    stem = stem.strip("_") or "motionqc"
    plot = (
        _img(distribution_png(ok["motion_value"]), "group distribution")
        if len(ok)
        else "<p>No volume scored.</p>"
    )
    records = [("ok", r) for r in ok.to_dict("records")] + [
        ("error", r) for r in failed.to_dict("records")
    ]
    size = max(1, int(page_rows)) if page_rows else max(1, len(records))
    pages = max(1, -(-len(records) // size))
    path = Path(path)
    head = dict(
        title=title, key=key, stem=stem, total=len(ok), failed=len(failed), classes=classes,
        threshold=threshold,
    )  # fmt: skip
    for page in range(1, pages + 1):
        chunk = records[(page - 1) * size : page * size]
        rows = [
            _volume_row((page - 1) * size + i + 1, r, views, mosaics, bins, bin_range)
            if kind == "ok"
            else _error_row(r)
            for i, (kind, r) in enumerate(chunk)
        ]
        nav = _nav(path, page, pages)
        _write_page(page_path(path, page), rows, nav, plot if page == 1 else "", **head)
    for stale in path.parent.glob(f"{path.stem}_page-*{path.suffix}"):
        number = stale.stem.rsplit("-", 1)[-1]
        if not number.isdigit() or int(number) > pages:
            stale.unlink()
    return path


def _write_page(
    target: Path,
    rows: list[str],
    nav: str,
    plot: str,
    *,
    title: str,
    key: str,
    stem: str,
    total: int,
    failed: int,
    classes: list[str],
    threshold: float | None,
) -> None:
    options = "".join(
        f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in classes
    )
    thr = "" if threshold is None else f"{float(threshold):g}"
    distribution = f"<h2>Group distribution</h2>\n{plot}" if plot else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body data-key="{html.escape(key)}" data-stem="{html.escape(stem)}" data-total="{total}">
<h1>{html.escape(title)}</h1>
<p class="small">motionqc {motionqc.__version__}: {total} volume(s) scored, {failed} not scored.
Motion is the predicted RMS deviation (mm, Jenkinson) and its uncertainty the spread (std) of the
model's bin distribution.</p>
{distribution}
<h2>Volumes</h2>
<p class="small">Rate each volume 1–4 (4 = best, the poster's scale). Keys: <kbd>1</kbd>–<kbd>4</kbd>
rate and go to the next, <kbd>n</kbd>/<kbd>p</kbd> (or <kbd>↓</kbd>/<kbd>↑</kbd>) next/previous,
<kbd>c</kbd> comment (<kbd>Esc</kbd> leaves it), <kbd>x</kbd> clears the rating. Ratings stay in this
browser for this study, on every page of it; <em>Export</em> writes them all as a TSV for
<code>motionqc train-qc --manifest FILE --bids-dir BIDS_DIR OUT_DIR</code>.</p>
{nav}
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
{nav}
<script>{SCRIPT}</script>
</body></html>
"""
    # never a half-written page, nor a temporary file left by a full disk
    replace_atomically(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def read_bins(sidecar: str | Path) -> tuple[list[float], list[float]] | None:
    """The bin probabilities and range a scored volume's JSON sidecar holds (``None`` if absent)."""
    try:
        data = json.loads(Path(sidecar).read_text())
        return [float(p) for p in data["BinProbabilities"]], [float(b) for b in data["BinRange"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None

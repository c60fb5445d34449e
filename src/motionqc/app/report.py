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
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

import motionqc
from motionqc.app.pictures import SEGMENT_AXIS, bins_svg, distribution_png

__all__ = ["RATING_COLUMNS", "dataset_key", "read_bins", "write_report"]

RATING_COLUMNS: tuple[str, ...] = ("bids_name", "rating", "comment", "rater", "timestamp")
"""Columns of the ratings TSV the report exports (``rating``: 1–4, 4 = best)."""


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
        mosaics: ``bids_name`` → PNG of the encoder's input (:func:`motionqc.app.pictures.mosaic_png`).
        title: Page title.
        views: ``bids_name`` → PNG of the original volume (:func:`motionqc.app.pictures.views_png`).
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

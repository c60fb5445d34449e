"""The report page's style sheet and script (inline in every page: no server, no CDN).

The script keeps the ratings in ``localStorage`` under ``motionqc-ratings:<data-key>``, the
study's identity, so that every page of a paged report shares them: the progress counts and
*Export* writes the ratings of every page. An export joins the fields with tabs and replaces
tabs and newlines in comments by spaces; nothing is quoted (read it with ``csv.QUOTE_NONE``).
"""

__all__ = ["CSS", "SCRIPT"]

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
th[data-sort]{cursor:pointer}
th[data-sort]::after{content:" \\2195";color:#999}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.error td{background:#fff0f0}
nav.pages{margin:.5em 0}
nav.pages a,nav.pages strong{margin-right:.5em}
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

SCRIPT = r"""
(function () {
  "use strict";
  const KEY = "motionqc-ratings:" + document.body.dataset.key;
  const TOTAL = parseInt(document.body.dataset.total, 10);
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
  function progress() {  // over every page of the study: they share the ratings
    const n = Object.keys(state.ratings).filter((k) => state.ratings[k] && state.ratings[k].rating).length;
    $("progress").textContent = "rated " + n + " / " + TOTAL;
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
    Object.keys(state.ratings).sort().forEach((name) => {  // every page's ratings
      const e = state.ratings[name];
      if (!e || (!e.rating && !clean(e.comment))) { return; }
      lines.push([clean(name), e.rating || "", clean(e.comment), clean(e.rater || state.rater), e.timestamp || ""].join("\t"));
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

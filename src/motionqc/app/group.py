"""``motionqc group``: merge the shard tables and write the report, at any study size.

A study of a few hundred volumes gets one self-contained ``report.html`` (every picture embedded,
as a mail attachment needs). A larger one is paged (:data:`motionqc.app.report.PAGE_ROWS`
volumes a page: ``report.html``, ``report_page-0002.html`` …) and its pages refer to the figures
beside them (``sub-*/figures/*.png``, loaded lazily by the browser) instead of holding them: a
page stays a few MB whatever the study's size, and ``group`` never holds the pictures in memory.

Every page keys the ratings kept in the browser by the study's identity (:func:`study_key`): the
encoder's SHA-256 and each scored volume's name and source-file SHA-256 (from its sidecar; its
scores where a sidecar lacks it), never the folder's path, so another study scored from the same
path does not show, count or export the first one's ratings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from motionqc.app.derivatives import (
    derivative_path,
    merge_shards,
    sidecar_path,
    write_derivative_extras,
)
from motionqc.app.report import PAGE_ROWS, dataset_key, write_report
from motionqc.data.bids import parse_entities
from motionqc.qc_task import QC_CLASS_NAMES

__all__ = ["EMBED_BYTES", "mosaic_path", "run_group", "study_key", "views_path"]

EMBED_BYTES = 32 * 2**20
"""Pictures up to this many bytes in all (and one page of volumes) are embedded in one file."""


def mosaic_path(output_dir: str | Path, name: str) -> Path:
    """Where the mosaic of a volume goes: ``<out>/sub-<label>/figures/<bids_name>_mosaic.png``."""
    subject = parse_entities(name).get("sub", "unknown")
    return Path(output_dir) / f"sub-{subject}" / "figures" / f"{name}_mosaic.png"


def views_path(output_dir: str | Path, name: str) -> Path:
    """Where the original volume's views go: ``<out>/sub-<label>/figures/<bids_name>_views.png``."""
    return mosaic_path(output_dir, name).with_name(f"{name}_views.png")


def _display_class(row: dict[str, Any]) -> str:
    try:
        label = int(float(str(row.get("qc_class", ""))))
    except ValueError:
        return ""
    p = row.get(f"p_qc{label}", "")
    shown = QC_CLASS_NAMES.get(label, str(label))
    return shown + (f", p {float(p):.2f}" if p not in ("", None) else "")


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def study_key(encoder_sha256: str, volumes: dict[str, str]) -> str:
    """The key of a study's ratings in the browser: its encoder and its volumes' identities.

    Args:
        encoder_sha256: The encoder file's SHA-256.
        volumes: ``bids_name`` → the volume's identity (its source file's SHA-256).

    Returns:
        A 16-character hex key.
    """
    return dataset_key(encoder_sha256, *sorted(f"{n}\t{v}" for n, v in volumes.items()))


def run_group(output_dir: str | Path, title: str | None = None) -> Path:
    """The ``group`` step: merge the participant tables and write the report's pages.

    Args:
        output_dir: The derivative folder.
        title: Report title (default: ``motionqc report: <source dataset>``).

    Returns:
        The report's first page (the merged table is ``output_dir/group_T1w.tsv``).

    Raises:
        ValueError: If the folder holds no participant table.
    """
    out = Path(output_dir)
    merged = merge_shards(out)
    write_derivative_extras(out)
    figures: dict[str, dict[str, Path]] = {"views": {}, "mosaics": {}}
    size = 0
    for name in merged["bids_name"]:
        for kind, where in (("views", views_path), ("mosaics", mosaic_path)):
            png = where(out, name)
            try:
                size += png.stat().st_size
            except OSError:
                continue
            figures[kind][name] = png
    embed = len(merged) <= PAGE_ROWS and size <= EMBED_BYTES
    shown: dict[str, dict[str, bytes | str]] = {}
    for kind, found in figures.items():
        if embed:
            shown[kind] = {n: p.read_bytes() for n, p in found.items()}
        else:  # a URL relative to the pages, which lie in ``out``
            shown[kind] = {n: quote(p.relative_to(out).as_posix()) for n, p in found.items()}
    bins, identity, bin_range = {}, {}, None
    for row in merged.to_dict("records"):
        name = row["bids_name"]
        nifti = derivative_path(out, name)
        sidecar = _read_json(sidecar_path(nifti) if nifti else None)
        try:
            bins[name] = [float(p) for p in sidecar["BinProbabilities"]]
            bin_range = [float(b) for b in sidecar["BinRange"]]
        except (KeyError, TypeError, ValueError):
            pass
        if row.get("status", "ok") == "ok":
            identity[name] = str(
                sidecar.get("SourceSHA256") or f"{row.get('motion_mm')}\t{row.get('motion_std')}"
            )
    table = merged.copy()
    if "qc_class" in table.columns:
        table["qc_value"] = table["qc_class"]
        table["qc_class"] = [_display_class(row) for row in table.to_dict("records")]
    description = _read_json(out / "dataset_description.json")
    source, encoder = str(out.resolve()), ""
    try:
        source = description["SourceDatasets"][0]["URL"]
    except (KeyError, IndexError, TypeError):
        pass
    try:
        encoder = str(description["GeneratedBy"][0]["Model"]["sha256"])
    except (KeyError, IndexError, TypeError):
        pass
    if title is None:
        title = "motionqc report"
        if source.startswith("file:"):
            title = f"motionqc report: {Path(unquote(urlparse(source).path)).name}"
    return write_report(
        table,
        out / "report.html",
        shown["mosaics"],
        title=title,
        views=shown["views"],
        bins=bins,
        bin_range=bin_range,
        key=study_key(encoder, identity),
        page_rows=PAGE_ROWS,
    )

"""Cortical thickness a user already has: FreeSurfer's ``?h.aparc.stats`` and manifest columns.

:func:`read_aparc_stats` and :func:`freesurfer_mean_thickness` read FreeSurfer's stats files;
:func:`manifest_thickness` takes one thickness per manifest row from a ``thickness`` column or
from FreeSurfer stats files, reporting unreadable rows. Nothing here needs ANTs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "AparcStats",
    "MANIFEST_SOURCES",
    "freesurfer_mean_thickness",
    "manifest_thickness",
    "read_aparc_stats",
]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class AparcStats:
    """One hemisphere's ``?h.aparc.stats``.

    Attributes:
        path: The file read.
        hemisphere: ``"lh"``, ``"rh"`` or ``""`` when it cannot be told.
        regions: One row per region, columns as in ``# ColHeaders`` (``StructName, NumVert,
            SurfArea, GrayVol, ThickAvg, ThickStd, …``), numeric where possible.
        mean_thickness_mm: The ``# Measure Cortex, MeanThickness`` value, or, when the file has
            none, the NumVert-weighted mean of ``ThickAvg``.
        from_measure: Whether ``mean_thickness_mm`` came from the ``Measure`` line.
        n_vertices: Total ``NumVert`` over the regions.
    """

    path: str
    hemisphere: str
    regions: pd.DataFrame
    mean_thickness_mm: float
    from_measure: bool
    n_vertices: int


_MEASURE = re.compile(r"^#\s*Measure\s+Cortex\s*,\s*MeanThickness\s*,[^,]*,\s*([-+0-9.eE]+)")


_HEMI = re.compile(r"^#\s*hemi\s+(lh|rh)\b")


def read_aparc_stats(path: str | Path) -> AparcStats:
    """Read a FreeSurfer ``lh.aparc.stats`` / ``rh.aparc.stats`` file.

    The region table follows the ``# ColHeaders`` line (whitespace-separated, one region per
    line); the hemisphere mean comes from ``# Measure Cortex, MeanThickness, …, <value>, mm``.

    Args:
        path: The stats file (any ``aparc*.stats`` parcellation).

    Returns:
        An :class:`AparcStats`.

    Raises:
        ValueError: If the file is missing or has no ``ColHeaders`` line, no ``ThickAvg`` or
            ``NumVert`` column, or no region rows, or a row has the wrong number of fields.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: aparc stats file not found")
    headers: list[str] | None = None
    measure: float | None = None
    hemisphere = ""
    rows: list[list[str]] = []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if m := _MEASURE.match(stripped):
                measure = float(m.group(1))
            elif m := _HEMI.match(stripped):
                hemisphere = m.group(1)
            elif stripped.lstrip("#").strip().startswith("ColHeaders"):
                headers = stripped.lstrip("#").split()[1:]
            continue
        if headers is None:
            raise ValueError(f"{path}: line {lineno}: data before the '# ColHeaders' line")
        fields = stripped.split()
        if len(fields) != len(headers):
            raise ValueError(
                f"{path}: line {lineno}: {len(fields)} fields, expected {len(headers)} "
                f"({' '.join(headers)})"
            )
        rows.append(fields)
    if headers is None:
        raise ValueError(f"{path}: no '# ColHeaders' line; not a FreeSurfer stats file")
    missing = [c for c in ("StructName", "NumVert", "ThickAvg") if c not in headers]
    if missing:
        raise ValueError(f"{path}: column(s) {', '.join(missing)} missing from ColHeaders")
    if not rows:
        raise ValueError(f"{path}: no region rows")
    regions = pd.DataFrame(rows, columns=headers)
    for column in headers:
        if column != "StructName":
            regions[column] = pd.to_numeric(regions[column], errors="coerce")
    if not hemisphere:
        hemisphere = next((h for h in ("lh", "rh") if path.name.startswith(h + ".")), "")
    n_vertices = int(regions["NumVert"].sum())
    if measure is None:
        if n_vertices <= 0:
            raise ValueError(f"{path}: no MeanThickness measure and no vertices to weight by")
        measure_value = float((regions["ThickAvg"] * regions["NumVert"]).sum() / n_vertices)
    else:
        measure_value = measure
    return AparcStats(
        path=str(path),
        hemisphere=hemisphere,
        regions=regions,
        mean_thickness_mm=measure_value,
        from_measure=measure is not None,
        n_vertices=n_vertices,
    )


def freesurfer_mean_thickness(lh: str | Path | AparcStats, rh: str | Path | AparcStats) -> float:
    """Whole-cortex mean thickness from both hemispheres, weighted by vertex count.

    FreeSurfer's ``MeanThickness`` of a hemisphere is the mean over its white-surface vertices,
    so the whole-brain value (as ``aparcstats2table``/ENIGMA compute it) is the mean of the two
    hemisphere values weighted by their number of vertices (the sum of ``NumVert`` over the
    regions; the medial wall, which has no thickness, is not a region). Weights are **vertex
    counts, not surface area**.

    Args:
        lh: Left ``lh.aparc.stats`` (path or :class:`AparcStats`).
        rh: Right ``rh.aparc.stats``.

    Returns:
        Mean cortical thickness in mm.

    Raises:
        ValueError: If either file cannot be read or has no vertices.
    """
    left = lh if isinstance(lh, AparcStats) else read_aparc_stats(lh)
    right = rh if isinstance(rh, AparcStats) else read_aparc_stats(rh)
    total = left.n_vertices + right.n_vertices
    if left.n_vertices <= 0 or right.n_vertices <= 0:
        raise ValueError(f"{left.path}, {right.path}: a hemisphere has no vertices")
    return float(
        (left.mean_thickness_mm * left.n_vertices + right.mean_thickness_mm * right.n_vertices)
        / total
    )


MANIFEST_SOURCES: tuple[str, ...] = ("column", "aparc_stats", "freesurfer_dir")
"""Where :func:`manifest_thickness` takes a row's value from, in order of preference."""


def _resolve_path(value: object, base: Path | None) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _filled(value: object) -> bool:
    return (
        value is not None
        and not (isinstance(value, float) and np.isnan(value))
        and (str(value).strip() not in ("", "nan", "<NA>", "None"))
    )


def manifest_thickness(
    manifest: pd.DataFrame,
    *,
    column: str = "thickness",
    base_dir: str | Path | None = None,
) -> pd.DataFrame:
    """One mean cortical thickness per manifest row, from a column or FreeSurfer stats files.

    Each row takes the first of these that it has:

    1. ``column``: a thickness in mm computed elsewhere (any tool);
    2. ``lh_aparc_stats`` and ``rh_aparc_stats``: paths of the two FreeSurfer stats files;
    3. ``freesurfer_dir``: a FreeSurfer subject folder holding ``stats/lh.aparc.stats`` and
       ``stats/rh.aparc.stats``.

    Both hemispheres are combined with :func:`freesurfer_mean_thickness` (vertex-weighted). A row
    whose value cannot be had (missing or unreadable file, non-positive value) gets ``NaN`` and
    a one-line reason; the other rows are unaffected.

    Args:
        manifest: One row per volume (any other columns are kept).
        column: Name of the thickness column, when the manifest has one.
        base_dir: Folder that relative stats paths are relative to (default: as given).

    Returns:
        A copy of the manifest with ``thickness`` (mm, ``NaN`` when unavailable),
        ``thickness_source`` (one of :data:`MANIFEST_SOURCES`, or ``""``) and
        ``thickness_error`` (empty when the value was read).

    Raises:
        ValueError: If the manifest has none of the thickness columns.
    """
    has_column = column in manifest.columns
    has_stats = {"lh_aparc_stats", "rh_aparc_stats"} <= set(manifest.columns)
    has_dir = "freesurfer_dir" in manifest.columns
    if not (has_column or has_stats or has_dir):
        raise ValueError(
            f"manifest_thickness: the manifest needs a {column!r} column, lh_aparc_stats + "
            "rh_aparc_stats, or freesurfer_dir"
        )
    base = Path(base_dir).expanduser() if base_dir is not None else None
    values: list[float] = []
    sources: list[str] = []
    errors: list[str] = []
    for k, (_, row) in enumerate(manifest.iterrows()):
        name = str(row["volume_id"]) if "volume_id" in manifest.columns else f"row {k}"
        value, source, error = float("nan"), "", ""
        try:
            if has_column and _filled(row[column]):
                source = "column"
                value = float(row[column])
            elif has_stats and _filled(row["lh_aparc_stats"]) and _filled(row["rh_aparc_stats"]):
                source = "aparc_stats"
                value = freesurfer_mean_thickness(
                    _resolve_path(row["lh_aparc_stats"], base),
                    _resolve_path(row["rh_aparc_stats"], base),
                )
            elif has_dir and _filled(row["freesurfer_dir"]):
                source = "freesurfer_dir"
                stats = _resolve_path(row["freesurfer_dir"], base) / "stats"
                value = freesurfer_mean_thickness(
                    stats / "lh.aparc.stats", stats / "rh.aparc.stats"
                )
            else:
                error = f"{name}: no thickness value and no FreeSurfer stats"
            if source and not (np.isfinite(value) and value > 0):
                raise ValueError(f"thickness {value} is not a positive number of mm")
        except (ValueError, TypeError, OSError) as exc:
            value, error = float("nan"), _one_line(f"{name}: {exc}")
        values.append(value)
        sources.append(source if not error else "")
        errors.append(error)
    out = manifest.copy()
    out["thickness"] = values
    out["thickness_source"] = sources
    out["thickness_error"] = errors
    return out

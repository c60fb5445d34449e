"""BIDS derivatives for scoring runs: output folder checks, metadata, shards, resumable TSVs.

Follows MRIQC's conventions: ``motionqc score bids_dir output_dir participant`` writes a BIDS
derivative dataset (``dataset_description.json`` with ``DatasetType: derivative``) whose tables are
keyed by ``bids_name``, and refuses to write inside ``bids_dir``. Large studies split the work
into ``N`` array jobs with ``--shard I/N``; each shard appends to its own TSV, one row per
volume, flushed as soon as the volume is scored, so an interrupted job loses nothing and a re-run
skips what is already there. The ``group`` step merges the shard tables.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import pandas as pd

import motionqc
from motionqc.app.files import replace_atomically
from motionqc.app.text import cell

__all__ = [
    "check_output_dir",
    "is_motionqc_derivative",
    "write_dataset_description",
    "write_derivative_extras",
    "derivative_name",
    "derivative_path",
    "sidecar_path",
    "BIDSIGNORE",
    "parse_shard",
    "shard_items",
    "shard_table",
    "table_text",
    "ResultTable",
    "merge_shards",
    "GROUP_TABLE",
]

T = TypeVar("T")

GROUP_TABLE = "group_T1w.tsv"
"""Name of the merged table the ``group`` step writes (as MRIQC's ``group_T1w.tsv``)."""


def is_motionqc_derivative(output_dir: str | Path) -> bool:
    """Whether a folder's ``dataset_description.json`` is a motionqc derivative's."""
    try:
        description = json.loads((Path(output_dir) / "dataset_description.json").read_text())
        return (
            description.get("DatasetType") == "derivative"
            and description["GeneratedBy"][0]["Name"] == "motionqc"
        )
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return False


def check_output_dir(bids_dir: str | Path, output_dir: str | Path) -> Path:
    """Refuse an output folder that would mix the derivatives with other data, in one line.

    Refused, as MRIQC does, an output folder inside (or equal to) the BIDS dataset; and so that
    no file of someone else is replaced: the root folder, a folder that holds the BIDS dataset,
    a folder whose ``dataset_description.json`` is not a motionqc derivative's (a study's parent,
    or the raw dataset when input and output are swapped), and a folder without one that holds
    ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` images.

    Args:
        bids_dir: The input BIDS dataset.
        output_dir: Where derivatives go.

    Returns:
        The resolved output folder (created).

    Raises:
        ValueError: If the folder must not be written (one line).
    """
    from motionqc.data.bids import find_t1w

    bids = Path(bids_dir).resolve()
    out = Path(output_dir).resolve()
    if out == bids or bids in out.parents:
        raise ValueError(f"{out}: output folder must not be inside the BIDS dataset {bids}")
    if out.parent == out:
        raise ValueError(f"{out}: the root folder cannot be the output folder; name a new folder")
    if (out / "dataset_description.json").exists() and not is_motionqc_derivative(out):
        raise ValueError(
            f"{out}: its dataset_description.json is not a motionqc derivative's (a BIDS dataset, "
            "or input and output swapped?); choose a new output folder"
        )
    if out in bids.parents:
        raise ValueError(f"{out}: output folder holds the BIDS dataset {bids}; choose a new folder")
    if out.is_dir() and not is_motionqc_derivative(out):
        raw = [p for p in find_t1w(out) if "motionqc_T1w" not in p.name]
        if raw:
            raise ValueError(
                f"{out}: holds T1w images ({raw[0].relative_to(out)}) and no motionqc "
                "dataset_description.json: a BIDS dataset (input and output swapped?); choose a "
                "new output folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_dataset_description(
    output_dir: str | Path, source: str | Path | None = None, model: dict[str, object] | None = None
) -> Path:
    """Write the derivative's ``dataset_description.json`` (BIDS 1.9).

    Args:
        output_dir: The derivative dataset root.
        source: The input dataset (recorded in ``SourceDatasets``).
        model: Details of the model used (checkpoint, its SHA-256, …), stored under ``GeneratedBy``.

    Returns:
        The JSON file's path.
    """
    generated = {
        "Name": "motionqc",
        "Version": motionqc.__version__,
        "Description": "motion score and QC class per T1w",
    }
    if model:
        generated["Model"] = model
    description: dict[str, object] = {
        "Name": "motionqc motion scores",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "Authors": [f"motionqc {motionqc.__version__} (automatic derivatives)"],
        "GeneratedBy": [generated],
    }
    if source is not None:
        uri = Path(source).resolve().as_uri()
        description["SourceDatasets"] = [{"URL": uri}]
        description["DatasetLinks"] = {"raw": uri}  # for the sidecars' bids:raw: Sources
    path = Path(output_dir) / "dataset_description.json"
    text = json.dumps(description, indent=2) + "\n"
    replace_atomically(path, lambda tmp: tmp.write_text(text))  # shards may write it at once
    return path


BIDSIGNORE: tuple[str, ...] = (
    "sub-*/figures/",
    "/motion_T1w*.tsv",
    "/group_T1w.tsv",
    "/report.html",
    "/report_page-*.html",
    "/*_ratings.tsv",
)
"""What ``.bidsignore`` hides from the BIDS validator: figures and tables, as fMRIPrep does."""

_README = """# motionqc derivatives

Motion scores of T1-weighted images predicted by motionqc {version}: for every scored image,
`sub-<label>/[ses-<label>/]anat/<name>_rec-motionqc_T1w.nii.gz` is the volume exactly as the
encoder saw it (canonical RAS+, resampled, cropped or padded to its grid, divided by its mean), and
its JSON sidecar holds the predicted motion (`MotionScore`, mm RMS deviation, Jenkinson; its
`MotionScoreStd`), the score convention, the predicted bin distribution and, with a QC head, the
QC class probabilities. `motion_T1w*.tsv` (one per shard) and `group_T1w.tsv` list every image
keyed by `bids_name`, `report.html` is the rating page and `sub-*/figures/` its images; these are
listed in `.bidsignore`. The model is named with its SHA-256 in `dataset_description.json`.
"""


def write_derivative_extras(output_dir: str | Path) -> None:
    """Write the derivative's ``README`` (when absent) and its ``.bidsignore``.

    Args:
        output_dir: The derivative dataset root.
    """
    out = Path(output_dir)
    readme = out / "README"
    if not readme.exists():
        text = _README.format(version=motionqc.__version__)
        replace_atomically(readme, lambda tmp: tmp.write_text(text))
    ignore = out / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    missing = [p for p in BIDSIGNORE if p not in lines]
    if missing:
        text = "\n".join([*lines, *missing]) + "\n"
        replace_atomically(ignore, lambda tmp: tmp.write_text(text))


_ORDER = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "flip", "inv", "mt", "part")


def derivative_name(name: str) -> str | None:
    """The BIDS name of a scored image's derivative: its entities with ``rec-motionqc`` added.

    ``sub-01_ses-a_acq-fast_run-2_T1w`` → ``sub-01_ses-a_acq-fast_rec-motionqc_run-2_T1w``; an
    existing ``rec-<label>`` becomes ``rec-<label>motionqc``.

    Args:
        name: The image's BIDS name (no extension).

    Returns:
        The derivative's name, or ``None`` when ``name`` is not a BIDS T1w name (no
        ``sub-<label>``, an unknown entity, or not ending in ``_T1w``).
    """
    parts = name.split("_")
    if len(parts) < 2 or parts[-1] != "T1w":
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or key not in _ORDER or not value.isalnum() or key in entities:
            return None
        entities[key] = value
    if "sub" not in entities:
        return None
    entities["rec"] = entities.get("rec", "") + "motionqc"
    ordered = [f"{k}-{entities[k]}" for k in _ORDER if k in entities]
    return "_".join([*ordered, "T1w"])


def derivative_path(output_dir: str | Path, name: str) -> Path | None:
    """Where a scored image's derivative NIfTI goes (``None`` for a name that is not BIDS)."""
    derived = derivative_name(name)
    if derived is None:
        return None
    entities = dict(part.split("-", 1) for part in derived.split("_")[:-1])
    folder = Path(output_dir) / f"sub-{entities['sub']}"
    if "ses" in entities:
        folder = folder / f"ses-{entities['ses']}"
    return folder / "anat" / f"{derived}.nii.gz"


def sidecar_path(nifti: str | Path) -> Path:
    """The JSON sidecar of a ``.nii.gz``/``.nii`` file (same name, ``.json``)."""
    nifti = Path(nifti)
    stem = nifti.name.removesuffix(".gz").removesuffix(".nii")
    return nifti.with_name(f"{stem}.json")


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard I/N`` (0 ≤ I < N, as SLURM's ``--array=0-(N-1)``).

    Args:
        text: ``"I/N"``.

    Returns:
        ``(I, N)``.

    Raises:
        ValueError: If the text is not ``I/N`` with 0 ≤ I < N.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return index, count


def shard_items(items: Sequence[T], index: int, count: int, key=str) -> list[T]:
    """Return shard ``index`` of ``count``: items sorted by ``key``, every ``count``-th one.

    The shards are disjoint and together cover every item, whatever order the items come in.

    Args:
        items: What to split (e.g. T1w paths).
        index: Shard index, 0 ≤ index < count.
        count: Number of shards.
        key: Sort key (default ``str``).

    Returns:
        The shard's items.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    return sorted(items, key=key)[index::count]


def shard_table(output_dir: str | Path, index: int = 0, count: int = 1) -> Path:
    """Path of the TSV a shard writes (``motion_T1w.tsv`` when not sharded)."""
    name = "motion_T1w.tsv" if count == 1 else f"motion_T1w_shard-{index:04d}of{count:04d}.tsv"
    return Path(output_dir) / name


class ResultTable:
    """An append-only TSV keyed by ``bids_name``: each row is flushed and synced when written.

    Args:
        path: The TSV file.
        columns: Its columns; ``bids_name`` must be one. Rows missing a column get it empty.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        if "bids_name" not in columns:
            raise ValueError("columns must include 'bids_name'")
        self.path = Path(path)
        self.columns = list(columns)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.write_text("\t".join(self.columns) + "\n")
        else:
            _drop_partial_line(self.path)
            header = self.path.read_text().splitlines()[0].split("\t")
            if header != self.columns:
                raise ValueError(
                    f"{self.path}: existing table has columns {header}, expected {self.columns}"
                )

    def done(self, include_errors: bool = False) -> set[str]:
        """Names already in the table (by default only those scored without error)."""
        table = self.read()
        if not include_errors and "status" in table.columns:
            table = table[table["status"] == "ok"]
        return set(table["bids_name"])

    def read(self) -> pd.DataFrame:
        """The table as written so far (a truncated last line from a kill is ignored)."""
        lines = self.path.read_text().splitlines()
        complete = [line for line in lines[1:] if line.count("\t") == len(self.columns) - 1]
        rows = [dict(zip(self.columns, line.split("\t"), strict=True)) for line in complete]
        return pd.DataFrame(rows, columns=self.columns)

    def append(self, row: dict[str, object]) -> None:
        """Append one row and make it durable before returning."""
        values = ["" if row.get(c) is None else _clean(row.get(c)) for c in self.columns]
        with open(self.path, "a") as handle:
            handle.write("\t".join(values) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _drop_partial_line(path: Path) -> None:
    """Cut a last line left without its newline by a kill, so that appends start on a new line."""
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def _read_table(path: Path) -> pd.DataFrame:
    """Read a table written by :class:`ResultTable`, ignoring a line cut short by a kill."""
    lines = path.read_text().splitlines()
    if not lines:
        return pd.DataFrame()
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:] if line.count("\t") == len(header) - 1]
    return pd.DataFrame(rows, columns=header, dtype=str)


def table_text(value: object) -> str:
    """A value as a table cell holds it: one line, runs of whitespace (tabs too) as one space.

    Characters that are not printable (a file name's escape sequences, bytes that are not
    UTF-8) are written as Python escapes, and a value starting with ``=``, ``+``, ``-`` or
    ``@`` gets a ``'`` before it, so that a spreadsheet does not run it
    (:func:`motionqc.app.text.cell`).
    """
    return cell(value)


def _clean(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return table_text(value)


def merge_shards(output_dir: str | Path, paths: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """Merge the shard tables of a derivative folder into :data:`GROUP_TABLE`.

    A volume found in several shards (a re-run under another sharding) keeps its last ``ok`` row.

    Args:
        output_dir: The derivative dataset root.
        paths: Tables to merge (default: every ``motion_T1w*.tsv`` in ``output_dir``).

    Returns:
        The merged table, sorted by ``bids_name``; also written to ``output_dir/group_T1w.tsv``.

    Raises:
        ValueError: If there is no table to merge.
    """
    out = Path(output_dir)
    files = (
        sorted(Path(p) for p in paths) if paths is not None else sorted(out.glob("motion_T1w*.tsv"))
    )
    if not files:
        raise ValueError(
            f"{out}: no motion_T1w*.tsv table to merge (run the participant step first)"
        )
    frames = [frame for frame in map(_read_table, files) if "bids_name" in frame.columns]
    if not frames:
        raise ValueError(f"{out}: the motion_T1w*.tsv tables are empty")
    merged = pd.concat(frames, ignore_index=True)
    if "status" in merged.columns:
        merged["_ok"] = merged["status"] == "ok"
        merged = merged.sort_values(["bids_name", "_ok"], kind="stable").drop(columns="_ok")
    merged = (
        merged.drop_duplicates("bids_name", keep="last")
        .sort_values("bids_name")
        .reset_index(drop=True)
    )
    replace_atomically(out / GROUP_TABLE, lambda tmp: merged.to_csv(tmp, sep="\t", index=False))
    return merged

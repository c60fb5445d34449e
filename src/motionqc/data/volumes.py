"""Manifests, volume loading and preprocessing.

A *manifest* is a TSV with one row per volume and at least the columns
``volume_id, dataset, site, subject, path, qc_score`` (``qc_score`` 1–4, 4 = best, or empty),
plus an optional ``sha256``. Extra columns (``mask_path``, ``licence``, ``age``, …) are kept.
Relative paths resolve against the manifest's folder (or ``base_dir``).

Every problem with an input names the file: :class:`VolumeError` for a volume that cannot be
used, :class:`ManifestError` for a manifest that is malformed or points at missing files. Both are
``ValueError`` subclasses whose message is a single line.
"""

from __future__ import annotations

import gzip
import hashlib
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torchio as tio

from motionqc import paths
from motionqc.data.nifti_guard import (
    MAX_VOXELS,
    check_claimed_size,
    check_geometry,
    check_nifti_file,
    file_problem,
    resampled_shape,
)

__all__ = [
    "VolumeError",
    "ManifestError",
    "REQUIRED_COLUMNS",
    "file_sha256",
    "load_manifest",
    "read_tsv",
    "sample_manifest",
    "MAX_VOXELS",
    "MIN_SIDE",
    "load_volume",
    "load_mask",
    "preprocess",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("volume_id", "dataset", "site", "subject", "path", "qc_score")
"""Columns every manifest must have."""


class VolumeError(ValueError):
    """A volume that cannot be used; the message names the file and the problem."""


class ManifestError(ValueError):
    """A manifest that is malformed or points at missing files; the message names the file."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file.

    Args:
        path: File to hash.
        chunk: Read size in bytes.

    Returns:
        The 64-character hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(
    path: str | Path,
    base_dir: str | Path | None = None,
    check_files: bool = True,
    verify_checksums: bool = False,
    on_error: str = "raise",
) -> pd.DataFrame:
    """Read and validate a manifest TSV.

    Args:
        path: The manifest (tab-separated, header row).
        base_dir: Folder that relative ``path`` values resolve against (default: the manifest's).
        check_files: Check that every volume file exists.
        verify_checksums: Compare each file's SHA-256 with its ``sha256`` column (when filled).
        on_error: ``"raise"`` stops at the first bad row; ``"skip"`` drops bad rows, warns once
            per row, and lists them in ``df.attrs["errors"]`` (volume_id → message).

    Returns:
        The manifest with ``path`` resolved to absolute paths and ``qc_score`` as a nullable
        integer column (``Int64``).

    Raises:
        ManifestError: If the file cannot be read, a required column is missing, ids repeat,
            a QC score is out of range, or (with ``on_error="raise"``) a file is missing or its
            checksum differs.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    df = read_tsv(path, "manifest")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}")
    dupes = df["volume_id"][df["volume_id"].duplicated()].unique().tolist()
    if dupes:
        raise ManifestError(f"{path}: volume_id repeated: {', '.join(dupes[:5])}")
    if (df["volume_id"].str.strip() == "").any() or (df["path"].str.strip() == "").any():
        raise ManifestError(f"{path}: empty volume_id or path in row(s) {_empty_rows(df)}")

    scores = pd.to_numeric(df["qc_score"].replace("", None), errors="coerce")
    bad = df.index[(df["qc_score"] != "") & ~scores.isin([1, 2, 3, 4])]
    if len(bad):
        row = bad[0]
        raise ManifestError(
            f"{path}: qc_score {df.at[row, 'qc_score']!r} of {df.at[row, 'volume_id']} is not "
            "1, 2, 3, 4 or empty"
        )
    df["qc_score"] = scores.astype("Int64")

    base = Path(base_dir) if base_dir is not None else path.parent
    for column in ("path", "mask_path"):
        if column in df.columns:
            df[column] = [_resolve(base, p) if p else "" for p in df[column]]

    errors: dict[str, str] = {}
    for row in df.itertuples():
        message = None
        problem = file_problem(Path(row.path)) if check_files else None
        if problem is not None:  # missing, or a folder, FIFO, device, broken link: said which
            message = f"{path}: {row.volume_id}: {problem}: {row.path}"
        elif verify_checksums and getattr(row, "sha256", ""):
            actual = file_sha256(row.path)
            if actual != row.sha256:
                message = (
                    f"{path}: {row.volume_id}: checksum mismatch for {row.path} "
                    f"(expected {row.sha256[:12]}…, got {actual[:12]}…)"
                )
        if message is None:
            continue
        if on_error == "raise":
            raise ManifestError(message)
        warnings.warn(message, stacklevel=2)
        errors[row.volume_id] = message
    if errors:
        df = df[~df["volume_id"].isin(errors)].reset_index(drop=True)
    df.attrs["errors"] = errors
    df.attrs["source"] = str(path)
    return df


def _encoding_problem(raw: bytes) -> str:
    """Where a file's bytes stop being UTF-8 text, in words."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "is UTF-16 text (Excel's 'Unicode text'?)"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start]
        return f"is not UTF-8 text (byte 0x{byte:02x} on line {line}; Latin-1 or Windows-1252?)"
    return "cannot be decoded"


def read_tsv(path: str | Path, what: str = "table", **read_csv: object) -> pd.DataFrame:
    """Read a tab-separated table of text (a manifest, ratings) as strings, refusing in one line.

    UTF-8 with or without a byte-order mark is read; a file that is not a regular file (a FIFO
    would block), empty, or in another encoding (UTF-16, Latin-1) is refused with a line naming
    the file and what it is, not pandas' message about something else.

    Args:
        path: The file.
        what: What the file is, for messages (``"manifest"``, ``"ratings"``).
        **read_csv: More arguments for ``pandas.read_csv`` (e.g. ``quoting``).

    Returns:
        The table, every cell a string (empty cells ``""``).

    Raises:
        ManifestError: If the file cannot be read as a UTF-8 TSV with a header line.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise ManifestError(f"{path}: {what}: {problem}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head in (b"\xff\xfe", b"\xfe\xff"):
            raise ManifestError(
                f"{path}: {what} {_encoding_problem(head)}; save it as UTF-8 (tab-separated)"
            )
        options: dict[str, object] = {"sep": "\t", "dtype": str, "keep_default_na": False}
        return pd.read_csv(path, encoding="utf-8-sig", **{**options, **read_csv})
    except pd.errors.EmptyDataError as exc:
        raise ManifestError(f"{path}: empty {what} (no header line)") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{path}: {what} {_encoding_problem(path.read_bytes())}; save it as UTF-8"
        ) from exc
    except (OSError, pd.errors.ParserError) as exc:
        raise ManifestError(f"{path}: cannot read {what} ({_one_line(exc)})") from exc


def _resolve(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _empty_rows(df: pd.DataFrame) -> str:
    rows = df.index[(df["volume_id"].str.strip() == "") | (df["path"].str.strip() == "")]
    return ", ".join(str(i + 2) for i in rows[:5])  # +2: header line and 1-based numbering


def sample_manifest(verify: bool = True, include_templates: bool = True) -> pd.DataFrame:
    """Return the sample set: two real people's T1w heads plus the MNI152 2009 template.

    The files are gathered by ``make data`` (:mod:`motionqc.data.sample`) into
    ``<data>/sample``; volumes whose source was not available on this machine (Colin27 needs
    Debian's ``mricron-data``) are left out with a warning.

    Args:
        verify: Verify every file's SHA-256 against ``data_manifest/sample.tsv``.
        include_templates: Keep the MNI152 template (``kind == "template"``).

    Returns:
        The manifest with absolute paths (``path``, ``mask_path``).

    Raises:
        ManifestError: If no sample volume is present (run ``make data``) or a checksum differs.
    """
    tsv = paths.manifest_dir() / "sample.tsv"
    df = load_manifest(tsv, base_dir=paths.data_dir(), check_files=False)
    present = df["path"].map(lambda p: Path(p).is_file())
    for vid in df.loc[~present, "volume_id"]:
        warnings.warn(f"{tsv}: sample volume {vid} not gathered (run `make data`)", stacklevel=2)
    df = df[present].reset_index(drop=True)
    if df.empty:
        raise ManifestError(
            f"{tsv}: no sample volume found under {paths.sample_dir()}; run `make data`"
        )
    if not include_templates:  # before verifying: no need to hash what is dropped
        df = df[df["kind"] != "template"].reset_index(drop=True)
    if verify:
        for row in df.itertuples():
            for file, expected in ((row.path, row.sha256), (row.mask_path, row.mask_sha256)):
                if file and expected and file_sha256(file) != expected:
                    raise ManifestError(f"{tsv}: {row.volume_id}: checksum mismatch for {file}")
        df["verified"] = True
    return df


MIN_SIDE = 4
"""Fewest voxels along an axis of a volume motionqc scores (a 1×1×1 or single-slice file is not
a head)."""


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels (float32, 3D) and affine of a file, refusing it before reading what it must not.

    The header is checked before nibabel opens the file (:func:`check_nifti_file`), the geometry
    before a voxel is read (:func:`check_geometry`).
    """
    problem = file_problem(path)
    if problem is not None:
        raise VolumeError(f"{path}: {problem}")
    if path.stat().st_size == 0:
        raise VolumeError(f"{path}: empty file (0 bytes)")
    try:
        check_nifti_file(path, VolumeError)
        img = nib.load(str(path))
        check_claimed_size(path, img, VolumeError)
        shape = tuple(int(s) for s in img.header.get_data_shape())
        check_geometry(path, shape, img.affine, VolumeError)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except VolumeError:
        raise
    except (
        nib.filebasedimages.ImageFileError,
        EOFError,
        OSError,
        zlib.error,
        gzip.BadGzipFile,
        ValueError,
    ) as exc:
        if isinstance(exc, PermissionError):
            raise VolumeError(f"{path}: cannot read the file (permission denied)") from exc
        raise VolumeError(f"{path}: unreadable or truncated NIfTI ({_one_line(exc)})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 5 and data.shape[3:] == (1, 1):
        data = data[..., 0, 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    if data.size == 0 or min(data.shape) == 0:
        raise VolumeError(f"{path}: volume has no voxels (shape {tuple(data.shape)})")
    if not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise VolumeError(f"{path}: {n_bad} NaN/Inf voxel(s)")
    if not data.any():
        raise VolumeError(f"{path}: all voxels are zero (empty image)")
    return data, np.asarray(img.affine, dtype=float)


def _check_t1w_content(path: Path, data: np.ndarray) -> None:
    """Refuse what cannot be a T1w image: too few voxels along an axis, a constant or binary image."""
    if min(data.shape) < MIN_SIDE:
        raise VolumeError(
            f"{path}: shape {tuple(data.shape)}: fewer than {MIN_SIDE} voxels along an axis; "
            "not a 3D head image"
        )
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise VolumeError(f"{path}: every voxel is {low:g} (a constant image, not a T1w scan)")
    if not np.count_nonzero((data != low) & (data != high)):
        raise VolumeError(
            f"{path}: only two values, {low:g} and {high:g} (a binary mask, not a T1w scan)"
        )


def _canonical(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    image = nib.Nifti1Image(
        np.ascontiguousarray(canonical.dataobj, dtype=np.float32), canonical.affine
    )
    image.set_qform(canonical.affine, code=1)
    image.set_sform(canonical.affine, code=1)
    return image


def load_volume(path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI volume as a canonical (RAS+) 3D float32 image, refusing unusable files.

    A 4D file holding a single volume is squeezed to 3D. Nothing is allocated for what a header
    claims beyond motionqc's caps: header and extensions (``MAX_HEADER_BYTES``), stored array
    (:data:`MAX_VOXELS`), field of view (``MAX_FIELD_OF_VIEW_MM``;
    :mod:`motionqc.data.nifti_guard`).

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.

    Returns:
        A ``nibabel.Nifti1Image`` in RAS+ orientation with float32 data.

    Raises:
        VolumeError: If the file is missing, not a regular file, empty, unreadable or truncated,
            claims more than the caps, holds complex or RGB voxels, has more than one volume or
            not 3 spatial dimensions, has a non-finite or singular affine, fewer than
            :data:`MIN_SIDE` voxels along an axis, NaN/Inf voxels, only zeros, one value or two
            (a mask).
    """
    path = Path(path)
    data, affine = _read(path)
    _check_t1w_content(path, data)
    return _canonical(data, affine)


def load_mask(path: str | Path) -> nib.Nifti1Image:
    """Load a brain mask (or a skull-stripped brain) as a canonical uint8 image (1 = brain).

    Args:
        path: A NIfTI mask; any non-zero voxel counts as brain.

    Returns:
        A RAS+ ``nibabel.Nifti1Image`` with uint8 values 0/1.

    Raises:
        VolumeError: As :func:`load_volume` (but a mask may hold one value or two), or if the
            mask is empty.
    """
    path = Path(path)
    data, affine = _read(path)
    image = _canonical(data, affine)
    mask = (np.asarray(image.dataobj) > 0).astype(np.uint8)
    if not mask.any():
        raise VolumeError(f"{path}: mask is empty")
    return nib.Nifti1Image(mask, image.affine)


def _to_tio(volume: str | Path | nib.Nifti1Image | tio.ScalarImage) -> tio.ScalarImage:
    if isinstance(volume, tio.ScalarImage):
        if volume.data.is_floating_point():
            return volume
        # integer voxels (int16 scanners' output): float32, as load_volume gives from a file
        return tio.ScalarImage(tensor=volume.data.float(), affine=volume.affine)
    image = volume if isinstance(volume, nib.Nifti1Image) else load_volume(volume)
    tensor = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32)).unsqueeze(0)
    return tio.ScalarImage(tensor=tensor, affine=image.affine)


def _describe(volume: object) -> str:
    """A volume's file for a message, never the image's content."""
    if isinstance(volume, (str, Path)):
        return str(volume)
    if isinstance(volume, tio.ScalarImage):
        return str(volume.path) if volume.path is not None else "in-memory image"
    name = getattr(volume, "get_filename", lambda: None)()
    return str(name) if name else "in-memory image"


def preprocess(
    volume: str | Path | nib.Nifti1Image | tio.ScalarImage,
    spacing_mm: float,
    shape: Sequence[int],
    normalise: bool = True,
    source: str | Path | None = None,
) -> tio.ScalarImage:
    """Prepare a volume for SFCN: canonical orientation, resampling, crop/pad, mean scaling.

    Follows the SFCN reference (Peng et al. 2021): the head is resampled to an isotropic grid,
    centre-cropped or zero-padded to ``shape`` (``paper``: 1 mm, 160×192×160 from the 182×218×182
    MNI grid), and the intensities are divided by their mean.

    Args:
        volume: A path, a nibabel image or a torchio image.
        spacing_mm: Isotropic target voxel size in mm.
        shape: Target grid (X, Y, Z).
        normalise: Divide the intensities by their mean.
        source: The file the volume came from, named in error messages (default: ``volume``
            when it is a path or a file-backed image, else "in-memory image").

    Returns:
        A torchio ``ScalarImage`` of shape (1, *shape).

    Raises:
        VolumeError: If the volume cannot be loaded, its field of view would resample to more
            than ``MAX_VOXELS`` voxels or span more than ``MAX_FIELD_OF_VIEW_MM`` (refused before
            resampling), or its mean intensity is not positive.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive integers, got {tuple(shape)}")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    where = _describe(volume) if source is None else str(source)
    image = _to_tio(volume)
    affine = np.asarray(image.affine, dtype=float)
    check_geometry(Path(where), image.spatial_shape, affine, VolumeError)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    target = resampled_shape(image.spatial_shape, zooms, float(spacing_mm))
    if int(np.prod(target, dtype=np.int64)) > MAX_VOXELS:
        raise VolumeError(
            f"{where}: resampling to {spacing_mm:g} mm would make a {target} grid, more than the "
            f"{MAX_VOXELS:,} voxels motionqc allocates"
        )
    transform = tio.Compose(
        [
            tio.ToCanonical(),
            tio.Resample(float(spacing_mm)),
            tio.CropOrPad(tuple(int(s) for s in shape)),
        ]
    )
    out = transform(image)
    if normalise:
        mean = float(out.data.mean())
        if not np.isfinite(mean) or mean <= 0:
            raise VolumeError(
                f"{where}: mean intensity {mean:g} after preprocessing is not positive"
            )
        out.set_data(out.data / mean)
    return out

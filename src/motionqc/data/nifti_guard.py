"""What a NIfTI file claims, read before nibabel reads it: bounded memory whatever a file says.

``nibabel.load`` believes the header: an extension whose size is below 8 bytes makes it read the
rest of the (gzip) stream into memory, so a 2 MB ``.nii.gz`` can make it inflate gigabytes before
any size check runs. :func:`check_nifti_file` reads the header and the extension headers itself,
inflating the gzip stream incrementally and never more than :data:`MAX_HEADER_BYTES`, and refuses
a file whose header, extensions or claimed array would make motionqc inflate or allocate more than
its caps: header and extensions (:data:`MAX_HEADER_BYTES`), stored array
(:data:`MAX_VOXELS`) and field of view (:data:`MAX_FIELD_OF_VIEW_MM`, checked by
:func:`check_geometry` once nibabel has built the affine, before a voxel is read).
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "MAX_FIELD_OF_VIEW_MM",
    "MAX_HEADER_BYTES",
    "MAX_VOXELS",
    "GZIP_MAX_RATIO",
    "check_claimed_size",
    "check_geometry",
    "check_nifti_file",
    "file_problem",
    "resampled_shape",
]

MAX_VOXELS = 256 * 2**20
"""Most voxels motionqc reads or resamples to (1 GiB as float32; a 0.5 mm whole head has ~80
million)."""

MAX_HEADER_BYTES = 16 * 2**20
"""Most bytes of header and NIfTI extensions motionqc inflates (DICOM or AFNI extensions hold a
few kB to a few hundred kB)."""

MAX_FIELD_OF_VIEW_MM = 400.0
"""Longest field of view, in mm along any array axis, that motionqc resamples (a head with its
neck spans about 250 mm): 32 voxels of 80 mm would resample to gigabytes."""

GZIP_MAX_RATIO = 1032
"""Deflate never expands more than ~1032:1, so a .nii.gz cannot hold more than this × its size."""

_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file motionqc can read, in a few words (``None``: it is).

    Tells a missing file from a dangling or looping symbolic link, a folder, a FIFO or a device,
    without opening it (opening a FIFO would block).

    Args:
        path: The file.

    Returns:
        The problem (``"file not found"``, ``"is a folder, not a file"``, …) or ``None``.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
        return "file not found"
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            return "symbolic link loop"
        return f"cannot look at the file ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def _inflated_head(path: Path, n: int) -> tuple[bytes, bool]:
    """The first ``n`` bytes of a file's content, inflating (gzip) no more than ``n`` bytes.

    Returns:
        ``(bytes, compressed)``; fewer than ``n`` bytes when the content is shorter or the gzip
        stream is corrupt there (nibabel then says what is wrong).
    """
    with open(path, "rb") as handle:
        first = handle.read(_CHUNK)
        if not first.startswith(_GZIP_MAGIC):
            return (first + handle.read(max(0, n - len(first))))[:n], False
        out = bytearray()
        inflater = zlib.decompressobj(wbits=31)
        pending = first
        while len(out) < n:
            data = inflater.unconsumed_tail or pending or handle.read(_CHUNK)
            pending = b""
            if not data:
                break
            try:
                out += inflater.decompress(data, n - len(out))
            except zlib.error:
                break
            if inflater.eof:  # another gzip member may follow (as gzip.GzipFile reads them)
                pending = inflater.unused_data
                inflater = zlib.decompressobj(wbits=31)
        return bytes(out), True


def _header_class(raw: bytes) -> type[nib.Nifti1Header] | None:
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.sizeof_hdr
        for endian in "<>":
            if len(raw) >= 4 and struct.unpack(f"{endian}i", raw[:4])[0] == size:
                return klass
    return None


def check_nifti_file(path: Path, error: type[Exception]) -> None:
    """Refuse a NIfTI file whose header would make nibabel inflate or allocate too much.

    Reads at most :data:`MAX_HEADER_BYTES` of content (inflating the gzip stream incrementally)
    and checks, before nibabel opens the file: every extension's size (at least 8 bytes and
    within the voxel data's offset: an extension below 8 bytes makes nibabel read the rest of the
    stream), the voxel offset (at most :data:`MAX_HEADER_BYTES`), the claimed array (at most
    :data:`MAX_VOXELS` voxels, and no more than the file can hold) and its data type (complex
    and RGB data are not T1w magnitude images). A file that is not NIfTI-1/2 passes (nibabel then
    says what it is).

    Args:
        path: The file (a regular file).
        error: Exception class to raise (``VolumeError``).

    Raises:
        error: With a one-line message naming the file and the problem.
    """
    raw, compressed = _inflated_head(path, 540 + 4)
    klass = _header_class(raw)
    if klass is None:
        return
    size = klass.sizeof_hdr
    if len(raw) < size:
        return  # truncated: nibabel's message names it
    try:
        header = klass.from_fileobj(io.BytesIO(raw[:size] + b"\0\0\0\0"), check=False)
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
    except Exception:  # noqa: BLE001 - a header nibabel cannot parse: nibabel's message names it
        return
    _check_array_claims(path, shape, dtype, error)
    if offset > MAX_HEADER_BYTES:
        raise error(
            f"{path}: voxel data offset {offset:,} bytes: more header and extensions than the "
            f"{MAX_HEADER_BYTES:,} bytes motionqc reads (forged header?)"
        )
    single_file = bytes(np.asarray(header["magic"]).tobytes()).startswith(b"n+")
    if single_file and len(raw) > size and raw[size : size + 1] != b"\0":
        _check_extensions(path, header, offset, error)
    _check_file_holds(path, shape, dtype, 0 if compressed else offset, compressed, error)


def _check_file_holds(
    path: Path,
    shape: Sequence[int],
    dtype: np.dtype,
    offset: int,
    compressed: bool,
    error: type[Exception],
) -> None:
    """Refuse a claimed array larger than the file can hold (deflate: ~1032:1 at most)."""
    n_bytes = int(np.prod(shape, dtype=np.int64)) * int(dtype.itemsize) if len(shape) else 0
    file_size = path.stat().st_size
    holds = file_size * GZIP_MAX_RATIO + 4096 if compressed else file_size - offset
    if n_bytes > holds:
        raise error(
            f"{path}: header claims shape {tuple(shape)} of {dtype} ({n_bytes:,} bytes), more "
            f"than the {file_size:,}-byte file can hold (truncated or forged header)"
        )


def _check_array_claims(
    path: Path, shape: Sequence[int], dtype: np.dtype, error: type[Exception]
) -> None:
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 0
    if n > MAX_VOXELS:
        raise error(
            f"{path}: header claims shape {tuple(shape)} ({n:,} voxels), more than the "
            f"{MAX_VOXELS:,} motionqc reads"
        )
    if dtype.fields is not None:
        raise error(
            f"{path}: RGB or structured voxels ({dtype}); motionqc scores T1w magnitude images"
        )
    if dtype.kind == "c":
        raise error(
            f"{path}: complex voxels ({dtype}); motionqc scores T1w magnitude images (save the "
            "magnitude, abs(), as a real image)"
        )


def _check_extensions(
    path: Path, header: nib.Nifti1Header, offset: int, error: type[Exception]
) -> None:
    """Walk the extension headers as nibabel will, refusing a size that would run away."""
    start = header.sizeof_hdr + 4
    raw, _ = _inflated_head(path, max(offset, start))
    endian = header.endianness
    position, remaining = start, offset - start
    while remaining >= 16:  # nibabel's loop: Nifti1Extensions.from_fileobj
        if position + 8 > len(raw):
            raise error(f"{path}: NIfTI extension header cut short at byte {position} (truncated)")
        esize, ecode = struct.unpack(f"{endian}ii", raw[position : position + 8])
        if esize < 8 or esize > remaining:
            raise error(
                f"{path}: NIfTI extension (code {ecode}) of {esize} bytes at byte {position}: an "
                f"extension must hold 8 to {remaining} bytes here (corrupt or forged header; "
                "nibabel would read the whole file into memory)"
            )
        position += esize
        remaining -= esize


def check_claimed_size(
    path: Path, img: nib.spatialimages.SpatialImage, error: type[Exception]
) -> None:
    """Refuse a header whose claimed array is too large, or larger than the file can hold.

    Runs before any voxel is read, for the formats :func:`check_nifti_file` does not parse: an
    89-byte file claiming 1150³ float32 voxels is refused without allocating its 6 GB.

    Args:
        path: The file.
        img: nibabel's image of it (header read, no voxel).
        error: Exception class to raise (``VolumeError``).

    Raises:
        error: With a one-line message naming the file and the problem.
    """
    shape = tuple(int(s) for s in img.header.get_data_shape())
    dtype = img.header.get_data_dtype()
    _check_array_claims(path, shape, dtype, error)
    gz = path.name.endswith(".gz")
    offset = 0 if gz else int(getattr(img.header, "get_data_offset", lambda: 0)())
    _check_file_holds(path, shape, dtype, offset, gz, error)


def check_geometry(
    path: Path, shape: Sequence[int], affine: np.ndarray, error: type[Exception]
) -> None:
    """Refuse an affine that is not finite or not invertible, or too wide a field of view.

    Args:
        path: The file (for the message).
        shape: The array's spatial shape.
        affine: Its voxel-to-world affine.
        error: Exception class to raise (``VolumeError``).

    Raises:
        error: With a one-line message naming the file and the problem.
    """
    affine = np.asarray(affine, dtype=float)
    if not np.isfinite(affine).all():
        raise error(f"{path}: affine (sform/qform) holds NaN or Inf; the image has no geometry")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12 or not (zooms > 0).all():
        raise error(f"{path}: affine (sform/qform) is singular (a zero voxel size?)")
    fov = [float(s) * float(z) for s, z in zip(shape[:3], zooms, strict=False)]
    if max(fov) > MAX_FIELD_OF_VIEW_MM:
        sizes = " x ".join(f"{z:g}" for z in zooms)
        extent = " x ".join(f"{f:.0f}" for f in fov)
        raise error(
            f"{path}: field of view {extent} mm (voxels of {sizes} mm): more than the "
            f"{MAX_FIELD_OF_VIEW_MM:g} mm motionqc resamples along an axis (check the voxel size)"
        )


def resampled_shape(
    shape: Sequence[int], zooms: Sequence[float], spacing_mm: float
) -> tuple[int, ...]:
    """The grid an image of ``shape`` and voxel size ``zooms`` takes at ``spacing_mm`` (TorchIO's).

    Args:
        shape: The array's spatial shape.
        zooms: Voxel size along each array axis, mm.
        spacing_mm: Target isotropic voxel size.

    Returns:
        The resampled shape (``floor(shape × zoom / spacing)`` per axis, at least 1).
    """
    return tuple(
        max(1, int(np.floor(float(s) * float(z) / float(spacing_mm))))
        for s, z in zip(shape, zooms, strict=True)
    )

"""Loading for ``motionqc score``: one volume per item, preprocessed, in loader worker processes.

:class:`VolumeDataset` loads and preprocesses one volume per item, in DataLoader worker processes
(one torch/SimpleITK thread each, killed with their parent) when there are cores to spare for them
(on GPUs; on CPUs with 8 cores or more, see :func:`motionqc.runtime.devices.default_num_workers`),
with the geometry recorded in the encoder file. A volume that cannot be used (corrupt, truncated,
4D, empty, NaN/Inf) gives an error record instead of raising, so one bad file never stops a run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchio as tio
from torch.utils.data import Dataset

from motionqc.app.text import one_line as _printable_line
from motionqc.data.bids import bids_name
from motionqc.data.detail import encoder_image
from motionqc.data.volumes import VolumeError, load_volume, preprocess

__all__ = [
    "MAX_NAME_BYTES",
    "VolumeDataset",
    "name_problem",
    "collate_records",
    "load_preprocessed",
    "loader_worker_init",
    "one_line",
]


def load_preprocessed(path: str | Path, spacing_mm: float, shape: Sequence[int]) -> torch.Tensor:
    """Load a volume and preprocess it exactly as :func:`motionqc.data.volumes.preprocess` would.

    A volume that is already axis-aligned RAS+ at the target voxel size skips the resampling step
    (the resampling would be the identity: same grid, values equal to ~1e-12), which saves most of
    the preprocessing time for 1 mm inputs at 1 mm.

    Args:
        path: A NIfTI file.
        spacing_mm: Target isotropic voxel size (the encoder's ``meta["spacing_mm"]``).
        shape: Target grid (the encoder's ``meta["shape"]``).

    Returns:
        ``(1, X, Y, Z)`` float32 tensor, intensities divided by their mean.

    Raises:
        VolumeError: If the volume cannot be used.
    """
    return _load_and_preprocess(path, spacing_mm, shape)[0]


def _load_and_preprocess(
    path: str | Path, spacing_mm: float, shape: Sequence[int], detail_mm: float | None = None
) -> tuple[torch.Tensor, np.ndarray, Any]:
    """:func:`load_preprocessed`, also returning the result's affine and the loaded image.

    With ``detail_mm`` the input is :func:`motionqc.data.detail.encoder_input`'s (the head and
    its detail channels); the affine is then the encoder grid's.
    """
    image = load_volume(path)
    if detail_mm is not None:
        try:
            out = encoder_image(image, spacing_mm, shape, detail_mm)
        except VolumeError as exc:  # its messages name an in-memory image: name the file
            raise VolumeError(f"{path}: {str(exc).removeprefix('in-memory image: ')}") from exc
        return out.data.float(), np.asarray(out.affine), image
    linear = np.asarray(image.affine, dtype=float)[:3, :3]
    target = np.diag([float(spacing_mm)] * 3)
    if not np.allclose(linear, target, rtol=0.0, atol=1e-6 * float(spacing_mm)):
        out = preprocess(image, spacing_mm, shape, source=path)
        return out.data.float(), np.asarray(out.affine), image
    tensor = torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32)).unsqueeze(0)
    scalar = tio.ScalarImage(tensor=tensor, affine=image.affine)
    cropped = tio.CropOrPad(tuple(int(s) for s in shape))(scalar)
    out = cropped.data.float()
    mean = float(out.mean())
    if not np.isfinite(mean) or mean <= 0:
        raise VolumeError(f"{path}: mean intensity {mean:g} after preprocessing is not positive")
    return out / mean, np.asarray(cropped.affine), image


def one_line(text: object) -> str:
    """The text on one line (an error record), every character not printable escaped.

    :func:`motionqc.app.text.one_line`: a file name's terminal escape sequences or bytes that
    are not UTF-8 never reach a terminal or a table raw.
    """
    return _printable_line(text)


MAX_NAME_BYTES = 200
"""Longest name (UTF-8 bytes) of a volume ``score`` takes: its derived files add up to 41 bytes
(``.<name>_rec-motionqc.nii.gz.<pid>.tmp.nii.gz``) and a file name holds at most 255."""


def name_problem(path: str | Path, name: str) -> str | None:
    """Why a volume's file name cannot be scored (one line naming the file), or ``None``.

    A file name that is not valid UTF-8 (a byte of another encoding; the table and report are
    UTF-8; the folders above it may hold such bytes: the table names files, not their folders)
    and a name longer than :data:`MAX_NAME_BYTES` (its derived files could not be written) are
    refused, with the file named escaped (:func:`one_line`).

    Args:
        path: The volume's file.
        name: Its name as the table holds it.

    Returns:
        The error record's text, or ``None`` when the name is fine.
    """
    text = str(path)
    own = Path(path).name + name  # what the table and derived files hold: not the folders above
    try:
        own.encode("utf-8")
    except UnicodeEncodeError:
        bad = [ord(c) - 0xDC00 for c in own if 0xDC80 <= ord(c) <= 0xDCFF][:1]
        byte = f" (byte 0x{bad[0]:02x}, from another encoding)" if bad else ""
        return one_line(
            f"{text}: file name is not UTF-8{byte}; rename the file with UTF-8 characters"
        )
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return one_line(
            f"{text}: file name too long ({size} bytes for the name without .nii[.gz]; at most "
            f"{MAX_NAME_BYTES}, so that the derived files fit in 255): shorten it"
        )
    return None


def _pictures(volume: torch.Tensor, image: Any) -> tuple[bytes, bytes]:
    """The encoder input's strip and the original volume's views (its own voxel size).

    ``image`` is what :func:`motionqc.data.volumes.load_volume` returned: already 3D, RAS+ and in memory.
    """
    from motionqc.app.pictures import mosaic_png, views_png

    native = np.asarray(image.dataobj, dtype=np.float32)
    return mosaic_png(volume[0].numpy()), views_png(native, image.header.get_zooms()[:3])


class VolumeDataset(Dataset):
    """One preprocessed volume per item; never raises for a bad file.

    Args:
        paths: Volume files.
        spacing_mm: Target voxel size (from the encoder file).
        shape: Target grid (from the encoder file).
        names: One name per path (default: the BIDS name of each file).
        mosaics: Also render the preprocessed volume's strip and the original's views (PNG bytes,
            :func:`motionqc.app.pictures.mosaic_png`, :func:`motionqc.app.pictures.views_png`).
        detail_mm: The encoder's detail grid (``meta["detail_mm"]``; ``None``: none): the
            items then hold the head and its detail channels
            (:func:`motionqc.data.detail.encoder_image`).

    Each item is a dict with ``index``, ``bids_name``, ``path``, ``image`` (``(C, X, Y, Z)``
    float32, or ``None``), ``affine`` (the image's, or ``None``), ``error`` (one line, empty when
    fine), ``mosaic`` and ``views`` (bytes or ``None``).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        spacing_mm: float,
        shape: Sequence[int],
        names: Sequence[str] | None = None,
        mosaics: bool = False,
        detail_mm: float | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.names = list(names) if names is not None else [bids_name(p) for p in self.paths]
        if len(self.names) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.names)} names")
        self.spacing_mm = float(spacing_mm)
        self.shape = tuple(int(s) for s in shape)
        self.mosaics = bool(mosaics)
        self.detail_mm = None if detail_mm is None else float(detail_mm)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "index": index,
            "bids_name": self.names[index],
            "path": self.paths[index],
            "image": None,
            "affine": None,
            "error": "",
            "mosaic": None,
            "views": None,
        }
        loaded = None
        problem = name_problem(self.paths[index], self.names[index])
        if problem is not None:
            record["error"] = problem
            return record
        try:
            record["image"], record["affine"], loaded = _load_and_preprocess(
                self.paths[index], self.spacing_mm, self.shape, self.detail_mm
            )
        except VolumeError as exc:
            record["error"] = one_line(exc)
        except Exception as exc:  # noqa: BLE001 - any failure is this volume's, not the run's
            record["error"] = one_line(f"{self.paths[index]}: {type(exc).__name__}: {exc}")
        if record["image"] is not None and self.mosaics:
            try:
                record["mosaic"], record["views"] = _pictures(record["image"], loaded)
            except Exception:  # noqa: BLE001 - a missing thumbnail is not worth an error row
                record["mosaic"] = record["views"] = None
        return record


def collate_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of records: all of them, the stacked images of the good ones and their indices."""
    good = [r for r in records if r["image"] is not None]
    images = torch.stack([r["image"] for r in good]) if good else None
    return {"records": records, "images": images, "good": [r["index"] for r in good]}


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (``PR_SET_PDEATHSIG``).

    A loader worker otherwise outlives a ``score`` killed by SIGKILL or SIGTERM (re-parented to
    PID 1, holding its memory). Ctrl-C is the parent's to handle: workers ignore SIGINT, so an
    interrupted run ends with one line, not a worker's traceback. A worker's background thread
    that loses its connection to the parent (multiprocessing's resource sharer, handing a batch's
    file descriptors to a parent that has stopped) ends silently; other thread errors still print.
    The death signal is a no-op off Linux.
    """
    import ctypes
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default_hook = threading.excepthook

    def quiet_lost_parent(args: threading.ExceptHookArgs) -> None:
        if not issubclass(args.exc_type, ConnectionError):
            default_hook(args)

    threading.excepthook = quiet_lost_parent
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def loader_worker_init(_: int) -> None:
    """A loader worker: dies with its parent, ignores Ctrl-C, one torch and SimpleITK thread."""
    _die_with_parent()
    torch.set_num_threads(1)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:  # noqa: BLE001 - SimpleITK is optional here
        pass

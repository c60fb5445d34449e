"""Cortical thickness: ANTs DiReCT estimation and FreeSurfer outputs.

Two parts:

- **Estimation**: :func:`cortical_thickness` runs ANTs' DiReCT pipeline through ``antspyx``
  (Das et al. 2009, NeuroImage 45:867; Tustison et al. 2014, NeuroImage 99:166): cropping to the
  brain mask's bounding box (plus a margin) → resampling to an isotropic grid → N4 bias
  correction (Tustison et al. 2010) → Atropos 3-class segmentation (CSF/GM/WM) inside the brain
  mask (Avants et al. 2011) → ``KellyKapowski`` thickness → mean over grey-matter voxels with
  positive thickness. :func:`thickness_batch` runs many volumes in parallel processes, reports
  failures per row and can cache results by content. Coarse grids underestimate absolute
  thickness (at 2 mm a cortical ribbon is one or two voxels thick), so compare values at one
  resolution only.
- **Existing values**: :func:`read_aparc_stats` and :func:`freesurfer_mean_thickness` read
  ``?h.aparc.stats`` for users who already have FreeSurfer results, and
  :func:`manifest_thickness` takes one thickness per manifest row from a ``thickness`` column or
  from FreeSurfer stats files, reporting unreadable rows.

The statistics relating thickness to motion (slopes, the real-data model, the correction) are in
:mod:`motionqc.evaluation.thickness_stats`. ANTs is imported lazily: the FreeSurfer readers work without it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import inspect
import json
import multiprocessing as mp
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

__all__ = [
    "ThicknessError",
    "ThicknessResult",
    "cortical_thickness",
    "thickness_batch",
    "thickness_cache_key",
    "crop_box",
    "PIPELINE_VERSION",
    "read_aparc_stats",
    "AparcStats",
    "freesurfer_mean_thickness",
    "manifest_thickness",
]

VolumeLike = str | Path | nib.Nifti1Image | np.ndarray
"""A NIfTI path, a nibabel image, or a 3D array (voxel size given separately)."""

PIPELINE_VERSION = 1
"""Version of :func:`cortical_thickness`'s pipeline, part of every cache key: raised whenever a
change of the code changes its results, so cached results of older code are not read back."""

BATCH_COLUMNS: tuple[str, ...] = (
    "volume",
    "thickness_mm",
    "gm_volume_ml",
    "seconds",
    "status",
    "error",
    "cached",
)


class ThicknessError(ValueError):
    """A volume whose thickness cannot be computed; the one-line message names it."""


@dataclass(frozen=True)
class ThicknessResult:
    """Mean cortical thickness of one volume.

    Attributes:
        volume: Name of the volume (file name or the name given).
        thickness_mm: Mean DiReCT thickness (mm) over GM voxels with thickness > 0.
        gm_volume_ml: Volume of the Atropos GM class (ml) on the resampled grid.
        n_gm_voxels: Number of GM voxels on the resampled grid.
        seconds: Wall-clock time of the whole pipeline.
        cpu_seconds: CPU time of this process over the pipeline (all ITK threads); equals the
            wall time on one thread when the machine is not shared.
        settings: The settings used (spacing, iterations, N4 and DiReCT parameters, seed).
    """

    volume: str
    thickness_mm: float
    gm_volume_ml: float
    n_gm_voxels: int
    seconds: float
    cpu_seconds: float
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """Return the result as a plain dict."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# ANTs set-up
# --------------------------------------------------------------------------------------------


def _configure_ants(seed: int, threads: int | None) -> None:
    """Seed ANTs and fix ITK's thread count through the environment.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, when its first
    multi-threaded filter runs, so the thread count only takes effect if this is called before
    any ANTs work in the process (it is, in :func:`thickness_batch`'s workers).
    """
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))
    if threads is not None:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
        os.environ["ITK_NUMBER_OF_THREADS"] = str(int(threads))


def _import_ants() -> Any:
    try:
        import ants
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "cortical thickness needs ANTsPy: `pip install antspyx` (or `pip install motionqc[thickness]`)"
        ) from exc
    return ants


@contextlib.contextmanager
def _private_tempdir() -> Iterator[str]:
    """Point :mod:`tempfile` at a private directory, removed with everything in it on exit.

    ``ants.atropos`` writes its posterior images to ``tempfile.mktemp()`` names and never deletes
    them (three NIfTI files per call in the system temporary directory); its glob for them also
    matches stale files there. A directory of our own keeps every call's files apart and removes
    them. ``tempfile.tempdir`` is process-wide: batch workers are single-threaded processes.
    """
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="motionqc-ants-") as tmp:
        tempfile.tempdir = tmp
        try:
            yield tmp
        finally:
            tempfile.tempdir = previous


def _volume_name(volume: VolumeLike, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(volume, (str, Path)):
        return Path(volume).name
    file_name = getattr(volume, "get_filename", lambda: None)()
    return Path(file_name).name if file_name else "<array>"


def _load(path: str | Path, what: str, name: str) -> nib.Nifti1Image:
    """Load a NIfTI image or mask in canonical (RAS+) orientation as float32.

    Plain nibabel (not :func:`motionqc.data.volumes.load_volume`) so that worker processes do not
    import torch; the checks that matter here (3D, finite, not all zero) follow.
    """
    try:
        loaded = nib.load(str(path))
        data = np.asarray(loaded.dataobj, dtype=np.float32)
        if data.ndim > 3 and data.size == int(np.prod(data.shape[:3])):
            data = data.reshape(data.shape[:3])
        if data.ndim != 3:
            raise ValueError(f"expected a 3D volume, got shape {data.shape}")
        canonical = nib.as_closest_canonical(nib.Nifti1Image(data, loaded.affine))
        data = np.asarray(canonical.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any loading problem becomes one line
        raise ThicknessError(
            f"{name}: cannot load {what} {Path(path).name} ({_one_line(exc)})"
        ) from exc
    if what == "image" and not np.isfinite(data).all():
        raise ThicknessError(f"{name}: image {Path(path).name} has NaN/Inf voxels")
    if what == "image" and not data.any():
        raise ThicknessError(f"{name}: image {Path(path).name} is all zeros")
    return nib.Nifti1Image(data, canonical.affine)


def _array_voxel_size(voxel_size_mm: float | Sequence[float]) -> tuple[float, ...]:
    """The voxel size (mm, one per axis) of an array input, from a scalar or three values."""
    return tuple(np.broadcast_to(np.asarray(voxel_size_mm, dtype=float), (3,)).tolist())


def _as_array(
    volume: VolumeLike, what: str, name: str
) -> tuple[np.ndarray, tuple[float, ...], np.ndarray | None]:
    """Return the data (float32, 3D), voxel size (mm) and affine of a path, image or array."""
    if isinstance(volume, (str, Path)):
        volume = _load(volume, what, name)
    affine = None
    if isinstance(volume, nib.Nifti1Image):
        data = np.asarray(volume.dataobj, dtype=np.float32)
        affine = np.asarray(volume.affine, dtype=float)
        zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    else:
        data = np.asarray(volume, dtype=np.float32)
        zooms = ()
    if data.ndim == 4 and data.shape[0] == 1:  # torch-style (1, X, Y, Z)
        data = data[0]
    if data.ndim != 3:
        raise ThicknessError(f"{name}: {what} must be 3D, got shape {tuple(data.shape)}")
    return np.ascontiguousarray(data), zooms, affine


# --------------------------------------------------------------------------------------------
# One volume
# --------------------------------------------------------------------------------------------


def crop_box(
    brain: np.ndarray, zooms: Sequence[float], margin_mm: float
) -> tuple[slice, slice, slice]:
    """The slices of the mask's bounding box, widened by ``margin_mm`` and clipped to the grid.

    Args:
        brain: Boolean mask (3D, at least one true voxel).
        zooms: Voxel size (mm) along each axis.
        margin_mm: Margin kept on every side (rounded up to whole voxels per axis).

    Returns:
        One slice per axis.
    """
    where = np.argwhere(brain)
    margin = np.ceil(float(margin_mm) / np.asarray(zooms, dtype=float)).astype(int)
    low = np.maximum(where.min(0) - margin, 0)
    high = np.minimum(where.max(0) + 1 + margin, brain.shape)
    a, b, c = (slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    return a, b, c


def cortical_thickness(
    image: VolumeLike,
    mask: VolumeLike,
    spacing_mm: float | None = 2.0,
    iterations: int = 15,
    *,
    voxel_size_mm: float | Sequence[float] = 1.0,
    name: str | None = None,
    n4_shrink_factor: int = 2,
    n4_iterations: Sequence[int] = (25, 25),
    atropos_iterations: int = 5,
    mrf_weight: float = 0.2,
    gradient_step: float = 0.025,
    smoothing: float = 1.5,
    thickness_prior_mm: float = 10.0,
    crop_margin_mm: float | None = 10.0,
    seed: int = 0,
    threads: int | None = None,
) -> ThicknessResult:
    """Mean cortical thickness of one head with ANTs DiReCT (KellyKapowski).

    Pipeline: crop image and mask to the mask's bounding box plus ``crop_margin_mm``
    (:func:`crop_box`) → resample image (linear) and mask (nearest neighbour) to ``spacing_mm`` → N4
    bias correction inside the mask (shrink factor and iterations kept low for speed) →
    Atropos 3-class segmentation (k-means initialisation, MRF smoothing) inside the mask, the
    classes sorted by intensity so 1 = CSF, 2 = GM, 3 = WM on a T1w image → DiReCT thickness
    from the segmentation and the GM/WM posteriors → mean over GM voxels whose thickness is > 0.

    Absolute values depend on the grid: at 2 mm and 15 iterations thickness is underestimated
    compared with FreeSurfer or ANTs at 1 mm (the GM ribbon is one or two voxels thick and DiReCT
    has not converged), so only compare values computed with the same settings.

    Determinism: ``ANTS_RANDOM_SEED`` is set from ``seed``, Atropos runs with a fixed internal
    seed and synchronous ICM updates (its default visits voxels in random order). At a fixed ITK
    thread count the result is bit-identical run to run and process to process; a different
    thread count changes it by about 1e-4 relative (floating-point reduction order), so set
    ``threads`` (before the first ANTs call of the process, as :func:`thickness_batch` does).

    Args:
        image: T1w head (path, nibabel image, or 3D array with ``voxel_size_mm``).
        mask: Brain mask on the same grid (any non-zero voxel is brain).
        spacing_mm: Isotropic voxel size to resample to; ``None`` keeps the input grid.
        iterations: DiReCT (KellyKapowski) iterations; ANTs' default pipeline uses 45.
        voxel_size_mm: Voxel size of array inputs (ignored for images, which carry an affine).
        name: Name used in messages and results (default: the file name).
        n4_shrink_factor: N4 shrink factor.
        n4_iterations: N4 iterations per fitting level.
        atropos_iterations: Atropos EM iterations.
        mrf_weight: Atropos MRF smoothing weight.
        gradient_step: DiReCT gradient step (``-r``).
        smoothing: DiReCT gradient field smoothing (``-m``).
        thickness_prior_mm: DiReCT thickness prior (``-t``): no voxel exceeds it.
        crop_margin_mm: Margin (mm) kept around the mask's bounding box: DiReCT's cost grows
            with the whole grid, most of which is background. ``None`` keeps the whole grid.
        seed: Seed for ANTs (``ANTS_RANDOM_SEED``).
        threads: ITK thread count to request (effective only before the first ANTs call of the
            process); ``None`` leaves ITK's setting.

    Returns:
        A :class:`ThicknessResult`.

    Raises:
        ThicknessError: If the image or mask cannot be used (not 3D, shapes differ, empty mask,
            non-finite or constant image), the segmentation fails (a class without voxels), or
            the thickness is not a finite positive number.
        ValueError: If a setting is out of range.
    """
    name = _volume_name(image, name)
    if spacing_mm is not None and not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be positive or None, got {spacing_mm}")
    if int(iterations) < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if int(n4_shrink_factor) < 1 or not n4_iterations:
        raise ValueError("n4_shrink_factor must be >= 1 and n4_iterations non-empty")
    start, cpu_start = time.perf_counter(), time.process_time()
    _configure_ants(seed, threads)

    data, zooms, affine = _as_array(image, "image", name)
    mask_data, _, mask_affine = _as_array(mask, "mask", name)
    if data.shape != mask_data.shape:
        raise ThicknessError(
            f"{name}: mask shape {mask_data.shape} differs from image shape {data.shape}"
        )
    if (
        affine is not None
        and mask_affine is not None
        and not np.allclose(affine, mask_affine, atol=1e-3)
    ):
        raise ThicknessError(f"{name}: mask is not on the image's grid (affines differ)")
    brain = mask_data > 0
    if not brain.any():
        raise ThicknessError(f"{name}: brain mask is empty")
    inside = data[brain]
    if not np.isfinite(inside).all():
        raise ThicknessError(f"{name}: image has NaN/Inf voxels inside the mask")
    if float(inside.max() - inside.min()) <= 0:
        raise ThicknessError(f"{name}: image is constant inside the mask")
    zooms = zooms or _array_voxel_size(voxel_size_mm)
    if min(zooms) <= 0:
        raise ValueError(f"{name}: voxel size must be positive, got {zooms}")
    if crop_margin_mm is not None:
        if not crop_margin_mm >= 0:
            raise ValueError(f"crop_margin_mm must be >= 0 or None, got {crop_margin_mm}")
        box = crop_box(brain, zooms, float(crop_margin_mm))
        data, brain = np.ascontiguousarray(data[box]), np.ascontiguousarray(brain[box])

    ants = _import_ants()
    # The affine's rotation is irrelevant to distances, so the voxel grid with its spacing is
    # enough: thickness is measured in mm along the grid.
    img = ants.from_numpy(data, spacing=zooms)
    msk = ants.from_numpy(brain.astype(np.float32), spacing=zooms)
    if spacing_mm is not None and not np.allclose(zooms, spacing_mm):
        target = (float(spacing_mm),) * 3
        img = ants.resample_image(img, target, use_voxels=False, interp_type=0)
        msk = ants.resample_image(msk, target, use_voxels=False, interp_type=1)
    msk = ants.threshold_image(msk, 0.5, 1e9, 1, 0)
    if float(msk.sum()) == 0:
        raise ThicknessError(f"{name}: brain mask is empty after resampling to {spacing_mm} mm")
    # N4 works on log intensities, so it needs positive values inside the mask. Voxels <= 0
    # (ringing from k-space motion keeps the real part, which can be negative) are raised to a
    # small floor: shifting the whole image instead would change its contrast by an amount set
    # by the single most negative voxel.
    arr = img.numpy()
    inside = arr[msk.numpy() > 0]
    if float(inside.min()) <= 0:
        floor = 1e-3 * float(np.percentile(inside, 99))
        if floor > 0:
            img = img.new_image_like(np.maximum(arr, floor).astype(arr.dtype))
        else:  # mostly non-positive inside the mask: shift (contrast is already unusual)
            img = img - float(inside.min()) + 1.0

    try:
        with _private_tempdir():  # Atropos leaves its posteriors in the temp directory
            n4 = ants.n4_bias_field_correction(
                img,
                mask=msk,
                shrink_factor=int(n4_shrink_factor),
                convergence={"iters": [int(i) for i in n4_iterations], "tol": 1e-4},
            )
            seg = ants.atropos(
                a=n4,
                x=msk,
                i="Kmeans[3]",
                m=f"[{mrf_weight},1x1x1]",
                c=f"[{int(atropos_iterations)},0]",
                u=0,  # fixed internal seed instead of a random one
                g=0,  # synchronous ICM updates: the asynchronous default visits voxels in random order
            )
    except Exception as exc:  # ANTsPy raises bare Exception when Atropos fails
        detail = _one_line(exc).replace(". Run with verbose=1 to see error messages", "")
        raise ThicknessError(f"{name}: segmentation failed ({detail})") from exc
    labels = seg["segmentation"].numpy().astype(np.int32)
    counts = {k: int((labels == k).sum()) for k in (1, 2, 3)}
    empty = [c for c, k in (("CSF", 1), ("GM", 2), ("WM", 3)) if counts[k] == 0]
    if empty:
        raise ThicknessError(
            f"{name}: segmentation failed, no voxels in class(es) {', '.join(empty)}"
        )
    gm_prob, wm_prob = seg["probabilityimages"][1], seg["probabilityimages"][2]
    try:
        thick = ants.kelly_kapowski(
            s=seg["segmentation"],
            g=gm_prob,
            w=wm_prob,
            its=int(iterations),
            r=float(gradient_step),
            m=float(smoothing),
            t=float(thickness_prior_mm),
            gm_label=2,
            wm_label=3,
        )
    except Exception as exc:  # noqa: BLE001 - ANTsPy raises RuntimeError or Exception
        raise ThicknessError(f"{name}: DiReCT failed ({_one_line(exc)})") from exc
    values = thick.numpy()[(labels == 2) & (thick.numpy() > 0)]
    mean = float(values.mean()) if values.size else float("nan")
    if not np.isfinite(mean) or mean <= 0:
        raise ThicknessError(f"{name}: thickness is {mean} (no GM voxel with positive thickness)")
    voxel_ml = float(np.prod(thick.spacing)) / 1000.0
    settings = {
        "spacing_mm": spacing_mm,
        "iterations": int(iterations),
        "n4_shrink_factor": int(n4_shrink_factor),
        "n4_iterations": [int(i) for i in n4_iterations],
        "atropos_iterations": int(atropos_iterations),
        "mrf_weight": float(mrf_weight),
        "gradient_step": float(gradient_step),
        "smoothing": float(smoothing),
        "thickness_prior_mm": float(thickness_prior_mm),
        "crop_margin_mm": None if crop_margin_mm is None else float(crop_margin_mm),
        "seed": int(seed),
        "threads": threads,
    }
    return ThicknessResult(
        volume=name,
        thickness_mm=mean,
        gm_volume_ml=counts[2] * voxel_ml,
        n_gm_voxels=counts[2],
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        settings=settings,
    )


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# Many volumes in parallel processes
# --------------------------------------------------------------------------------------------


def _batch_worker_init(seed: int, threads: int) -> None:
    _configure_ants(seed, threads)


def _failed_row(name: str, seconds: float, exc: BaseException) -> dict[str, Any]:
    return {
        "volume": name,
        "thickness_mm": float("nan"),
        "gm_volume_ml": float("nan"),
        "seconds": seconds,
        "status": "failed",
        "error": _one_line(f"{type(exc).__name__}: {exc}"),
        "cached": False,
    }


def _batch_one(item: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    name = str(item["volume"])
    start = time.perf_counter()
    try:
        res = cortical_thickness(item["image"], item["mask"], name=name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure is reported in its row
        return _failed_row(name, time.perf_counter() - start, exc)
    return {
        "volume": name,
        "thickness_mm": res.thickness_mm,
        "gm_volume_ml": res.gm_volume_ml,
        "seconds": res.seconds,
        "status": "ok",
        "error": "",
    }


def _normalise_items(items: Iterable[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, item in enumerate(items):
        if isinstance(item, Mapping):
            entry = dict(item)
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 3:
            entry = {"volume": item[0], "image": item[1], "mask": item[2]}
        else:
            raise ValueError(
                f"item {k}: expected a mapping with volume/image/mask or a (volume, image, mask) "
                f"tuple, got {type(item).__name__}"
            )
        missing = [key for key in ("image", "mask") if key not in entry]
        if missing:
            raise ValueError(f"item {k}: missing {', '.join(missing)}")
        entry.setdefault("volume", _volume_name(entry["image"], None))
        out.append(entry)
    names = [str(e["volume"]) for e in out]
    if len(set(names)) != len(names):
        raise ValueError("volume names in a thickness batch must be unique")
    return out


def _voxels_digest(
    volume: VolumeLike, what: str, name: str, voxel_size_mm: Any, binary: bool = False
) -> bytes:
    data, zooms, _ = _as_array(volume, what, name)
    if binary:  # a mask: only "non-zero" matters
        data = (data > 0).astype(np.uint8)
    zooms = zooms or _array_voxel_size(voxel_size_mm)
    digest = hashlib.sha256()
    digest.update(repr((data.shape, str(data.dtype), [round(float(z), 6) for z in zooms])).encode())
    digest.update(np.ascontiguousarray(data).tobytes())
    return digest.digest()


def _plain(value: Any) -> Any:
    """A setting as the cache key sees it.

    Numbers become floats (``5`` and ``5.0`` are one setting), sequences lists of floats.
    """
    if isinstance(value, (tuple, list)):
        return [float(x) for x in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def thickness_cache_key(
    image: VolumeLike, mask: VolumeLike, settings: Mapping[str, Any], name: str = "volume"
) -> str:
    """The key a cached thickness result is stored under.

    It is the SHA-256 of what the result depends on: the image's voxels, shape, data type and
    voxel size, the mask's non-zero voxels, every setting of :func:`cortical_thickness` (passed
    or left at its default; seed and thread count included), the installed ``antspyx`` version
    and :data:`PIPELINE_VERSION`. The file name does not enter it, so a renamed copy of the same
    volume finds its result.

    Args:
        image: T1w head (path, nibabel image or array).
        mask: Brain mask on the same grid.
        settings: Keyword arguments of :func:`cortical_thickness`.
        name: Name used in messages if a volume cannot be read.

    Returns:
        64 hexadecimal characters.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        ants_version = version("antspyx")
    except PackageNotFoundError:  # pragma: no cover - ANTs is a core dependency
        ants_version = "absent"
    bound = inspect.signature(cortical_thickness).bind_partial(**settings)
    bound.apply_defaults()  # a setting left at its default is keyed by that default's value
    resolved = {k: v for k, v in bound.arguments.items() if k not in ("image", "mask", "name")}
    voxel_size = resolved["voxel_size_mm"]
    digest = hashlib.sha256()
    digest.update(_voxels_digest(image, "image", name, voxel_size))
    digest.update(_voxels_digest(mask, "mask", name, voxel_size, binary=True))
    clean = {k: _plain(v) for k, v in resolved.items()}
    identity = {"settings": clean, "antspyx": ants_version, "pipeline": PIPELINE_VERSION}
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cache_read(path: Path) -> dict[str, Any] | None:
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or unreadable: computed again (and rewritten)
    if not isinstance(row, dict) or row.get("status") != "ok":
        return None
    try:
        value = float(row["thickness_mm"])
        gm = float(row["gm_volume_ml"])
        seconds = float(row["seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (np.isfinite(value) and value > 0):
        return None
    return {"thickness_mm": value, "gm_volume_ml": gm, "seconds": seconds}


def thickness_batch(
    items: Iterable[Mapping[str, Any] | tuple[str, VolumeLike, VolumeLike]],
    n_jobs: int = 2,
    *,
    threads_per_job: int = 1,
    seed: int = 0,
    progress: bool = True,
    start_method: str = "spawn",
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Mean cortical thickness of many volumes, in parallel processes.

    Each volume runs :func:`cortical_thickness` in a worker process (``spawn`` by default: ITK
    threads and fork do not mix); a failure is written in that volume's row and the others go
    on. Workers set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` before their first ANTs call, so
    results are reproducible. Pass paths rather than in-memory images where possible: they are
    cheaper to send to the workers. In a script, call it under ``if __name__ == "__main__":``
    (``spawn`` re-imports the main module in every worker); notebooks need nothing.

    Args:
        items: Mappings with keys ``volume`` (name), ``image`` and ``mask`` (paths, nibabel
            images or arrays), or ``(volume, image, mask)`` tuples. Extra mapping keys are
            ignored.
        n_jobs: Worker processes; ``1`` runs in this process (no pool; the thread count then
            only applies if ANTs has not run in this process yet, so with ``cache_dir`` prefer
            ``n_jobs >= 2``: results are cached under ``threads_per_job``).
        threads_per_job: ITK threads per worker.
        seed: ANTs seed (``ANTS_RANDOM_SEED``), the same for every volume.
        progress: Show a ``tqdm.auto`` progress bar.
        start_method: ``"spawn"`` or ``"forkserver"``.
        cache_dir: Folder of cached results, one JSON file per volume named by
            :func:`thickness_cache_key` (its voxels, its mask's and every setting). A volume whose
            key is there is not computed again (its row has ``cached`` true and the first run's
            ``seconds``); a computed ``ok`` row is written there. Failures are never cached.
            ``None``: no cache.
        **kwargs: Settings passed on to :func:`cortical_thickness` (``spacing_mm``,
            ``iterations``, …).

    Returns:
        One row per item, in input order, with columns ``volume, thickness_mm, gm_volume_ml,
        seconds, status`` (``"ok"`` or ``"failed"``) ``, error`` (one line, empty when ok) and
        ``cached`` (read from ``cache_dir`` rather than computed).

    Raises:
        ValueError: If an item is malformed, names repeat, or a setting is out of range.
    """
    from tqdm.auto import tqdm

    if int(n_jobs) < 1 or int(threads_per_job) < 1:
        raise ValueError(
            f"n_jobs and threads_per_job must be >= 1, got {n_jobs}, {threads_per_job}"
        )
    if start_method not in ("spawn", "forkserver"):
        raise ValueError(f"start_method must be 'spawn' or 'forkserver', not {start_method!r}")
    for reserved in ("name", "seed", "threads"):
        if reserved in kwargs:
            raise ValueError(f"{reserved!r} is set by thickness_batch, not passed through")
    entries = _normalise_items(items)
    settings = dict(kwargs, seed=int(seed), threads=int(threads_per_job))
    rows: list[dict[str, Any] | None] = [None] * len(entries)
    keys: list[str | None] = [None] * len(entries)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for k, entry in enumerate(entries):
            name = str(entry["volume"])
            try:
                keys[k] = thickness_cache_key(entry["image"], entry["mask"], settings, name)
            except Exception as exc:  # noqa: BLE001 - unreadable input: its row says why
                rows[k] = _failed_row(name, float("nan"), exc)
                continue
            hit = _cache_read(cache / f"{keys[k]}.json")
            if hit is not None:
                rows[k] = {"volume": name, **hit, "status": "ok", "error": "", "cached": True}
    todo = [k for k in range(len(entries)) if rows[k] is None]
    bar = tqdm(total=len(entries), desc="cortical thickness", unit="vol", disable=not progress)
    bar.update(len(entries) - len(todo))
    try:
        if int(n_jobs) == 1 or not todo:
            for k in todo:
                rows[k] = _finish(_batch_one(entries[k], settings), cache, keys[k])
                bar.update()
        else:
            context = mp.get_context(start_method)
            with cf.ProcessPoolExecutor(
                max_workers=min(int(n_jobs), len(todo)),
                mp_context=context,
                initializer=_batch_worker_init,
                initargs=(int(seed), int(threads_per_job)),
            ) as pool:
                futures = {pool.submit(_batch_one, entries[k], settings): k for k in todo}
                for future in cf.as_completed(futures):
                    k = futures[future]
                    try:
                        rows[k] = _finish(future.result(), cache, keys[k])
                    except Exception as exc:  # noqa: BLE001 - e.g. a worker killed for memory
                        rows[k] = _failed_row(str(entries[k]["volume"]), float("nan"), exc)
                    bar.update()
    finally:
        bar.close()
    return pd.DataFrame(rows, columns=list(BATCH_COLUMNS))


def _finish(row: dict[str, Any], cache: Path | None, key: str | None) -> dict[str, Any]:
    """Mark a computed row; store an ``ok`` one under its key at once.

    A batch stopped later keeps what it had finished.
    """
    row["cached"] = False
    if cache is not None and key is not None and row["status"] == "ok":
        target = cache / f"{key}.json"
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        fields = ("volume", "thickness_mm", "gm_volume_ml", "seconds", "status")
        try:
            partial.write_text(json.dumps({f: row[f] for f in fields}))
            os.replace(partial, target)  # a run killed mid-write leaves no half file under the key
        except OSError as exc:  # the result stands; only its cache entry is lost
            warnings.warn(f"{row['volume']}: not cached ({_one_line(exc)})", stacklevel=2)
    return row


# --------------------------------------------------------------------------------------------
# FreeSurfer aparc.stats
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Thickness values a manifest already holds
# --------------------------------------------------------------------------------------------

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

"""Cortical thickness of one volume: ANTs DiReCT.

:func:`cortical_thickness` runs ANTs' DiReCT pipeline through ``antspyx`` (Das et al. 2009,
NeuroImage 45:867; Tustison et al. 2014, NeuroImage 99:166): cropping to the brain mask's bounding
box (plus a margin) → resampling to an isotropic grid → N4 bias correction (Tustison et al. 2010)
→ Atropos 3-class segmentation (CSF/GM/WM) inside the brain mask (Avants et al. 2011) →
``KellyKapowski`` thickness → mean over grey-matter voxels with positive thickness. Coarse grids
underestimate absolute thickness (at 2 mm a cortical ribbon is one or two voxels thick), so
compare values at one resolution only.

Many volumes in parallel, with a cache: :mod:`motionqc.evaluation.thickness_batch`. Values a user
already has (FreeSurfer, a manifest column): :mod:`motionqc.evaluation.freesurfer`. The statistics
relating thickness to motion: :mod:`motionqc.evaluation.thickness_stats`. ANTs is imported lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "PIPELINE_VERSION",
    "ThicknessError",
    "ThicknessResult",
    "VolumeLike",
    "array_voxel_size",
    "as_array",
    "configure_ants",
    "cortical_thickness",
    "crop_box",
    "one_line",
    "volume_name",
]

VolumeLike = str | Path | nib.Nifti1Image | np.ndarray
"""A NIfTI path, a nibabel image, or a 3D array (voxel size given separately)."""

PIPELINE_VERSION = 1
"""Version of :func:`cortical_thickness`'s pipeline, part of every cache key: raised whenever a
change of the code changes its results, so cached results of older code are not read back."""


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


def configure_ants(seed: int, threads: int | None) -> None:
    """Seed ANTs and fix ITK's thread count through the environment.

    ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once per process, when its first
    multi-threaded filter runs, so the thread count only takes effect if this is called before
    any ANTs work in the process (it is, in :func:`motionqc.evaluation.thickness_batch.thickness_batch`'s workers).
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


def volume_name(volume: VolumeLike, name: str | None) -> str:
    """The name a volume is reported under: ``name``, else its file name, else ``<array>``."""
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
            f"{name}: cannot load {what} {Path(path).name} ({one_line(exc)})"
        ) from exc
    if what == "image" and not np.isfinite(data).all():
        raise ThicknessError(f"{name}: image {Path(path).name} has NaN/Inf voxels")
    if what == "image" and not data.any():
        raise ThicknessError(f"{name}: image {Path(path).name} is all zeros")
    return nib.Nifti1Image(data, canonical.affine)


def array_voxel_size(voxel_size_mm: float | Sequence[float]) -> tuple[float, ...]:
    """The voxel size (mm, one per axis) of an array input, from a scalar or three values."""
    return tuple(np.broadcast_to(np.asarray(voxel_size_mm, dtype=float), (3,)).tolist())


def as_array(
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


def _checked_inputs(
    image: VolumeLike,
    mask: VolumeLike,
    voxel_size_mm: float | Sequence[float],
    crop_margin_mm: float | None,
    name: str,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The image and brain mask as arrays, checked, cropped to the brain plus a margin.

    Returns:
        ``(image, brain, voxel size)``.
    """
    data, zooms, affine = as_array(image, "image", name)
    mask_data, _, mask_affine = as_array(mask, "mask", name)
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
    zooms = zooms or array_voxel_size(voxel_size_mm)
    if min(zooms) <= 0:
        raise ValueError(f"{name}: voxel size must be positive, got {zooms}")
    if crop_margin_mm is not None:
        if not crop_margin_mm >= 0:
            raise ValueError(f"crop_margin_mm must be >= 0 or None, got {crop_margin_mm}")
        box = crop_box(brain, zooms, float(crop_margin_mm))
        data, brain = np.ascontiguousarray(data[box]), np.ascontiguousarray(brain[box])
    return data, brain, zooms


def _ants_grid(
    ants: Any,
    data: np.ndarray,
    brain: np.ndarray,
    zooms: tuple[float, float, float],
    spacing_mm: float | None,
    name: str,
) -> tuple[Any, Any]:
    """ANTs images of the head and mask at ``spacing_mm``, the head positive inside the mask."""
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
    return img, msk


def _segment(
    ants: Any,
    img: Any,
    msk: Any,
    name: str,
    n4_shrink_factor: int,
    n4_iterations: Sequence[int],
    atropos_iterations: int,
    mrf_weight: float,
) -> tuple[dict[str, Any], np.ndarray, dict[int, int]]:
    """N4 bias correction, then Atropos' three classes (1 CSF, 2 GM, 3 WM) inside the mask.

    Returns:
        ``(Atropos' result, labels, voxels per class)``.
    """
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
        detail = one_line(exc).replace(". Run with verbose=1 to see error messages", "")
        raise ThicknessError(f"{name}: segmentation failed ({detail})") from exc
    labels = seg["segmentation"].numpy().astype(np.int32)
    counts = {k: int((labels == k).sum()) for k in (1, 2, 3)}
    empty = [c for c, k in (("CSF", 1), ("GM", 2), ("WM", 3)) if counts[k] == 0]
    if empty:
        raise ThicknessError(
            f"{name}: segmentation failed, no voxels in class(es) {', '.join(empty)}"
        )
    return seg, labels, counts


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
    ``threads`` (before the first ANTs call of the process, as :func:`motionqc.evaluation.thickness_batch.thickness_batch` does).

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
    name = volume_name(image, name)
    if spacing_mm is not None and not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be positive or None, got {spacing_mm}")
    if int(iterations) < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if int(n4_shrink_factor) < 1 or not n4_iterations:
        raise ValueError("n4_shrink_factor must be >= 1 and n4_iterations non-empty")
    start, cpu_start = time.perf_counter(), time.process_time()
    configure_ants(seed, threads)
    data, brain, zooms = _checked_inputs(image, mask, voxel_size_mm, crop_margin_mm, name)
    ants = _import_ants()
    img, msk = _ants_grid(ants, data, brain, zooms, spacing_mm, name)
    seg, labels, counts = _segment(
        ants, img, msk, name, n4_shrink_factor, n4_iterations, atropos_iterations, mrf_weight
    )
    try:
        thick = ants.kelly_kapowski(
            s=seg["segmentation"],
            g=seg["probabilityimages"][1],
            w=seg["probabilityimages"][2],
            its=int(iterations),
            r=float(gradient_step),
            m=float(smoothing),
            t=float(thickness_prior_mm),
            gm_label=2,
            wm_label=3,
        )
    except Exception as exc:  # noqa: BLE001 - ANTsPy raises RuntimeError or Exception
        raise ThicknessError(f"{name}: DiReCT failed ({one_line(exc)})") from exc
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


def one_line(text: object) -> str:
    """The text on one line (an error message inside a table cell)."""
    return " ".join(str(text).split())
